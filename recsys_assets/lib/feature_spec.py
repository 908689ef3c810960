"""The feature spec: every model input declared once, and the raw columns, codes and sentinels they come from.

Everything else derives from :data:`FEATURES` (pure constants, no heavy imports: this module runs in the pipeline
env, in the merlin env and inside Triton's python models under Python 3.10 / numpy < 2):

* the NVTabular workflows (``ml/nvt_workflows.py`` maps each :class:`Step` to an NVTabular operator), and so the
  compiled serving transforms (``ml/nvt_compile.py`` traces the fitted workflows) and the transformed days;
* the serving feature groups and the widths of their tensors in the Triton configs (``serving/features.py``;
  ``release/repository.py`` writes the widths when it builds a repository);
* what each model reads (``ml/model_inputs.py``) and the tiny test world (``release/tiny.py``).

Adding a feature computed from an existing raw column is one :class:`Feature` line below. A feature over a new
raw column also needs that column in :data:`SOURCES`, in ``masked_interactions`` and in the serving lookups.

Raw inputs (``masked_interactions``, and what serving hands to the compiled transforms), :data:`SOURCES`:

| group   | column         | dtype   | meaning, cold-start value                                                   |
|---------|----------------|---------|-----------------------------------------------------------------------------|
| user    | user_id        | int64   | -1 = anonymous / masked; an id unseen at fit time lands on the OOV row        |
| user    | age            | float64 | years; unknown users get the training mean age                              |
| user    | gender         | int64   | 0 F, 1 M (:data:`GENDER_CODES`), -1 unknown                                  |
| user    | top_category   | int64   | 0..19 (``lib.top_category.CATEGORIES``), -1 none                             |
| user    | interest_1..3  | int64   | the user's top three categories by recency-weighted activity, -1 none          |
| item    | item_id        | int64   | catalogue id; items unseen at fit time (cold items) share the OOV row        |
| item    | category_l1/l2 | str     | catalogue category and style                                                |
| item    | item_gender    | str     | ``M``, ``F`` or ``U``                                                       |
| item    | price          | float64 | catalogue price                                                             |
| context | device_type    | int64   | :data:`DEVICES` codes, -1 unknown                                            |
| context | timestamp      | int64   | Unix seconds, UTC                                                           |
| target  | click          | int64   | 0/1                                                                         |

Categorified outputs follow NVTabular: 0 padding, 1 null (sentinels land here), 2 OOV, real values from 3.
"""

from __future__ import annotations

import dataclasses

SENTINEL = -1
PAD_INDEX, NULL_INDEX, OOV_INDEX, FIRST_INDEX = 0, 1, 2, 3

GENDER_CODES = {"F": 0, "M": 1}
AGE_BUCKETS = (18, 25, 35, 50, 65)
# The request's device: code -> name. -1 (unknown) is valid in requests and events, never in generated data.
DEVICES = {0: "desktop", 1: "mobile", 2: "tablet"}
UNKNOWN_DEVICE = SENTINEL
DEVICE_NAMES = {UNKNOWN_DEVICE: "unknown", **DEVICES}

# A user's history as category codes, point in time (``lib.top_category``): the short-term top_category and the
# longer-term interests. Masked together with the user id; -1 (none) for a user without history.
INTERESTS = ("interest_1", "interest_2", "interest_3")
USER_HISTORY = ("top_category", *INTERESTS)

GROUPS = ("user", "item", "context")  # the transformed groups (one NVTabular workflow and serving transform each)
MULTIMODAL = "multimodal"             # looked up by raw item id, not transformed
CATEGORICAL, CONTINUOUS, EMBEDDING = "categorical", "continuous", "embedding"
# The models that read features: the two-tower query tower (with the context group only in its "context"
# variant), the candidate (item) tower and the DLRM ranker.
QUERY, CANDIDATE, DLRM = "query_tower", "candidate_tower", "dlrm"


@dataclasses.dataclass(frozen=True)
class Step:
    """One operation of a feature's transform, in the order applied. The NVTabular workflow builds it
    (``ml/nvt_workflows.py``) and the compiled serving transform computes the same (``serving/transforms.py``):

    ``sentinel_to_null`` (-1 -> missing), ``fill_mean_age`` (the training mean age, fixed at fit time),
    ``fill_median``, ``log1p``, ``normalize`` (fitted mean/std, float32), ``bucketize`` (``edges``), ``cyclical``
    (``cycle`` hour or weekday, ``fn`` sin or cos, of a Unix timestamp), ``categorify`` (a vocabulary fitted on the
    training rows, or the feature's closed ``vocabulary``; always last)."""

    op: str
    edges: tuple = ()
    cycle: str = ""
    fn: str = ""


