"""``nvt_user_transform``, ``nvt_context_transform``, ``nvt_item_transform``: the fitted NVTabular workflows as
compiled numpy lookups (:mod:`recsys_assets.serving.transforms`, loaded from ``<version>/transforms/``).

Inputs are the raw columns prefixed ``raw_`` (``raw_user_id``, ``raw_age`` ...); outputs carry the workflows'
own column names (``user_id``, ``age_norm``, ``hour_sin`` ...), which are also the ONNX models' input names.
Categorify follows NVTabular: -1 sentinels land on row 1, values unseen at fit time (new users, cold items) on
row 2. Output dtypes are the workflows' (int64 categories, float32 continuous values), as the configs declare.
The item text columns (``raw_category_l1``, ``raw_category_l2``, ``raw_item_gender``) arrive as fixed-width UTF-8
UINT8 [N, W] tensors (:func:`recsys_assets.serving.common.pack_text`) and are categorified without a Python loop.
"""

from __future__ import annotations

import numpy as np

from recsys_assets.serving.common import unpack_text
from recsys_assets.serving.executor import Stage, StageConfigError, StageContext

TRANSFORMS_DIR = "transforms"


class _Transform(Stage):
    group: str = ""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        from recsys_assets.serving.transforms import CompiledTransforms

        self.transforms = CompiledTransforms.load(ctx.artifact(TRANSFORMS_DIR))
        produced = set(self.transforms.outputs(self.group))
        if produced != set(self.outputs):
            raise StageConfigError(f"model {ctx.model_name!r}: the compiled {self.group} transform produces "
                                   f"{sorted(produced)}, the serving graph expects {sorted(self.outputs)}: "
                                   "rebuild the templates or the workflows so they agree")
        expected_inputs = {f"raw_{c}" for c in self.transforms.inputs(self.group)}
        if expected_inputs != set(self.inputs):
            raise StageConfigError(f"model {ctx.model_name!r}: the compiled {self.group} transform reads "
                                   f"{sorted(expected_inputs)}, the serving graph gives {sorted(self.inputs)}")

    def __call__(self, **raw):
        columns = {name[len("raw_"):]: value for name, value in raw.items()}
        if self.group == "user":
            return self.transforms.transform_user(**columns)
        if self.group == "item":
            for name in TEXT_INPUTS:
                columns[name] = unpack_text(columns[name], f"raw_{name}")
            return self.transforms.transform_item(**columns)
        return self.transforms.transform_context(**columns)


TEXT_INPUTS = ("category_l1", "category_l2", "item_gender")  # the item columns that travel as UTF-8 rows


class UserTransform(_Transform):
    group = "user"
    inputs = ("raw_user_id", "raw_age", "raw_gender", "raw_top_category")
    outputs = ("user_id", "gender", "top_category", "age_norm", "age_binned")


class ContextTransform(_Transform):
    group = "context"
    inputs = ("raw_device_type", "raw_timestamp")
    outputs = ("device_type", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos")


class ItemTransform(_Transform):
    group = "item"
    inputs = ("raw_item_id", "raw_category_l1", "raw_category_l2", "raw_item_gender", "raw_price")
    outputs = ("item_id", "category_l1", "category_l2", "item_gender", "price_log_norm")
