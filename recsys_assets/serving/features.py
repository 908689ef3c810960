"""Feature groups: how transformed features travel between the serving stages.

A transform stage hands its features on as two matrices per group, rows = entities (1 for the request's user and
context, N for the candidates), columns in the feature spec's order (:mod:`recsys_assets.lib.feature_spec`): ``<group>_categorical`` INT64 [rows, C] (vocabulary
rows) and ``<group>_continuous`` FP32 [rows, F]. The consumers (``query_tower``, ``unroll_features``,
``dlrm_ranking``) read the columns back by feature name (:meth:`FeatureGroup.unpack`), so the ONNX models are
still fed by name. The item's own vocabulary row travels alone as ``item_index`` (the sampler and the decoder
need it, not only the ranker).

Why matrices: every tensor crossing a python-backend hop costs ~25-30 µs of copying and bookkeeping whatever its
size (``benchmarks/python_backend_hops.py``); one tensor per feature made 120 such crossings per request, the
groups make 82.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from recsys_assets.lib import feature_spec as spec
from recsys_assets.serving.executor import BadRequest


@dataclasses.dataclass(frozen=True)
class FeatureGroup:
    name: str
    categorical: tuple[str, ...]
    continuous: tuple[str, ...]

    @property
    def categorical_tensor(self) -> str:
        return f"{self.name}_categorical"

    @property
    def continuous_tensor(self) -> str:
        return f"{self.name}_continuous"

    @property
    def tensors(self) -> tuple[str, str]:
        return self.categorical_tensor, self.continuous_tensor

    @property
    def features(self) -> tuple[str, ...]:
        return self.categorical + self.continuous

    def pack(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{feature: [rows]}`` -> the group's two matrices."""
        rows = len(np.asarray(columns[self.features[0]]).reshape(-1))
        categorical = np.empty((rows, len(self.categorical)), np.int64)
        for j, name in enumerate(self.categorical):
            categorical[:, j] = np.asarray(columns[name]).reshape(-1)
        continuous = np.empty((rows, len(self.continuous)), np.float32)
        for j, name in enumerate(self.continuous):
            continuous[:, j] = np.asarray(columns[name]).reshape(-1)
        return {self.categorical_tensor: categorical, self.continuous_tensor: continuous}

    def unpack(self, categorical: np.ndarray, continuous: np.ndarray) -> dict[str, np.ndarray]:
        """The group's two matrices -> ``{feature: [rows]}`` (column views, no copies)."""
        categorical, continuous = np.asarray(categorical), np.asarray(continuous)
        for tensor, matrix, names in ((self.categorical_tensor, categorical, self.categorical),
                                      (self.continuous_tensor, continuous, self.continuous)):
            if matrix.ndim != 2 or matrix.shape[1] != len(names):
                raise BadRequest(f"{tensor} must be [rows, {len(names)}] ({', '.join(names)}), "
                                 f"got {list(matrix.shape)}")
        if len(categorical) != len(continuous):
            raise BadRequest(f"{self.categorical_tensor} has {len(categorical)} rows, {self.continuous_tensor} "
                             f"{len(continuous)}")
        out = {name: categorical[:, j] for j, name in enumerate(self.categorical)}
        out.update({name: continuous[:, j] for j, name in enumerate(self.continuous)})
        return out

    def widths(self) -> dict[str, int]:
        return {self.categorical_tensor: len(self.categorical), self.continuous_tensor: len(self.continuous)}


def spec_group(group: str) -> FeatureGroup:
    """The feature group of one transform group of the spec; the group's id (``item_id``) travels alone."""
    keep = [f for f in spec.features(group) if not (group == "item" and f.is_id)]
    return FeatureGroup(group, tuple(f.name for f in keep if f.kind == spec.CATEGORICAL),
                        tuple(f.name for f in keep if f.kind == spec.CONTINUOUS))


USER, CONTEXT, ITEM = spec_group("user"), spec_group("context"), spec_group("item")
ITEM_INDEX = "item_index"  # the item_id feature: the candidate's row in the item vocabulary
# The request's user and context features repeated once per candidate (unroll_features -> dlrm_ranking).
UNROLLED = FeatureGroup("unrolled", USER.categorical + CONTEXT.categorical, USER.continuous + CONTEXT.continuous)
# {tensor: number of columns} of every feature-group tensor: its last dimension in every Triton config.
TENSOR_WIDTHS = {tensor: width for group in (USER, CONTEXT, ITEM, UNROLLED) for tensor, width in group.widths().items()}
