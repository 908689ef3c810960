"""The seed-faithful stages: the seed's two per-request feature paths, as drop-in stages of the same ensemble.

DESIGN.md: the seed spent ~195 ms of ~375 ms reading item features through Feast on every request and ~152 ms
running three NVTabular workflows per request. These stages do exactly that, so the speed-up of the cache and the
compiled transforms is measured side by side (the builder that turns a repository into its seed-faithful twin is
:mod:`recsys_assets.release.seed_faithful`):

* :class:`FeastItemsPerRequest` (``feast_item_lookup``): ``FeatureStore.get_online_features`` for the request's
  candidates, every request (no cache);
* :class:`UserWorkflowTransform`, :class:`ContextWorkflowTransform`, :class:`ItemWorkflowTransform`: the saved
  NVTabular workflows themselves (``Workflow.load`` at start, ``Workflow.transform`` on a one-request pandas frame
  per request), running in the merlin env through the python backend's ``EXECUTION_ENV_PATH``.
"""

from __future__ import annotations

import sys

import numpy as np

from recsys_assets.serving.common import pack_text, unpack_text
from recsys_assets.serving.executor import Stage, StageConfigError, StageContext
from recsys_assets.serving.stages.nvt_transforms import (ContextTransform, GroupOutputs, ItemTransform,
                                                         UserTransform)

WORKFLOW_DIR = "workflow"              # <model>/<version>/workflow/: the saved NVTabular workflow of the group
SENTINEL = -1                          # feature_spec.SENTINEL: "unknown" in the raw id/code columns
ITEM_COLUMNS = ("category_l1", "category_l2", "item_gender", "price")
DEFAULT_ITEM_FEATURES = ",".join(f"item_features:{c}" for c in ("price", "category_l1", "category_l2",
                                                                 "item_gender"))



# -- stages (run inside Triton's python stubs) ------------------------------------------------------------------
class _WorkflowTransform(GroupOutputs, Stage):
    """One saved NVTabular workflow applied per request: raw columns -> one-request DataFrame -> transform; the
    output columns leave packed per feature group, as the compiled transforms' do (``GroupOutputs``)."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        import nvtabular as nvt

        self.workflow = nvt.Workflow.load(str(ctx.artifact(WORKFLOW_DIR)))
        self.input_columns = list(self.workflow.input_schema.column_names)
        produced = list(self.workflow.output_schema.column_names)
        if set(produced) != self.columns():
            raise StageConfigError(f"model {ctx.model_name!r}: the {self.group} workflow produces {produced}, "
                                   f"the serving graph expects {sorted(self.columns())}")
        if {f"raw_{c}" for c in self.input_columns} != set(self.inputs):
            raise StageConfigError(f"model {ctx.model_name!r}: the {self.group} workflow reads "
                                   f"{self.input_columns}, the serving graph gives {list(self.inputs)}")
        self.dtypes = {c.name: c.dtype.to_numpy for c in self.workflow.input_schema}
        self.filler = {c: ("" if np.dtype(t) == object else np.zeros(1, t)[0]) for c, t in self.dtypes.items()}
        ctx.log.info("NVTabular %s workflow per request, python %s (%s), nvtabular %s", self.group,
                     ".".join(map(str, sys.version_info[:3])), sys.prefix, nvt.__version__)

    def __call__(self, **raw):
        import pandas as pd

        frame, all_missing = {}, False
        for column in self.input_columns:
            values = np.asarray(raw[f"raw_{column}"])
            if values.dtype == np.uint8 and values.ndim == 2:  # text as UTF-8 rows; the vocabularies hold str
                values = [v.decode() for v in unpack_text(values).tolist()]
            else:
                values = values.astype(self.dtypes[column], copy=False)
                all_missing |= bool(len(values)) and bool(np.all((values == SENTINEL) | pd.isna(values)))
            frame[column] = values
        n = len(next(iter(frame.values())))
        if all_missing:
            # NVTabular 23.08's Categorify fails on a batch whose column is all null (`dropna().iloc[0]` in
            # _encode): an anonymous one-row request is exactly that. Transform it with one filler row whose
            # values are not missing and drop that row (every fitted op here is row-wise, so the request's
            # row is unchanged). Training and the parity check never hit this: their batches mix rows.
            frame = {c: list(v) + [self.filler[c]] for c, v in frame.items()}
        out = self.workflow.transform(pd.DataFrame(frame))
        return self.pack({name: out[name].to_numpy()[:n] for name in self.columns()})


def _same_tensors(compiled: type) -> dict:
    """The group, inputs and outputs of a compiled-transform stage: the variant is a drop-in replacement."""
    return {k: getattr(compiled, k) for k in ("group", "features", "index", "inputs", "outputs")}


UserWorkflowTransform = type("UserWorkflowTransform", (_WorkflowTransform,), _same_tensors(UserTransform))
ContextWorkflowTransform = type("ContextWorkflowTransform", (_WorkflowTransform,), _same_tensors(ContextTransform))
ItemWorkflowTransform = type("ItemWorkflowTransform", (_WorkflowTransform,), _same_tensors(ItemTransform))


class FeastItemsPerRequest(Stage):
    """``feast_item_lookup`` as the seed did it: ``get_online_features`` for the candidates on every request.

    Same tensors as :class:`~recsys_assets.serving.stages.feast_item_lookup.FeastItemLookup`; an item the online
    store lacks gets empty strings and NaN (as the cache does), which the item transform sends to its OOV/fill rows.
    """

    inputs = ("item_ids",)
    outputs = ITEM_COLUMNS

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        from recsys_assets.serving.runtime import Runtime

        self.refs = [r.strip() for r in ctx.param("ITEM_FEATURES", DEFAULT_ITEM_FEATURES).split(",") if r.strip()]
        if {ref.split(":")[-1] for ref in self.refs} != set(ITEM_COLUMNS):
            raise StageConfigError(f"ITEM_FEATURES must name exactly {sorted(ITEM_COLUMNS)}, got {self.refs}")
        self.store = Runtime.from_environ(ctx.environ).feature_store()

    def __call__(self, item_ids):
        ids = np.asarray(item_ids, dtype=np.int64)
        rows = self.store.get_online_features(features=self.refs, entity_rows={"item_id": ids.tolist()}).to_dict()
        out = {"price": np.array([np.nan if v is None else float(v) for v in rows["price"]], dtype=np.float64)}
        for name in ("category_l1", "category_l2", "item_gender"):
            out[name] = pack_text(np.array(rows[name], dtype=object))
        return out
