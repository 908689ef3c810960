"""Lineage: where the trainable models a release serves can be restored from (the start of a fine-tune)."""

from __future__ import annotations


from recsys_assets.lib import paths
from recsys_assets.lib.digests import path_sha256
from recsys_assets.release.records import record
from recsys_assets.release.repository import Release, ReleaseError

VARIANTS = ("plain", "context")  # = recsys_assets.ml.model_inputs.VARIANTS (lib does not import ml)


def lineage_of(store, release: Release) -> dict:
    """Where the models ``release`` serves can be restored from for fine-tuning: its record's lineage, or, for a
    release the full pipeline built (``triton_model_repository``), the trained models whose ONNX exports it
    serves (matched by digest, so a model retrained since is never mistaken for the served one)."""
    found = record(store, release.release)
    if found is not None and found.lineage:
        return dict(found.lineage)
    served_query, served_dlrm = release.inputs.get("query_tower"), release.inputs.get("dlrm")
    if store.exists(paths.DLRM_ONNX) and path_sha256(store.local_path(paths.DLRM_ONNX)) != served_dlrm:
        raise ReleaseError(f"release {release.release} serves a DLRM other than {store.uri(paths.DLRM_ONNX)} (it was "
                           "retrained since): fine-tune from a release with a record, or build and promote a new "
                           "full release (retrained_release) first")
    for variant in VARIANTS:
        onnx = paths.query_tower_onnx(variant)
        if store.exists(onnx) and path_sha256(store.local_path(onnx)) == served_query:
            return {"variant": variant, "two_tower": paths.two_tower(variant), "dlrm": paths.DLRM,
                    "item_vectors": paths.item_embeddings(variant)}
    raise ReleaseError(f"release {release.release}: no trained query tower under {store.uri(paths.ONNX)} is the one it "
                       "serves, so there is nothing to fine-tune from; build and promote a full release "
                       "(retrained_release) first")
