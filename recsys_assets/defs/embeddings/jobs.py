"""A job that builds the item embeddings (CLIP images, Sentence-BERT texts, the 64-d multimodal table)."""

import dagster as dg

embeddings_job = dg.define_asset_job(
    "embeddings_job",
    selection=dg.AssetSelection.groups("embeddings"),
    description="Item embeddings from the catalogue: CLIP images, Sentence-BERT texts, PCA to 64-d (raw-id keyed).",
)