OPS = ("sentinel_to_null", "fill_mean_age", "fill_median", "log1p", "normalize", "bucketize", "cyclical",
       "categorify")
# The cycles of ``cyclical``: k = (timestamp // unit + offset) % period (1970-01-01 was a Thursday: offset 3
# makes Monday 0).
CYCLES = {"hour": {"unit": 3600, "period": 24, "offset": 0}, "weekday": {"unit": 86400, "period": 7, "offset": 3}}

TO_NULL, CATEGORIFY = Step("sentinel_to_null"), Step("categorify")
CODE = (TO_NULL, CATEGORIFY)  # an int id or code whose -1 means unknown: to the null row, then a vocabulary


@dataclasses.dataclass(frozen=True)
class Source:
    """A raw input column (a column of ``masked_interactions``: :data:`MASKED_SCHEMA` has its dtype) and its group."""

    name: str
    group: str


@dataclasses.dataclass(frozen=True)
class Feature:
    """One model input: the transformed column ``name`` computed from the raw column ``source`` by ``steps``."""

    name: str
    group: str                    # user | item | context | multimodal
    kind: str                     # categorical (a vocabulary row) | continuous (one float) | embedding (a vector)
    source: str                   # the raw column (SOURCES), or for multimodal features the table they come from
    steps: tuple[Step, ...]
    models: frozenset[str]        # which models read it
    width: int = 1                # values per row (embeddings: 0 = known only once the table is built)
    is_id: bool = False           # the group's id (user_id / item_id): tagged USER_ID / ITEM_ID for Merlin
    vocabulary: tuple = ()        # a closed vocabulary (every known code), given to Categorify instead of fitted:
                                  # the rows exist even when the training days hold none of them (own data
                                  # without a users file has no gender, a shop may log no device)

    def __post_init__(self) -> None:
        unknown = [s.op for s in self.steps if s.op not in OPS]
        if unknown:
            raise ValueError(f"feature {self.name!r}: unknown steps {unknown}; expected some of {', '.join(OPS)}")
        if self.kind == CATEGORICAL and (not self.steps or self.steps[-1] != CATEGORIFY):
            raise ValueError(f"categorical feature {self.name!r} must end with categorify")
        if CATEGORIFY in self.steps[:-1] or (self.kind != CATEGORICAL and CATEGORIFY in self.steps):
            raise ValueError(f"feature {self.name!r}: categorify must be the last step of a categorical feature")
        if self.vocabulary and self.kind != CATEGORICAL:
            raise ValueError(f"feature {self.name!r}: only a categorical feature has a vocabulary")
        if self.kind != EMBEDDING and self.width != 1:
            raise ValueError(f"feature {self.name!r}: a {self.kind} feature is one column of its group's matrix "
                             f"(width 1), got width {self.width}")


SOURCES = (
    Source("user_id", "user"), Source("age", "user"), Source("gender", "user"),
    *[Source(name, "user") for name in USER_HISTORY],
    Source("item_id", "item"), Source("category_l1", "item"), Source("category_l2", "item"),
    Source("item_gender", "item"), Source("price", "item"),
    Source("device_type", "context"), Source("timestamp", "context"),
)

_USER_MODELS = frozenset({QUERY, DLRM})
_ITEM_MODELS = frozenset({CANDIDATE, DLRM})
_CONTEXT_MODELS = frozenset({QUERY, DLRM})  # the query tower's "context" variant only
FEATURES = (
    Feature("user_id", "user", CATEGORICAL, "user_id", CODE, _USER_MODELS, is_id=True),
    Feature("gender", "user", CATEGORICAL, "gender", CODE, _USER_MODELS, vocabulary=tuple(GENDER_CODES.values())),
    *[Feature(name, "user", CATEGORICAL, name, CODE, _USER_MODELS) for name in USER_HISTORY],
    Feature("age_norm", "user", CONTINUOUS, "age", (Step("fill_mean_age"), Step("normalize")), _USER_MODELS),
    Feature("age_binned", "user", CATEGORICAL, "age",
            (Step("fill_mean_age"), Step("bucketize", edges=AGE_BUCKETS), CATEGORIFY), _USER_MODELS),
    Feature("item_id", "item", CATEGORICAL, "item_id", CODE, _ITEM_MODELS, is_id=True),
    Feature("category_l1", "item", CATEGORICAL, "category_l1", (CATEGORIFY,), _ITEM_MODELS),
    Feature("category_l2", "item", CATEGORICAL, "category_l2", (CATEGORIFY,), _ITEM_MODELS),
    Feature("item_gender", "item", CATEGORICAL, "item_gender", (CATEGORIFY,), _ITEM_MODELS),
    Feature("price_log_norm", "item", CONTINUOUS, "price",
            (Step("fill_median"), Step("log1p"), Step("normalize")), _ITEM_MODELS),
    Feature("device_type", "context", CATEGORICAL, "device_type", CODE, _CONTEXT_MODELS, vocabulary=tuple(DEVICES)),
    *[Feature(f"{cycle}_{fn}", "context", CONTINUOUS, "timestamp", (Step("cyclical", cycle=cycle, fn=fn),),
              _CONTEXT_MODELS) for cycle in CYCLES for fn in ("sin", "cos")],
    # [image PCA | text PCA] halves of the multimodal table (``item_multimodal_embeddings``), by raw item id.
    Feature("image_pca", MULTIMODAL, EMBEDDING, "multimodal", (), _ITEM_MODELS, width=0),
    Feature("text_pca", MULTIMODAL, EMBEDDING, "multimodal", (), _ITEM_MODELS, width=0),
)


