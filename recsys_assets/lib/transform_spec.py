"""What the feature transforms take and give: column names, codes, sentinels and bucket edges (pure constants).

One place shared by the pipeline env (masking, input checks), the merlin env (the NVTabular workflows that are
fit on these columns) and serving (which receives the same raw columns per request).

Inputs (``masked_interactions``, and what serving hands to the compiled transforms):

| group   | column         | dtype   | meaning, cold-start value                                                   |
|---------|----------------|---------|-----------------------------------------------------------------------------|
| user    | user_id        | int64   | -1 = anonymous / masked; an id unseen at fit time lands on the OOV row        |
| user    | age            | float64 | years; unknown users get the training mean age                              |
| user    | gender         | int64   | 0 F, 1 M (:data:`GENDER_CODES`), -1 unknown                                  |
| user    | top_category   | int64   | 0..19 (``lib.top_category.CATEGORIES``), -1 none                             |
| item    | item_id        | int64   | catalogue id; items unseen at fit time (cold items) share the OOV row        |
| item    | category_l1/l2 | str     | catalogue category and style                                                |
| item    | item_gender    | str     | ``M``, ``F`` or ``U``                                                       |
| item    | price          | float64 | catalogue price                                                             |
| context | device_type    | int64   | 0 desktop, 1 mobile, 2 tablet, -1 unknown                                    |
| context | timestamp      | int64   | Unix seconds, UTC                                                           |
| target  | click          | int64   | 0/1                                                                         |

Categorified outputs follow NVTabular: 0 padding, 1 null (sentinels land here), 2 OOV, real values from 3.
"""

from __future__ import annotations

SENTINEL = -1
PAD_INDEX, NULL_INDEX, OOV_INDEX, FIRST_INDEX = 0, 1, 2, 3

GENDER_CODES = {"F": 0, "M": 1}
AGE_BUCKETS = (18, 25, 35, 50, 65)

USER_INPUTS = ("user_id", "age", "gender", "top_category")
ITEM_INPUTS = ("item_id", "category_l1", "category_l2", "item_gender", "price")
CONTEXT_INPUTS = ("device_type", "timestamp")
TARGET = "click"
# Carried through the full workflow untransformed: the join key, and the raw item id beside its NVTabular index
# (cold items share the OOV row, and the multimodal tables are keyed by raw id).
PASSTHROUGH = ("interaction_id",)
RAW_ITEM_ID = "item_id_raw"

USER_OUTPUTS = ("user_id", "gender", "top_category", "age_norm", "age_binned")
ITEM_OUTPUTS = ("item_id", "category_l1", "category_l2", "item_gender", "price_log_norm")
CONTEXT_OUTPUTS = ("device_type", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos")
WORKFLOW_INPUTS = {"user": USER_INPUTS, "item": ITEM_INPUTS, "context": CONTEXT_INPUTS}
WORKFLOW_OUTPUTS = {"user": USER_OUTPUTS, "item": ITEM_OUTPUTS, "context": CONTEXT_OUTPUTS}

# The table `masked_interactions` writes (every day, train or not), with pandas dtypes.
MASKED_SCHEMA = {
    "interaction_id": "int64", "user_id": "int64", "item_id": "int64", "timestamp": "int64",
    "device_type": "int64", "click": "int64", "age": "float64", "gender": "int64", "top_category": "int64",
    "category_l1": "object", "category_l2": "object", "item_gender": "object", "price": "float64",
    "masked_user": "bool", "masked_device": "bool",
}
# What the full NVTabular workflow reads from it (the mask flags are bookkeeping, not features).
FULL_WORKFLOW_INPUTS = (*USER_INPUTS, *ITEM_INPUTS, *CONTEXT_INPUTS, TARGET, *PASSTHROUGH)


def encode_gender(values) -> list[int]:
    """``M``/``F`` (any case) -> 1/0; anything else (None, NaN, ``X``) -> -1, the unknown sentinel."""
    out = []
    for v in values:
        code = GENDER_CODES.get(v.upper()) if isinstance(v, str) else None  # None, NaN, numbers: unknown
        out.append(SENTINEL if code is None else code)
    return out
