"""The release state machine (``release.promotion``): the served state's history, and what a switch records.

The switch itself (Triton loading aliases, the ensemble swap, smoke requests) runs against a real server in
tests/defs/test_deployment_releases.py and tests/defs/test_finetune.py; here ``serve`` is a hand-written
stand-in so the bookkeeping around it (records, served state, restored configs) is checked on a real artifact
store and a real built repository in milliseconds.
"""

from __future__ import annotations

import dataclasses

import pytest

from recsys_assets.lib import paths
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.release import promotion, records
from recsys_assets.release.records import ReleaseRecord, ServedState
from recsys_assets.release.repository import ServingDefaults, build_repository, parse_config
from tests.release.tiny_serving import tiny_artifacts


@pytest.mark.parametrize("stack, serving, release, action, expected", [
    ([1, 2], 2, 3, "promotion", [1, 2, 3]),
    ([1, 2, 3], 3, 2, "rollback", [1, 2]),        # the serving release leaves: a second rollback goes to 1
    ([1, 2], 2, 1, "rollback", [1]),
    ([1, 2], 2, 2, "restart", [1, 2]),
    ([1, 2, 3], 3, 2, "promotion", [1, 3, 2]),    # a forced re-promotion moves it to the top, once
    ([1, 2], 2, 3, "deployment", [1, 2, 3]),
    ([], None, 1, "deployment", [1]),
])
def test_served_after_moves_the_stack_as_each_action_means(stack, serving, release, action, expected):
    state = ServedState(release=serving, stack=stack) if serving is not None else None
    after = promotion.served_after(state, release, action, {"at": "now"})
    assert after.release == release and after.stack == expected
    assert after.events[-1] == {"action": action, "release": release, "at": "now"}


def test_served_after_trims_history_and_events():
    state = ServedState(release=99, stack=list(range(100)), events=[{"n": i} for i in range(200)])
    after = promotion.served_after(state, 100, "promotion", {})
    assert after.stack == list(range(100 - promotion.HISTORY_KEPT + 1, 101))
    assert len(after.events) == promotion.EVENTS_KEPT and after.events[-1]["release"] == 100


def test_served_after_rejects_an_unknown_action():
    with pytest.raises(ValueError, match="expected one of"):
        promotion.served_after(None, 1, "upgrade", {})


@pytest.fixture()
def two_releases(tmp_path, tmp_path_factory):
    """An artifact root whose live repository holds release 1 (serving) and release 2 (a candidate)."""
    tiny = tiny_artifacts(tmp_path_factory)
    store = ArtifactStore(tmp_path)
    live = tmp_path / paths.TRITON_REPOSITORY
    first = build_repository(live, tiny.trained, ServingDefaults(), tiny.start_date, release=1)
    second = build_repository(live, tiny.trained, ServingDefaults(ranking_topk=50), tiny.start_date, release=2,
                              previous=live, previous_releases=[first])
    for manifest in (first, second):
        store.write_bytes(paths.triton_release(manifest.release), manifest.to_json().encode())
        records.write_record(store, ReleaseRecord(release=manifest.release, kind="full",
                                                  status="promoted" if manifest.release == 1 else "candidate"))
    records.write_served_state(store, ServedState(release=1, stack=[1]))
    return store, live, first, second


def _served(root, live, target, target_text, current, current_text, smoke, ports, timeout):
    return "server", {"action": "reloaded", "seconds": 0.5, "loaded": [], "unloaded": [], "smoke": []}


def _fails(root, live, target, target_text, current, current_text, smoke, ports, timeout):
    raise promotion.PromotionError(f"release {target.release} was not promoted: dlrm_ranking_v2 failed to load; "
                                   f"release {current.release} keeps serving", current.release)


def test_a_promotion_records_the_target_and_moves_the_served_state(two_releases):
    store, live, first, second = two_releases
    switched = promotion.switch_release(store, store.root, live, second, first, records.served_state(store),
                                        "promotion", [], None, run_id="run-1", serve=_served)
    assert switched.state.stack == [1, 2] and records.served_state(store).release == 2
    assert records.record(store, 2).status == "promoted" and records.record(store, 2).events[-1]["action"] == "promotion"
    back = promotion.switch_release(store, store.root, live, first, second, records.served_state(store), "rollback",
                                    [], None, run_id="run-2", serve=_served)
    assert back.state.stack == [1] and records.record(store, 2).status == "rolled_back"


def test_a_failed_switch_marks_the_target_and_restores_the_serving_configs(two_releases):
    store, live, first, second = two_releases
    before = records.served_state(store)
    with pytest.raises(promotion.PromotionError, match="<model>_ranking_v2 failed to load") as failed:
        promotion.switch_release(store, store.root, live, second, first, before, "deployment", [], None,
                                 redact=lambda text: text.replace("dlrm", "<model>") or text, serve=_fails)
    assert failed.value.serving == 1 and failed.value.restored == 1
    record = records.record(store, 2)
    assert record.status == "load_failed" and "<model>_ranking_v2" in record.reasons[-1]
    assert records.served_state(store) == before  # nothing moved
    for model, version in first.models.items():  # every model folder's config names release 1's version again
        assert list(parse_config(live / model / "config.pbtxt").version_policy.specific.versions) == [version]
    assert dataclasses.asdict(records.manifest(store, 2)) == dataclasses.asdict(second)
