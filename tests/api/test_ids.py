"""A shop's string ids at the API (``api.ids.SourceIds``) over id maps written by the real ingest (lib.sources)."""

import pytest

from recsys_assets.api import events as ev
from recsys_assets.api import ids as api_ids
from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.sources.files import SourceFolder
from recsys_assets.lib.sources.id_maps import load_id_map, save_id_map
from recsys_assets.lib.sources.ingest import ingest_catalogue, ingest_day
from tests.lib.test_sources import SEED, START, _write_source


@pytest.fixture()
def store(tmp_path):
    source = SourceFolder(str(_write_source(tmp_path / "shop")))
    store = ArtifactStore(tmp_path / "artifacts")
    ingest_catalogue(source, store, START)
    ingest_day(source, store, 0, START, SEED)
    return store


def test_source_ids_in_and_out(store):
    ids = api_ids.load_ids(True, store)
    users = load_id_map(store, paths.USER_ID_MAP, "user")
    alice = ids.user("u-alice")
    assert alice == users.index["u-alice"] and ids.user_out(alice) == "u-alice"
    assert ids.user("") == -1 and ids.user("u-nobody-yet") == -1  # unknown users are served as anonymous
    assert ids.item("SKU-005") == 3 and ids.item_out(3) == "SKU-005"
    with pytest.raises(ev.InvalidRequest, match="'SKU-004' is not in the catalogue") as info:
        ids.item("SKU-004")  # quarantined by the ingest: not in the catalogue
    assert info.value.status == 422
    with pytest.raises(ev.InvalidRequest) as info:
        ids.item("SKU-404", status=404)
    assert info.value.status == 404


def test_users_a_later_ingest_maps_are_recognised_without_a_restart(store, monkeypatch):
    ids = api_ids.load_ids(True, store)
    assert ids.user("u-new") == -1
    grown = load_id_map(store, paths.USER_ID_MAP, "user").extended(["u-new"], 1)
    save_id_map(store, paths.USER_ID_MAP, grown)
    monkeypatch.setattr(api_ids, "RELOAD_SECONDS", 0.0)
    assert ids.user("u-new") == len(grown) - 1


def test_a_source_without_an_ingested_catalogue_is_refused_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="ingest the source first"):
        api_ids.load_ids(True, ArtifactStore(tmp_path / "empty"))
    assert isinstance(api_ids.load_ids(False, ArtifactStore(tmp_path / "empty")), api_ids.GeneratorIds)
