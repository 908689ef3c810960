"""The artifact layout: one place that names every path under the artifact root (local folder or S3 prefix)."""

from __future__ import annotations

from recsys_assets.lib.settings import day_name

ITEMS = "raw/items.parquet"
ITEM_DESCRIPTIONS = "raw/item_descriptions.parquet"
ITEM_IMAGES = "raw/item_images"
USERS = "raw/users.parquet"
USERS_TRUTH = "truth/users.parquet"
MERLIN_ENV_REPORT = "platform/merlin_env.json"


def raw_interactions(day: int) -> str:
    return f"raw/interactions/{day_name(day)}.parquet"


def interactions_truth(day: int) -> str:
    """The generator's true click probabilities, row-aligned with ``raw_interactions(day)``: evaluation only."""
    return f"truth/interactions/{day_name(day)}.parquet"


def item_image(item_id: int) -> str:
    return f"{ITEM_IMAGES}/{int(item_id)}.jpg"


# -- a shop's own data (recsys_assets.lib.sources) ----------------------------------------------------------------
USER_ID_MAP = "raw/id_maps/users.parquet"       # source_id (str) -> user_id (int64), append-only, first_day
ITEM_ID_MAP = "raw/id_maps/items.parquet"       # source_id (str) -> item_id (int64), append-only, first_day
QUARANTINE = "raw/quarantine"                   # rows the source could not give, with the reason
ITEMS_QUARANTINE = f"{QUARANTINE}/items.parquet"
USERS_QUARANTINE = f"{QUARANTINE}/users.parquet"
UNDATED_QUARANTINE = f"{QUARANTINE}/undated.parquet"  # event rows without a usable timestamp (no day of their own)


def quarantine(day: int) -> str:
    """Event rows of day ``day`` that could not be used, each with its file, row, column and reason."""
    return f"{QUARANTINE}/{day_name(day)}.parquet"


def unknown_item_events(day: int) -> str:
    """Event rows of day ``day`` naming items the catalogue lacks, kept aside until the catalogue has them."""
    return f"raw/unknown_items/{day_name(day)}.parquet"


# -- features -------------------------------------------------------------------------------------------------
def top_category(day: int) -> str:
    """Point-in-time ``top_category`` of every row of ``raw_interactions(day)`` (same order, with interaction_id)."""
    return f"features/top_category/{day_name(day)}.parquet"


def history_state(day: int) -> str:
    """Every user's history summed up at the end of ``day`` (``lib.top_category.HistoryState``): what the next
    days' history codes start from instead of re-reading every earlier day."""
    return f"features/history_state/{day_name(day)}.npz"


def user_top_category(day: int) -> str:
    """Each user's ``top_category`` as of the end of ``day`` (user_id, top_category, event_timestamp)."""
    return f"features/user_top_category/{day_name(day)}.parquet"


# -- embeddings (recsys_assets.defs.embeddings): matrices are keyed by raw item id (row r = item r) --------------
CLIP_EMBEDDINGS = "embeddings/clip.npy"                 # float32 (items, clip dim), unit rows
CLIP_MANIFEST = "embeddings/clip.json"                  # model identity, digest, fallback flag, dims
TEXT_EMBEDDINGS = "embeddings/text.npy"                 # float32 (items, text dim), unit rows
TEXT_MANIFEST = "embeddings/text.json"
MULTIMODAL_EMBEDDINGS = "embeddings/multimodal.npy"     # float32 (items, 2 x PCA dims): [image PCA | text PCA]
MULTIMODAL_TABLE = "embeddings/multimodal.parquet"      # item_id, image_pca, text_pca (list<float32>)
MULTIMODAL_MANIFEST = "embeddings/multimodal.json"      # layout, PCA dims, explained variance, sources
EMBEDDING_PROJECTION_PLOT = "embeddings/projection.png"


def embedding_pca(kind: str) -> str:
    """The saved PCA of one modality (``clip`` or ``text``), reused for items that arrive later."""
    return f"embeddings/pca/{kind}.npz"


EMBEDDING_CACHE_DIR = "embeddings/cache"


