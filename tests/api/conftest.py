"""The API's real services for its tests: Valkey (embedded, AOF) and a Feast online store (apply + materialize of
the tiny world) under a temporary artifact root, shared by the module that asks for ``online``."""

import dataclasses
import datetime as dt

import psutil
import pytest

from recsys_assets.api.config import ApiConfig
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.feature_spec import INTERESTS
from recsys_assets.lib.valkey_server import EmbeddedValkey, free_port
from tests.release.tiny_serving import tiny_artifacts


@dataclasses.dataclass
class Online:
    root: object
    valkey: EmbeddedValkey
    environ: dict
    tiny: object
    top_category: dict  # user -> published top_category
    catalogue: object   # DataFrame
    interests: dict = dataclasses.field(default_factory=dict)  # user -> published (interest_1, .._2, .._3)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.valkey.port}"

    def config(self, triton_port: int | None = None, **changes) -> ApiConfig:
        base = ApiConfig(artifacts=str(self.root), start_date=dt.date.fromisoformat(self.tiny.start_date),
                         triton_url=f"http://127.0.0.1:{triton_port or self.closed_port}", valkey_url=self.url,
                         feast_registry=self.environ["RECSYS_FEAST_REGISTRY"], environ=self.environ,
                         retry_after_s=3)
        return dataclasses.replace(base, **changes)

    closed_port: int = 0

    def client(self, db: int):
        return self.valkey.endpoint.client(db=db)

    started: list = dataclasses.field(default_factory=list)  # every server the tests started: the fixture stops them

    def start_valkey(self) -> EmbeddedValkey:
        """A server on the same port and data folder (after ``valkey.stop()``): a restart."""
        self.valkey = EmbeddedValkey(self.valkey.data_dir, port=self.valkey.port).start()
        self.started.append(self.valkey)
        return self.valkey

    def restart_valkey(self) -> None:
        self.valkey.stop()
        self.start_valkey()

    def items_of(self, category: str, n: int, exclude=()) -> list[int]:
        c = self.catalogue
        pool = c.loc[(c["category_l1"] == category) & (c["available_from_day"] == 0), "item_id"].tolist()
        return [i for i in pool if i not in set(exclude)][:n]


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    from recsys_assets.lib.catalogue import render_item_image
    from recsys_assets.release.tiny import publish_online_state, serving_environ

    root = tmp_path_factory.mktemp("api-root")
    tiny = tiny_artifacts(tmp_path_factory)
    server = EmbeddedValkey(root / "valkey", port=free_port()).start()
    started = [server]
    try:
        environ = serving_environ(f"redis://127.0.0.1:{server.port}", root)
        published = publish_online_state(tiny, environ)
        store = ArtifactStore(root)
        store.write_parquet(paths.ITEMS, tiny.items)
        first = tiny.items.iloc[0]
        with store.writing(paths.item_image(0)) as tmp:
            render_item_image(first["category_l1"], first["category_l2"], "red").save(tmp, format="JPEG")
        interests = {u: tuple(published[name][u] for name in INTERESTS) for u in published["top_category"]}
        yield Online(root=root, valkey=server, environ=environ, tiny=tiny, top_category=published["top_category"],
                     catalogue=tiny.items, interests=interests, closed_port=free_port(), started=started)
    finally:
        for each in started:  # the restarted ones too (stop() of a stopped server does nothing)
            each.stop()
        leaked = [p.pid for p in psutil.process_iter(["cmdline"])
                  if f"127.0.0.1:{server.port}" in " ".join(p.info["cmdline"] or [])]
        assert not leaked, f"valkey-server processes on :{server.port} outlived the tests: {leaked}"


