"""The recommender's Feast repository: entities, sources, feature views and the user feature service.

Entities are keyed by the names serving uses (``user_id``, ``item_id``, int64). Five feature views:

- ``user_profile``: age, gender (from the users table, timestamped at signup);
- ``user_top_category``: top_category, fed in batch from the daily snapshots and in real time through the
  ``user_top_category_push`` push source (the click path pushes a new value; a push must carry every feature
  of its view, which is why top_category has a view of its own instead of sharing one with age and gender);
- ``user_interests``: interest_1..3, the user's top categories by recency-weighted activity, fed in batch from
  the daily snapshots and in real time through ``user_interests_push`` (the click path ranks them again);
- ``user_interest_weights``: the weights interest_1..3 rank (one float per category code) as of the latest
  snapshot, batch only: what the click path adds a click to (serving's feature service does not read them);
- ``item_features``: price, category_l1, category_l2, item_gender.

The ``user_features`` feature service reads age, gender, top_category and the interests together (serving reads
them in one round trip: the views of one entity share one Redis hash).

Sources are the parquet files the ``offline_features`` asset writes under the artifact root
(``RECSYS_ARTIFACTS``, read when Feast loads this file, relative paths taken from the project root).
With ``RECSYS_PROFILE=k8s`` they are Athena tables of the same names over the same files on S3
(Glue database ``RECSYS_ATHENA_DATABASE``), to go with feature_store.k8s.yaml.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Float64, Int64, String

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OFFLINE_FOLDER = "feature_store/offline"  # = recsys_assets.lib.paths.FEAST_OFFLINE


def _offline_source(name: str, description: str):
    if os.environ.get("RECSYS_PROFILE", "local") == "k8s":
        from feast.infra.offline_stores.contrib.athena_offline_store.athena_source import AthenaSource

        return AthenaSource(name=name, table=name, database=os.environ.get("RECSYS_ATHENA_DATABASE", "recsys"),
                            data_source="AwsDataCatalog", timestamp_field="event_timestamp",
                            description=description)
    root = os.environ.get("RECSYS_ARTIFACTS", "artifacts")
    if "://" not in root and not os.path.isabs(root):
        root = str(PROJECT_ROOT / root)
    return FileSource(name=name, path=f"{root.rstrip('/')}/{OFFLINE_FOLDER}/{name}.parquet",
                      timestamp_field="event_timestamp", description=description)


user = Entity(name="user_id", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A registered user (ids 0..N-1 in order of arrival; -1 is anonymous, never stored)")
item = Entity(name="item_id", join_keys=["item_id"], value_type=ValueType.INT64,
              description="A catalogue item (ids 0..2464 in catalogue order)")

users_source = _offline_source("users", "Registered users: age and gender, at signup time")
user_top_category_source = _offline_source(
    "user_top_category", "Each user's top_category at the end of every day it changed (-1 at signup)")
user_interests_source = _offline_source(
    "user_interests", "Each user's interest_1..3 at the end of every day they changed (-1 at signup)")
user_interest_weights_source = _offline_source(
    "user_interest_weights", "Each user's interest weights per category at the end of the latest day (0 at signup)")
items_source = _offline_source("items", "The catalogue's item attributes, from the day each item is available")

user_top_category_push = PushSource(name="user_top_category_push", batch_source=user_top_category_source,
                                    description="Real-time top_category updates from the click path")
user_interests_push = PushSource(name="user_interests_push", batch_source=user_interests_source,
                                 description="Real-time interest_1..3 updates from the click path")

def _view(name: str, entity: Entity, fields: list, source) -> FeatureView:
    """An online view of one entity, keyed by its join key. ttl 0: no expiry; the values hold until replaced
    (top_category falls back to all earlier clicks anyway)."""
    key = Field(name=entity.join_key, dtype=Int64)
    return FeatureView(name=name, entities=[entity], ttl=timedelta(0), schema=[key, *fields], source=source,
                       online=True)


user_profile = _view("user_profile", user, [Field(name="age", dtype=Int64), Field(name="gender", dtype=String)],
                     users_source)
user_top_category = _view("user_top_category", user, [Field(name="top_category", dtype=Int64)],
                          user_top_category_push)
user_interests = _view("user_interests", user,  # = lib.feature_spec.INTERESTS
                       [Field(name=f"interest_{k}", dtype=Int64) for k in (1, 2, 3)], user_interests_push)
user_interest_weights = _view("user_interest_weights", user,  # = lib.top_category.INTEREST_WEIGHTS
                              [Field(name="interest_weights", dtype=Array(Float32))], user_interest_weights_source)
item_features = _view("item_features", item, [
    Field(name="price", dtype=Float64),
    Field(name="category_l1", dtype=String),
    Field(name="category_l2", dtype=String),
    Field(name="item_gender", dtype=String),
], items_source)

user_features = FeatureService(name="user_features", features=[user_profile, user_top_category, user_interests],
                               description="What serving reads for a user: age, gender, top_category, interests")