def features(group: str | None = None, kind: str | None = None, model: str | None = None) -> tuple[Feature, ...]:
    """The declared features of ``group`` / ``kind`` / read by ``model`` (None: any), in declaration order."""
    return tuple(f for f in FEATURES if (group is None or f.group == group) and (kind is None or f.kind == kind)
                 and (model is None or model in f.models))


def names(group: str | None = None, kind: str | None = None, model: str | None = None) -> tuple[str, ...]:
    return tuple(f.name for f in features(group, kind, model))


def feature(name: str) -> Feature:
    for f in FEATURES:
        if f.name == name:
            return f
    raise KeyError(f"no feature {name!r} in the spec: declared are {', '.join(f.name for f in FEATURES)}")


def group_id(group: str) -> str | None:
    """The id feature of ``group`` (``user_id``, ``item_id``), or None."""
    return next((f.name for f in features(group) if f.is_id), None)


def _check() -> None:
    seen, sources = set(), {s.name: s for s in SOURCES}
    unknown = [name for name in sources if name not in MASKED_SCHEMA]
    if unknown:
        raise ValueError(f"raw columns {unknown} are not in MASKED_SCHEMA: add them there (masking writes them)")
    for f in FEATURES:
        if f.name in seen:
            raise ValueError(f"feature {f.name!r} is declared twice")
        seen.add(f.name)
        if f.group in GROUPS and (f.source not in sources or sources[f.source].group != f.group):
            raise ValueError(f"feature {f.name!r} reads {f.source!r}, which is no raw {f.group} column "
                             f"({', '.join(s.name for s in SOURCES if s.group == f.group)})")


WORKFLOW_INPUTS = {g: tuple(s.name for s in SOURCES if s.group == g) for g in GROUPS}
WORKFLOW_OUTPUTS = {g: names(g) for g in GROUPS}
USER_INPUTS, ITEM_INPUTS, CONTEXT_INPUTS = (WORKFLOW_INPUTS[g] for g in GROUPS)
USER_OUTPUTS, ITEM_OUTPUTS, CONTEXT_OUTPUTS = (WORKFLOW_OUTPUTS[g] for g in GROUPS)
TARGET = "click"
# Carried through the full workflow untransformed: the join key, and the raw item id beside its NVTabular index
# (cold items share the OOV row, and the multimodal tables are keyed by raw id).
PASSTHROUGH = ("interaction_id",)
RAW_ITEM_ID = "item_id_raw"

# The table `masked_interactions` writes (every day, train or not), with pandas dtypes.
MASKED_SCHEMA = {
    "interaction_id": "int64", "user_id": "int64", "item_id": "int64", "timestamp": "int64",
    "device_type": "int64", "click": "int64", "age": "float64", "gender": "int64",
    **{name: "int64" for name in USER_HISTORY},
    "category_l1": "object", "category_l2": "object", "item_gender": "object", "price": "float64",
    "masked_user": "bool", "masked_device": "bool",
}
_check()
# What the full NVTabular workflow reads from it (the mask flags are bookkeeping, not features).
FULL_WORKFLOW_INPUTS = (*USER_INPUTS, *ITEM_INPUTS, *CONTEXT_INPUTS, TARGET, *PASSTHROUGH)


def encode_gender(values) -> list[int]:
    """``M``/``F`` (any case) -> 1/0; anything else (None, NaN, ``X``) -> -1, the unknown sentinel."""
    out = []
    for v in values:
        code = GENDER_CODES.get(v.upper()) if isinstance(v, str) else None  # None, NaN, numbers: unknown
        out.append(SENTINEL if code is None else code)
    return out