def embedding_cache(kind: str, model_digest: str, folder: str = EMBEDDING_CACHE_DIR) -> str:
    """The content-hash cache of one encoder (one file per model identity), in the artifact root's cache folder or
    under a shared cache's root (``folder=""``)."""
    return "/".join(p for p in (folder, f"{kind}-{model_digest[:16]}.npz") if p)


# -- feature store --------------------------------------------------------------------------------------------
# feature_repo/features.py names the same files (the Feast repository does not import this package).
FEAST_OFFLINE = "feature_store/offline"
FEAST_USERS = f"{FEAST_OFFLINE}/users.parquet"                          # user_id, age, gender, event_timestamp
FEAST_USER_TOP_CATEGORY = f"{FEAST_OFFLINE}/user_top_category.parquet"  # user_id, top_category, event_timestamp
FEAST_USER_INTERESTS = f"{FEAST_OFFLINE}/user_interests.parquet"        # user_id, interest_1..3, event_timestamp
FEAST_USER_INTEREST_WEIGHTS = f"{FEAST_OFFLINE}/user_interest_weights.parquet"  # user_id, interest_weights, ...
FEAST_ITEMS = f"{FEAST_OFFLINE}/items.parquet"                          # item_id, price, category_l1/l2, ...
# Every offline source by its Feast name (feature_repo/features.py declares the same names).
FEAST_TABLES = {"users": FEAST_USERS, "user_top_category": FEAST_USER_TOP_CATEGORY,
                "user_interests": FEAST_USER_INTERESTS, "user_interest_weights": FEAST_USER_INTEREST_WEIGHTS,
                "items": FEAST_ITEMS}
FEAST_REGISTRY = "feature_store/registry.db"
VALKEY_DATA = "valkey"                                                  # the embedded Valkey's AOF folder


# -- transforms -----------------------------------------------------------------------------------------------
NVT_WORKFLOWS = "transforms/workflows"          # user/, item/, context/, full/ (saved NVTabular) + meta.json
SERVING_TRANSFORMS = "transforms/serving"       # transforms.json + vocab/*.npy (recsys_assets.serving.transforms)


def masked_interactions(day: int) -> str:
    """The day's rows joined with user/item/top_category features; train days cold-start masked."""
    return f"transforms/masked/{day_name(day)}.parquet"


def transformed_interactions(day: int) -> str:
    """A folder: the full workflow's output for the day (part_*.parquet + schema.pbtxt)."""
    return f"transforms/transformed/{day_name(day)}"


def transformed_vocabulary(day: int) -> str:
    """Which fit made ``transformed_interactions(day)``: ``{"transforms": <digest of the compiled transforms>}``."""
    return f"transforms/transformed_vocabulary/{day_name(day)}.json"


# The weekly retrain's refit (recsys_assets.lib.retrain): the window, its masked copies and transformed days.
RETRAIN = "transforms/retrain"
RETRAIN_WINDOW = f"{RETRAIN}/window.json"       # train/validation days, where each day's input and output lie


def retrain_masked(day: int) -> str:
    """A window train day after the original train days, cold-start masked like those (the daily table is not)."""
    return f"{RETRAIN}/masked/{day_name(day)}.parquet"


def retrain_transformed(day: int) -> str:
    """A window day transformed with the refit workflows (a folder like ``transformed_interactions``)."""
    return f"{RETRAIN}/transformed/{day_name(day)}"


def workflows_archive(transforms_digest: str) -> str:
    """Workflows replaced by a refit, kept under the digest of their compiled transforms (what a release
    manifest records as ``inputs["transforms_dir"]``), so the releases built on them can still be fine-tuned."""
    return f"transforms/archive/{transforms_digest[:16]}/workflows"


# -- serving (recsys_assets.defs.release) -------------------------------------------------------------------------
TRITON_REPOSITORY = "serving/triton_repository"  # the live Triton model repository (recsys_assets.release.repository)
TRITON_RELEASES = "serving/releases"             # one manifest per release: <n>.json (model -> version, inputs)


def triton_release(release: int) -> str:
    return f"{TRITON_RELEASES}/{int(release):04d}.json"


