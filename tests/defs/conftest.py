from pathlib import Path

import pytest

from recsys_assets.defs.resources import ArtifactStoreResource, MerlinRunner, WorldResource
from tests.support.roots import copy_root


@pytest.fixture()
def resources(tmp_path):
    """Real local resources over a temporary artifact root and the tiny world."""
    return {
        "artifacts": ArtifactStoreResource(root=str(tmp_path / "artifacts")),
        "world": WorldResource(seed=7, scale="tiny"),
        "merlin": MerlinRunner(profile="local"),
    }


# -- the tiny trained world, built once per session -------------------------------------------------------------
# Fitting the workflows and training the models on the tiny world takes minutes on two cores, and the training,
# fine-tuning and retrain modules each used to build the same world for themselves. The fixtures below build each
# stage once; every consumer works on its own copy of the artifact root (a few MB), so the tests stay independent
# and none can change what another sees. Nothing may write into the session roots themselves.

@pytest.fixture(scope="session")
def tiny_upstream(tmp_path_factory) -> Path:
    """The training stage's upstream on the tiny world (raw, masked and transformed days 00-07, the workflows fit
    on 00-05, compiled transforms, the multimodal stand-in) and days 08 and 09 arriving after it (joined, unmasked,
    transformed with the saved workflows, as the daily job does). Read-only: copy it with ``copy_root``."""
    from tests.defs.test_training_assets import build_upstream

    root = tmp_path_factory.mktemp("tiny-upstream") / "artifacts"
    build_upstream(root, later_days=(8, 9))  # one merlin-env process: fit, then days 00-09 transformed
    return root


@pytest.fixture(scope="session")
def tiny_trained(tiny_trained_run) -> Path:
    """``tiny_upstream`` plus the plain Two-Tower, the DLRM, both as ONNX, item embeddings and the FAISS index,
    trained on days 00-05 and validated on 06-07 (``TRAIN_CONFIG``). No release yet. Read-only: copy it."""
    return tiny_trained_run[0]


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_upstream, tmp_path_factory):
    """``(root, result)``: ``tiny_trained`` and the Dagster run that trained it, whose checks and metadata
    ``test_training_assets`` reads for the DLRM (the same days and hyperparameters it would train again)."""
    import dagster as dg

    from recsys_assets.defs.index import assets as index_assets
    from recsys_assets.defs.training import assets as training
    from tests.defs.test_finetune import TRAIN_CONFIG

    store = copy_root(tiny_upstream, tmp_path_factory, "tiny-trained")
    resources = {"artifacts": ArtifactStoreResource(root=store.root), "world": WorldResource(seed=7, scale="tiny"),
                 "merlin": MerlinRunner()}
    result = dg.materialize([training.two_tower_model, training.dlrm_model, training.query_tower_onnx,
                             training.dlrm_onnx, index_assets.item_embeddings, index_assets.faiss_index],
                            resources=resources, run_config=TRAIN_CONFIG)
    assert result.success
    return Path(store.root), result
