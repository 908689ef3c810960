"""The storefront's browser tests run the whole stack for real: the set-up of ``tests/api/test_api.py``
(the tiny serving artifacts, an embedded Valkey with AOF, ``feast apply`` + ``materialize`` into it, the
Triton ensemble), item images rendered into the artifact root, the API under uvicorn on a free port, and
Debian's Chromium driven by Playwright (headless, a fresh profile). Authentication of writes is on: the page
writes with the session cookie its own load sets."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from recsys_assets.api.config import ApiConfig
from recsys_assets.lib.valkey_server import free_port
from tests.support.api_server import ApiServer
from tests.support.browser import chromium

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "storefront"
# Authentication is on for every server of these tests: the page's writes must pass with its session cookie.
API_TOKEN = "storefront-test-token-" + "0" * 16
SAMPLING_SEED = 11  # diversity mode draws the same list for the same request: the test can compare lists


@dataclasses.dataclass
class Stack:
    root: Path
    valkey: object          # EmbeddedValkey
    environ: dict
    tiny: object            # recsys_assets.release.tiny.TinyArtifacts
    top_category: dict      # user -> published top_category
    triton: object          # TritonServer

    def config(self, **changes) -> ApiConfig:
        base = ApiConfig(artifacts=str(self.root), start_date=dt.date.fromisoformat(self.tiny.start_date),
                         triton_url=f"http://127.0.0.1:{self.triton.http_port}",
                         valkey_url=f"redis://127.0.0.1:{self.valkey.port}",
                         feast_registry=self.environ["RECSYS_FEAST_REGISTRY"], environ=self.environ,
                         retry_after_s=2, tokens=(API_TOKEN,), sessions=True)
        return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from recsys_assets.lib import paths
    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.lib.dataset import write_images
    from recsys_assets.lib.generator import World
    from recsys_assets.release.triton_server import TritonServer
    from recsys_assets.lib.valkey_server import EmbeddedValkey
    from recsys_assets.release.repository import ServingDefaults, build_repository
    from recsys_assets.release.tiny import publish_online_state, serving_environ
    from tests.release.tiny_serving import tiny_artifacts

    root = tmp_path_factory.mktemp("store-root")
    tiny = tiny_artifacts(tmp_path_factory)
    valkey = EmbeddedValkey(root / "valkey", port=free_port()).start()
    triton = None
    try:
        environ = serving_environ(f"redis://127.0.0.1:{valkey.port}", root)
        published = publish_online_state(tiny, environ)
        store = ArtifactStore(root)
        store.write_parquet(paths.ITEMS, tiny.items)
        write_images(store, World(seed=7, scale="tiny"))  # the tiny world's catalogue is tiny.items
        repository = tmp_path_factory.mktemp("store-triton") / "repository"
        build_repository(repository, tiny.trained, ServingDefaults(sampling_seed=SAMPLING_SEED),
                         tiny.start_date, release=1)
        triton = TritonServer(repository, http_port=free_port(), env=environ).start(models=["ensemble_model"],
                                                                                  timeout=300)
        yield Stack(root=root, valkey=valkey, environ=environ, tiny=tiny,
                    top_category=published["top_category"], triton=triton)
    finally:
        if triton is not None:
            triton.stop()
        valkey.stop()


@pytest.fixture(scope="module")
def api_server(stack):
    with ApiServer(stack.config()) as server:
        yield server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