# -- live events (recsys_assets.defs.events) ----------------------------------------------------------------------
def live_interactions(day: int) -> str:
    """The clicks the events API recorded for ``day`` (by click timestamp), landed from the Valkey stream."""
    return f"live/interactions/{day_name(day)}.parquet"


# -- models, index, evaluation (recsys_assets.defs.training / defs.index) --------------------------------------
TWO_TOWER = "models/two_tower"  # <variant>/: weights/, item_counts.npy, meta.json (what rebuilds it),
#                                 candidate_tower/ (a SavedModel, the item embeddings' graph)
DLRM = "models/dlrm"            # weights/, meta.json (what rebuilds it), validation_scores.parquet
WEIGHTS = "weights"
"""In a trained model's folder: the checkpoint fine-tuning restores into the architecture its ``meta.json`` describes
(``ml.model_inputs.write_weights``). Folders written before it existed hold the whole model as a ``model/``
SavedModel instead."""
ONNX = "models/onnx"                            # query_tower_<variant>.onnx, dlrm.onnx (+ .parity.npz each)
DLRM_ONNX = f"{ONNX}/dlrm.onnx"
ITEM_EMBEDDINGS = "index/item_embeddings"       # <variant>.npy: float32 (items, dim), row r = raw item id r
FAISS_INDEX = "index/faiss"                     # <variant>.faiss (IndexIDMap over raw ids) + meta.json
RETRIEVAL_EVALUATION = "evaluation/retrieval"   # summary.json (metrics, selected variant), table.parquet, plots
RANKING_EVALUATION = "evaluation/ranking"       # summary.json, table.parquet, plots
# The evaluation record of the release serving now, written by promotion; the gates compare candidates with it.
DEPLOYED_EVALUATION = "releases/deployed/evaluation.json"


def two_tower(variant: str) -> str:
    return f"{TWO_TOWER}/{variant}"


def restorable(model_dir: str) -> tuple[str, str]:
    """What fine-tuning restores ``model_dir`` from: its weights, or (an older folder) its whole SavedModel."""
    return f"{model_dir}/{WEIGHTS}", f"{model_dir}/model"


def query_tower_onnx(variant: str) -> str:
    return f"{ONNX}/query_tower_{variant}.onnx"


def onnx_parity(onnx_rel: str) -> str:
    """Real rows and TensorFlow's outputs on them, beside an exported ONNX file (for the parity check)."""
    return onnx_rel[: -len(".onnx")] + ".parity.npz"


def item_embeddings(variant: str) -> str:
    return f"{ITEM_EMBEDDINGS}/{variant}.npy"


def faiss_index(variant: str) -> str:
    return f"{FAISS_INDEX}/{variant}.faiss"


# -- fine-tuning and releases (recsys_assets.defs.finetune, recsys_assets.release) ---------------------------
FINETUNED = "models/finetuned"                # day_XX/: fine-tuned weights, ONNX (+ parity), held-out ids, meta
RELEASE_RECORDS = "releases/records"          # <n>.json: kind, lineage, gate outcome and status of release n
SERVED_RELEASE = "releases/served.json"       # the release the server answers with, and the promotion stack


def finetuned(day: int) -> str:
    return f"{FINETUNED}/{day_name(day)}"


def release_record(release: int) -> str:
    return f"{RELEASE_RECORDS}/{int(release):04d}.json"


def release_models(release: int) -> str:
    """A full release's trainable models (weights, item vectors), kept for its fine-tunes and rollbacks."""
    return f"releases/models/{int(release):04d}"


# -- daily operations (recsys_assets.defs.daily, recsys_assets.lib.daily) --------------------------------------------
LANDED_INTERACTIONS = "interactions"            # production landing: interactions/day=YYYY-MM-DD/ (+ _SUCCESS)
DAILY_INDEX = "index/daily"                     # <variant>.faiss: the trained index grown by new items; <variant>.json
SERVED_EVALUATION = "evaluation/served"         # day_XX.{parquet,json,png}: the list as served, replayed and scored


def daily_index(variant: str) -> str:
    return f"{DAILY_INDEX}/{variant}.faiss"


def served_evaluation(day: int, ext: str) -> str:
    return f"{SERVED_EVALUATION}/{day_name(day)}.{ext}"
