"""``item_id_decoder``: the response: raw item ids and their scores.

Inputs: ``item_index`` INT64 [-1] (NVTabular item rows), ``item_ids`` INT64 [-1] (the raw ids carried beside
them), ``scores`` FP32 [-1]. Outputs ``ordered_ids`` INT64 [-1], ``ordered_scores`` FP32 [-1].

Raw ids travel to the end (DESIGN.md Contracts): cold items share the OOV row, so a row index cannot name them.
The decoder maps what can be mapped, the inverse of the item vocabulary (``<version>/transforms/``), and uses
it as a check: a known row must decode to the carried raw id, else the id spaces got mixed up on the way
(an internal error, never a wrong item shown). Rows 0-2 (padding, null, OOV) keep the carried raw id.
"""

from __future__ import annotations

import numpy as np

from recsys_assets.serving.executor import Stage, StageContext

TRANSFORMS_DIR = "transforms"


class IdSpaceError(RuntimeError):
    """An NVTabular row and the carried raw id name different items."""


class ItemIdDecoder(Stage):
    inputs = ("item_index", "item_ids", "scores")
    outputs = ("ordered_ids", "ordered_scores")

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        from recsys_assets.serving.transforms import read_description

        description, vocabularies = read_description(ctx.artifact(TRANSFORMS_DIR))
        values, labels = vocabularies["item.item_id"]
        self.first = int(description["indices"]["first"])
        self.inverse = np.full(int(labels.max()) + 1 if len(labels) else self.first, -1, np.int64)
        self.inverse[labels.astype(np.int64)] = values.astype(np.int64)

    def decode(self, item_index: np.ndarray) -> np.ndarray:
        """Raw ids of NVTabular rows (-1 for the reserved rows and rows outside the vocabulary)."""
        index = np.asarray(item_index, dtype=np.int64)
        inside = (index >= self.first) & (index < len(self.inverse))
        out = np.full(index.shape, -1, np.int64)
        out[inside] = self.inverse[index[inside]]
        return out

    def __call__(self, item_index, item_ids, scores):
        carried = np.asarray(item_ids, dtype=np.int64)
        decoded = self.decode(item_index)
        known = decoded >= 0
        if (decoded[known] != carried[known]).any():
            bad = np.flatnonzero(known & (decoded != carried))[:5]
            raise IdSpaceError(f"item rows {np.asarray(item_index)[bad].tolist()} decode to "
                               f"{decoded[bad].tolist()} but carry raw ids {carried[bad].tolist()}")
        return {"ordered_ids": np.where(known, decoded, carried), "ordered_scores": np.asarray(scores, np.float32)}
