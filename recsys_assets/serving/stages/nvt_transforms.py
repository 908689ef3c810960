"""``nvt_user_transform``, ``nvt_context_transform``, ``nvt_item_transform``: the fitted NVTabular workflows as
compiled numpy lookups (:mod:`recsys_assets.serving.transforms`, loaded from ``<version>/transforms/``).

Inputs are the raw columns prefixed ``raw_`` (``raw_user_id``, ``raw_age`` ...). Outputs are the workflows' own
columns (``user_id``, ``age_norm``, ``hour_sin`` ..., also the ONNX models' input names) packed per feature group
(:mod:`recsys_assets.serving.features`, widths from the feature spec): ``user_categorical`` INT64 [1, C] and
``user_continuous`` FP32 [1, F]; ``context_categorical`` and ``context_continuous`` [1, .]; for the candidates
``item_index`` INT64 [N] (the ``item_id`` column), ``item_categorical`` [N, .] and ``item_continuous`` [N, .].
Categorify follows NVTabular: -1 sentinels land on row 1, values unseen at fit time (new users, cold items) on
row 2. The item text columns (``raw_category_l1``, ``raw_category_l2``, ``raw_item_gender``) arrive as fixed-width
UTF-8 UINT8 [N, W] tensors (:func:`recsys_assets.serving.common.pack_text`) and are categorified without a
Python loop.
"""

from __future__ import annotations

from recsys_assets.lib.feature_spec import WORKFLOW_INPUTS
from recsys_assets.serving.common import unpack_text
from recsys_assets.serving.executor import Stage, StageConfigError, StageContext
from recsys_assets.serving.features import CONTEXT, ITEM, ITEM_INDEX, USER, FeatureGroup

TRANSFORMS_DIR = "transforms"
TEXT_INPUTS = ("category_l1", "category_l2", "item_gender")  # the item columns that travel as UTF-8 rows


class GroupOutputs:
    """What a transform of one group produces, and how its columns leave the stage (shared with the
    seed-faithful variant, which produces the same columns with NVTabular itself)."""

    group: str = ""
    features: FeatureGroup
    index: str | None = None  # a categorical column that also leaves alone (the item's vocabulary row)

    @classmethod
    def columns(cls) -> set[str]:
        return set(cls.features.features) | ({"item_id"} if cls.index else set())

    @classmethod
    def pack(cls, columns) -> dict:
        out = cls.features.pack(columns)
        if cls.index:
            out[cls.index] = columns["item_id"]
        return out


class _Transform(GroupOutputs, Stage):
    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        from recsys_assets.serving.transforms import CompiledTransforms

        self.transforms = CompiledTransforms.load(ctx.artifact(TRANSFORMS_DIR))
        produced = set(self.transforms.outputs(self.group))
        if produced != self.columns():
            raise StageConfigError(f"model {ctx.model_name!r}: the compiled {self.group} transform produces "
                                   f"{sorted(produced)}, the serving graph expects {sorted(self.columns())}: "
                                   "rebuild the templates or the workflows so they agree")
        expected_inputs = {f"raw_{c}" for c in self.transforms.inputs(self.group)}
        if expected_inputs != set(self.inputs):
            raise StageConfigError(f"model {ctx.model_name!r}: the compiled {self.group} transform reads "
                                   f"{sorted(expected_inputs)}, the serving graph gives {sorted(self.inputs)}")

    def __call__(self, **raw):
        columns = {name[len("raw_"):]: value for name, value in raw.items()}
        if self.group == "user":
            return self.pack(self.transforms.transform_user(**columns))
        if self.group == "item":
            for name in TEXT_INPUTS:
                columns[name] = unpack_text(columns[name], f"raw_{name}")
            return self.pack(self.transforms.transform_item(**columns))
        return self.pack(self.transforms.transform_context(**columns))


class UserTransform(_Transform):
    group = "user"
    features = USER
    inputs = tuple(f"raw_{c}" for c in WORKFLOW_INPUTS["user"])
    outputs = USER.tensors


class ContextTransform(_Transform):
    group = "context"
    features = CONTEXT
    inputs = tuple(f"raw_{c}" for c in WORKFLOW_INPUTS["context"])
    outputs = CONTEXT.tensors


class ItemTransform(_Transform):
    group = "item"
    features = ITEM
    index = ITEM_INDEX
    inputs = tuple(f"raw_{c}" for c in WORKFLOW_INPUTS["item"])
    outputs = (ITEM_INDEX,) + ITEM.tensors
