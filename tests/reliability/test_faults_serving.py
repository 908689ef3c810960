"""Model releases that go wrong, and Triton restarted, under load (API and Triton directly, 20 requests/s each).

A release is made the way the pipeline makes one: a training run publishes new ONNX files at the trained artifact
paths, ``triton_model_repository`` assembles a new versioned release, ``triton_deployment`` hot-swaps the running
server (local profile).

- **Hot swap through the deployment** (retrained query tower + DLRM): the new versions serve and nothing wrong is
  ever answered, and only the two changed models are reloaded (the repository is updated in place, so the other
  12 models' folders stay untouched and Triton keeps them); a request that fails meanwhile may only be a timeout
  or the API's retryable 503, none after the swap.
- **Hot swap of only the changed models** (the fix, as releases do it: the deployment promotes the next release,
  loading its changed models' ``<model>_v<n>`` aliases beside what serves, then switching the ensemble): zero
  failed requests, the other models' stubs untouched.
- **A DLRM that cannot load** (a corrupt file): the deployment fails naming the model, the old release keeps
  serving with zero failed requests and readiness stays true (it can serve); the failed release is recorded as
  such, so a restart comes up on what serves.
- **A DLRM that loads but raises on every request** (an embedding table smaller than the vocabulary): the
  release's verification (real requests through the switched ensemble) fails; the requests it breaks are clear
  errors (the API's 503 + Retry-After, Triton's error naming the model); the deployment switches back to the
  served release by itself and fails saying so. While such a version is live (made live directly, without the
  verification), /readyz says not ready (its canary inference fails, naming the error), and ready again once the
  served release is back.
- **Triton stopped and started again under the API**: a clear 503 with Retry-After meanwhile, then the same API
  process recovers by itself.
"""

import collections
import dataclasses
import re
import threading
import time

import httpx
import pytest

from recsys_assets.defs.release import assets as release_assets
from recsys_assets.release import records as release_records, repository
from recsys_assets.lib.artifacts import ArtifactStore
from recsys_assets.lib.ensemble_request import ENSEMBLE
from recsys_assets.lib.feature_spec import FIRST_INDEX
from recsys_assets.release.client import RecommendationClient
from recsys_assets.release.tiny import TinySizes, write_onnx_models
from tests.support import report
from tests.support.harness import BackgroundLoad, Mix, Target, summarize
from tests.support.stack import DAY13, wait_for

pytestmark = pytest.mark.integration

RATE = 20
SERVED: dict = {}      # the release the running server serves (a failed deployment leaves a newer manifest behind)
HOT_SWAP: dict = {}    # what the deployment's hot swap reloaded


# -- helpers --------------------------------------------------------------------------------------------------------
def _sizes(tiny, seed: int, users: int | None = None) -> TinySizes:
    """The tiny models' table sizes (as release.tiny builds them); ``users`` overrides the user table's rows."""
    items = tiny.items
    return TinySizes(users=users if users is not None else FIRST_INDEX + len(tiny.users),
                     items=FIRST_INDEX + len(items), categories=FIRST_INDEX + items["category_l1"].nunique(),
                     top_categories=FIRST_INDEX + 20, seed=seed)


@pytest.fixture(scope="module")
def models(stack, tmp_path_factory):
    """ONNX files a training run could publish: two retrainings (other seeds), and a DLRM whose user table has one
    row (it loads, then fails every request: an index out of bounds inside onnxruntime)."""
    out = {}
    for name, seed, users in (("retrained", 8, None), ("retrained_again", 10, None), ("too_small", 9, 1)):
        folder = tmp_path_factory.mktemp(name)
        write_onnx_models(folder, _sizes(stack.tiny, seed=seed, users=users))
        out[name] = {"query_tower": (folder / "query_tower.onnx").read_bytes(),
                     "dlrm": (folder / "dlrm.onnx").read_bytes()}
    out["corrupt_dlrm"] = b"\x08\x07not an onnx graph" + bytes(range(256)) * 64
    return out


def _served(stack):
    if "release" not in SERVED:
        SERVED["release"] = stack.releases()[-1]
    return SERVED["release"]


def _probe(stack) -> list[int] | str:
    """A probe user's top 10 straight from Triton (no background load touches that user), or the error text."""
    try:
        with RecommendationClient(stack.triton_url, "http") as client:
            return client.recommend(stack.probe_users[3], device_type=1, timestamp=DAY13, top_k=10)[0].tolist()
    except Exception as exc:  # the error is the observation
        return f"{type(exc).__name__}: {exc}"


def _versions(stack) -> dict[str, dict[str, str]]:
    """Triton's repository index: model -> {version: state (reason)}. Releases serve a version of a model under
    its alias (``dlrm_ranking_v3``, version 3); the canonical folder lists the same versions unloaded, so a READY
    alias wins over it."""
    out: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for entry in stack.triton().repository_index():
        if entry.get("version"):
            alias = repository.parse_alias(entry["name"])
            model = alias[0] if alias else entry["name"]
            state = f"{entry.get('state', '')} {entry.get('reason', '')}".strip()
            if not out[model].get(entry["version"], "").startswith("READY"):
                out[model][entry["version"]] = state
    return out


def _stub_pids(stack) -> dict[str, set[int]]:
    """The python-backend stub processes of every model (a reloaded model gets new ones)."""
    import psutil

    out: dict[str, set[int]] = collections.defaultdict(set)
    for child in psutil.Process(stack.triton().pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        for part in cmdline:
            if "/triton_repository/" in part:
                folder = part.split("/triton_repository/")[1].split("/")[0]
                alias = repository.parse_alias(folder)  # releases serve <model>_v<n>
                out[alias[0] if alias else folder].add(child.pid)
    return dict(out)


def _load(stack, seed: int) -> BackgroundLoad:
    # Generous client limits: a request that waits seconds while models reload is slow, not failed (the latency
    # is reported); a failure is an error answer, or no answer within 30 s.
    mix = Mix(known_users=tuple(stack.load_users), items=tuple(stack.warm_items()))
    load = BackgroundLoad([Target("api", stack.api_url), Target("triton", stack.triton_url)], mix, rate=RATE,
                          seconds=180, seed=seed, timeout_s=30.0, max_in_flight=1024).start()
    load.wait_for_requests(2 * RATE)
    return load


class Sampler:
    """Polls a URL every ``interval`` seconds in a thread: (time, status) samples while a fault lasts."""

    def __init__(self, url: str, clock, interval: float = 0.1) -> None:
        self.url, self.clock, self.interval = url, clock, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                try:
                    status = client.get(self.url).status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append((self.clock(), status))
                self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def _step_error(result) -> str:
    """The messages of the run's failed steps."""
    return "\n".join(e.event_specific_data.error.to_string() for e in result.all_events
                     if e.event_type_value == "STEP_FAILURE")


def _failures(records) -> collections.Counter:
    return collections.Counter((r.target, r.kind, r.status, r.detail[:90]) for r in records if not r.ok)


def _publish(stack, models: dict) -> None:
    """What a training run does: new ONNX files at the trained artifact paths."""
    stack.write_trained(release_assets.QUERY_TOWER_ONNX, models["query_tower"])
    stack.write_trained(release_assets.DLRM_ONNX, models["dlrm"])


def _roll_back_to_served(stack, models: list[str]) -> None:
    """Point the ensemble at the served release's aliases again (and load ``models``' aliases if they are not)."""
    served, live = _served(stack), stack.repository()
    repository.write_served(live, served, repository.canonical_ensemble(live))
    stack.triton().load([repository.alias(m, served.models[m]) for m in models] + ["ensemble_model"])


def _mark_failed(stack, release: int) -> None:
    store = ArtifactStore(stack.root)
    record = release_records.record(store, release)
    record.status = "load_failed"
    release_records.write_record(store, record)


def _make_next_release_live_unverified(stack):
    """Build the next release from the trained artifacts (``triton_model_repository``) and switch the ensemble
    to it directly, loading its changed models' aliases, without the deployment's verification (which would take
    a failing release back out on its own). Returns the release."""
    import dagster as dg

    with stack._deployment_environ():
        dg.materialize([release_assets.triton_model_repository], resources=stack.resources())
    release, live = stack.releases()[-1], stack.repository()
    repository.write_served(live, release, repository.canonical_ensemble(live))
    stack.triton().load([repository.alias(m, release.models[m]) for m in release.changed] + ["ensemble_model"])
    return release


# -- hot swap through the deployment --------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_hot_swap_through_the_deployment_serves_the_new_towers_and_answers_nothing_wrong(stack, models):
    stack.wait_ready()
    before_release = _served(stack)
    before = _probe(stack)
    assert isinstance(before, list) and len(before) == 10, before
    _publish(stack, models["retrained"])
    stubs_before = _stub_pids(stack)
    load = _load(stack, seed=21)
    try:
        t_swap = load.now()
        result = stack.deploy()
        t_swapped = load.now()
        time.sleep(2.0)
    finally:
        records = load.stop()

    meta = result.asset_materializations_for_node("triton_deployment")[0].metadata
    release = stack.releases()[-1]
    assert meta["action"].value == "reloaded" and release.release == before_release.release + 1
    assert sorted(release.changed) == ["dlrm_ranking", "query_tower"]
    SERVED["release"] = release
    versions = _versions(stack)
    # the executor layout (RECSYS_TEST_LAYOUT=executor) serves every stage inside ensemble_model's new version
    for model, version in ([(ENSEMBLE, release.release)] if release.layout == "executor"
                           else [(m, release.models[m]) for m in release.changed]):
        assert versions[model].get(str(version), "").startswith("READY"), versions[model]
    HOT_SWAP["layout"] = release.layout
    after = _probe(stack)
    assert isinstance(after, list) and len(after) == 10 and after != before  # the new towers answer

    failed = [r for r in records if not r.ok]
    # nothing wrong was answered: a failure is a timeout or the API's retryable 503, and only while models reloaded
    assert all(r.status in (0, 503) for r in failed), _failures(records)
    assert all(r.retry_after for r in failed if r.status == 503)
    assert all(r.ok for r in records if r.due >= t_swapped), _failures(r for r in records if r.due >= t_swapped)

    stubs_after = _stub_pids(stack)
    HOT_SWAP["reloaded"] = sorted(m for m in stubs_before if stubs_before[m] != stubs_after.get(m))
    swap = summarize(records, since=t_swap, until=t_swapped)
    steady = summarize(records, until=t_swap)
    report.record("hot swap query tower + DLRM via triton_deployment", requests=swap["requests"],
                  failed=swap["errors"], failed_how=dict(collections.Counter(
                      f"{r.target} {'timeout' if r.status == 0 else r.status}" for r in failed)),
                  recovery_s=0.0, events_lost=0,
                  note=f"swap {t_swapped - t_swap:.1f} s; p99 during it {swap['p99_ms']:.0f} ms, max "
                       f"{swap['max_ms']:.0f} ms (before: p99 {steady['p99_ms']:.0f} ms); models reloaded "
                       f"{len(HOT_SWAP['reloaded'])} of {len(stubs_before)}")


def test_the_deployment_hot_swap_reloads_only_the_models_whose_version_changed():
    if "reloaded" not in HOT_SWAP:
        pytest.skip("observed by the hot-swap test above")
    # the executor layout has one model: a swap reloads it whole (its stubs run every stage)
    assert HOT_SWAP["reloaded"] == ([ENSEMBLE] if HOT_SWAP["layout"] == "executor"
                                    else ["dlrm_ranking", "query_tower"])


# -- hot swap of only the changed models ----------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_hot_swap_of_only_the_changed_models_under_load_fails_no_request(stack, models):
    """The fix for the first hot swap's failures, as releases do it now: the deployment promotes the next release,
    loading only its changed models (their ``<model>_v<n>`` aliases) beside what serves, then switching the
    ensemble in one step; no request fails and the other twelve models keep their stubs."""
    stack.wait_ready()
    before = _probe(stack)
    _publish(stack, models["retrained_again"])
    stubs_before = _stub_pids(stack)
    load = _load(stack, seed=25)
    try:
        t_swap = load.now()
        result = stack.deploy()
        t_swapped = load.now()
        time.sleep(2.0)
    finally:
        records = load.stop()
    release = stack.releases()[-1]
    assert result.asset_materializations_for_node("triton_deployment")[0].metadata["action"].value == "reloaded"
    assert sorted(release.changed) == ["dlrm_ranking", "query_tower"]
    SERVED["release"] = release

    stubs_after = _stub_pids(stack)
    reloaded = sorted(m for m in stubs_before if stubs_before[m] != stubs_after.get(m))
    assert reloaded == ([ENSEMBLE] if release.layout == "executor" else ["dlrm_ranking", "query_tower"])
    after = _probe(stack)
    assert isinstance(after, list) and after != before                 # the ensemble routes to the new versions
    assert not _failures(records), _failures(records)                  # zero failed requests
    swap = summarize(records, since=t_swap, until=t_swapped)
    steady = summarize(records, until=t_swap)
    report.record("hot swap of only the 2 changed models (the fix: a release promotion)", requests=swap["requests"],
                  failed=swap["errors"], recovery_s=0.0, events_lost=0,
                  note=f"swap {t_swapped - t_swap:.1f} s; p99 during it {swap['p99_ms']:.0f} ms, max "
                       f"{swap['max_ms']:.0f} ms (before: p99 {steady['p99_ms']:.0f} ms)")


# -- a version that cannot load -------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_a_dlrm_that_fails_to_load_leaves_the_old_version_serving_and_readiness_true(stack, models):
    stack.wait_ready()
    served = _served(stack)
    before = _probe(stack)
    stack.write_trained(release_assets.DLRM_ONNX, models["corrupt_dlrm"])
    load = _load(stack, seed=22)
    try:
        with Sampler(f"{stack.api_url}/readyz", load.now) as ready:
            t_fault = load.now()
            result = stack.deploy(raise_on_error=False)
            t_done = load.now()
            time.sleep(2.0)
    finally:
        records = load.stop()

    assert not result.success
    assert re.search(r"model 'dlrm_ranking(_v\d+)?' failed to load", _step_error(result))  # the failed model named
    broken = stack.releases()[-1]
    assert broken.changed == ["dlrm_ranking"]
    # the broken version never serves, the served one does (in the executor layout: ensemble_model's versions)
    model, broken_version, served_version = (
        (ENSEMBLE, broken.release, served.release) if broken.layout == "executor"
        else ("dlrm_ranking", broken.models["dlrm_ranking"], served.models["dlrm_ranking"]))
    versions = _versions(stack)[model]
    assert not versions.get(str(broken_version), "").startswith("READY"), versions
    assert versions.get(str(served_version), "").startswith("READY"), versions
    assert _probe(stack) == before                                   # the old version answers, unchanged
    assert not _failures(records), _failures(records)                # zero failed requests
    # it could serve: every answer says ready. A probe that got no answer in time (status 0: the 2 cores are
    # busy loading the broken version) said nothing either way, so it is not counted against readiness.
    answered = [status for _, status in ready.samples if status]
    assert answered and all(status == 200 for status in answered), ready.samples

    # the repository on disk still names the broken version: back to the served release, so a restart
    # comes up on what serves (nothing to reload: the server never stopped serving it)
    _roll_back_to_served(stack, [])
    config = (stack.repository() / "dlrm_ranking" / "config.pbtxt").read_text()
    assert f"versions: {served.models['dlrm_ranking']}" in config

    window = summarize(records, since=t_fault, until=t_done)
    report.record("DLRM version that fails to load (corrupt ONNX)", requests=window["requests"],
                  failed=window["errors"], recovery_s=0.0, events_lost=0,
                  note=f"deployment failed naming dlrm_ranking after {t_done - t_fault:.1f} s; old version kept "
                       f"serving; /readyz 200 in all {len(answered)} answered samples (of {len(ready.samples)})")


# -- a version that raises at runtime -------------------------------------------------------------------------------
@dataclasses.dataclass
class RuntimeFault:
    before: list
    after_failed_deploy: object
    after_rollback: object
    deploy_error: str
    records: list
    readyz: list
    t_fault: float
    t_deployed: float
    t_rollback: float
    t_rolled_back: float
    first_ok: float


@pytest.fixture(scope="module")
def runtime_fault(stack, models) -> RuntimeFault:
    """Promote a DLRM that raises on every request through the deployment, watch, roll back by hand."""
    stack.wait_ready()
    _served(stack)  # known before the deployment writes a newer manifest
    before = _probe(stack)
    stack.write_trained(release_assets.DLRM_ONNX, models["too_small"]["dlrm"])
    load = _load(stack, seed=23)
    try:
        with Sampler(f"{stack.api_url}/readyz", load.now) as ready:
            t_fault = load.now()
            result = stack.deploy(raise_on_error=False)
            t_deployed = load.now()
            after_failed_deploy = _probe(stack)
            time.sleep(3.0)
            t_rollback = load.now()
            _roll_back_to_served(stack, ["dlrm_ranking"])
            t_rolled_back = load.now()
            after_rollback = _probe(stack)
            time.sleep(2.0)
    finally:
        records = load.stop()
    ok_after = [r.done for r in records if r.kind == "recommend" and r.ok and r.due >= t_deployed]
    window = [s for t, s in ready.samples if t_deployed <= t < t_rollback]
    return RuntimeFault(before=before, after_failed_deploy=after_failed_deploy, after_rollback=after_rollback,
                        deploy_error=_step_error(result), records=records, readyz=window, t_fault=t_fault,
                        t_deployed=t_deployed, t_rollback=t_rollback, t_rolled_back=t_rolled_back,
                        first_ok=min(ok_after, default=float("nan")))


@pytest.mark.timeout(600)
def test_a_dlrm_that_raises_at_runtime_fails_the_smoke_test_gives_clear_errors_and_rolls_back(runtime_fault):
    f = runtime_fault
    # the release's verification failed the deployment with onnxruntime's error (the ensemble switch is checked
    # with real requests before the old release's models go)
    assert "out of data bounds" in f.deploy_error and "was not promoted" in f.deploy_error, f.deploy_error
    reads = [r for r in f.records if r.kind == "recommend"]
    # the deployment took the release back out by itself: everything sent from shortly after it returned (and
    # before the test's own rollback, which finds nothing left to undo) was answered well...
    settled = [r for r in reads if f.t_deployed + 0.5 <= r.due and r.done < f.t_rollback]
    assert settled and all(r.ok for r in settled), _failures(settled)
    # ...and what failed, failed clearly: Triton's 500 with onnxruntime's message, the API's 503 + Retry-After
    # (requests sent while the deployment reloaded every model may also time out on a saturated machine)
    sent_after = [r for r in reads if not r.ok and r.due >= f.t_deployed]
    assert all(r.status == 500 and "out of data bounds" in r.detail for r in sent_after if r.target == "triton"), \
        collections.Counter(r.detail[:120] for r in sent_after if r.target == "triton")
    assert all(r.status == 503 and r.retry_after for r in sent_after if r.target == "api"), \
        collections.Counter(r.detail[:120] for r in sent_after if r.target == "api")
    assert all(r.status in (0, 500, 503) for r in reads if not r.ok)
    clicks = [r for r in f.records if r.kind == "click"]
    assert clicks and all(r.ok for r in clicks)                          # the click path does not need Triton
    assert f.after_rollback == f.before                                   # healed without a restart
    late = [r for r in f.records if r.due >= f.t_rolled_back + 0.5]
    assert late and all(r.ok for r in late), _failures(late)

    window = summarize(f.records, since=f.t_fault, until=f.first_ok)
    report.record("DLRM version that raises on every request", requests=window["requests"],
                  failed=window["errors"],
                  failed_how=dict(collections.Counter(f"{r.target} {r.status}" for r in f.records
                                                      if not r.ok and f.t_fault <= r.due < f.first_ok)),
                  recovery_s=f.first_ok - f.t_fault, events_lost=0,
                  note=f"the release's verification failed the deployment, which kept the served release "
                       f"(its aliases never unloaded; the ensemble switched back) before returning {f.t_deployed - f.t_fault:.1f} s "
                       f"after it started; recovery counted from the start of the deployment; /readyz said 200 in "
                       f"{sum(s == 200 for s in f.readyz)}/{len(f.readyz)} samples after it")


def test_the_deployment_rolls_back_a_release_whose_smoke_test_fails(runtime_fault):
    assert runtime_fault.after_failed_deploy == runtime_fault.before


@pytest.mark.timeout(600)
def test_readiness_says_not_ready_while_every_recommendation_fails(stack, models):
    """The DLRM that raises on every request is made live directly (its version and config put in place, the model
    loaded), not through the deployment, whose smoke test decides on its own what happens to a failing release."""
    stack.wait_ready()
    before = _probe(stack)
    stack.write_trained(release_assets.DLRM_ONNX, models["too_small"]["dlrm"])
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        ready_before = api.get("/readyz")
        try:
            release = _make_next_release_live_unverified(stack)
            assert release.changed == ["dlrm_ranking"]
            failing = [api.get("/recommendations", params={"user_id": u, "device_type": 1, "timestamp": DAY13})
                       for u in stack.probe_users[:3]]
            broken = [api.get("/readyz") for _ in range(5)]
        finally:
            _roll_back_to_served(stack, ["dlrm_ranking"])
            _mark_failed(stack, stack.releases()[-1].release)  # as the deployment records a release that failed
        after = _probe(stack)
        ready_after = api.get("/readyz")
    assert ready_before.status_code == 200
    assert all(r.status_code == 503 for r in failing), [(r.status_code, r.text[:120]) for r in failing]
    # every probe while broken: not ready, saying why (the canary inference failed with the model's error)
    assert all(r.status_code == 503 and r.headers.get("retry-after") for r in broken), [r.text for r in broken]
    assert all("canary" in r.json()["checks"]["triton"] and "out of data bounds" in r.json()["checks"]["triton"]
               for r in broken), broken[0].json()
    assert after == before                                 # rolled back: the served version answers again
    assert ready_after.status_code == 200 and ready_after.json()["checks"]["triton"] == "ready", ready_after.text


# -- Triton restarted under the API ---------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_triton_restarted_under_the_api_gives_503_with_retry_after_then_recovers_by_itself(stack):
    stack.wait_ready()
    api_pid = stack.api.pid
    load = BackgroundLoad([Target("api", stack.api_url)], Mix(known_users=tuple(stack.load_users),
                                                              items=tuple(stack.warm_items())),
                          rate=RATE, seconds=240, seed=24, timeout_s=30.0, max_in_flight=1024).start()
    try:
        load.wait_for_requests(RATE)
        t_stop = load.now()
        assert stack.stop_triton()
        t_stopped = load.now()
        with httpx.Client(base_url=stack.api_url, timeout=10) as api:
            down = api.get("/recommendations", params={"user_id": 3, "device_type": 1, "timestamp": DAY13})
            not_ready = api.get("/readyz")
            t_start = load.now()
            result = stack.deploy(repository=False)
            t_ready = load.now()
            wait_for(lambda: api.get("/recommendations", params={"user_id": 3, "timestamp": DAY13})
                     .status_code == 200, 60, what="a recommendation after the restart")
        time.sleep(2.0)
    finally:
        records = load.stop()

    assert result.asset_materializations_for_node("triton_deployment")[0].metadata["action"].value == "started"
    assert down.status_code == 503 and down.headers.get("retry-after") == "1"
    assert "unreachable" in down.json()["detail"] or "not being served" in down.json()["detail"]
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["triton"] != "ready"
    reads = [r for r in records if r.kind == "recommend"]
    failed = [r for r in reads if not r.ok]
    assert failed
    odd = [(r.status, r.retry_after, r.detail[:100]) for r in failed if not (r.status == 503 and r.retry_after)]
    assert not odd, odd
    # Recovered for good, by itself: once a good answer has come back, every read sent after it is good. Reads are
    # compared by when the first good one came back (done), not when it was due: an open-loop request due early can
    # be sent late by a busy client and answered after the recovery, while later ones due on time still met no server.
    first_answer = min(r.done for r in reads if r.ok and r.due > t_start)
    relapses = [(round(r.due - t_start, 3), r.status, r.detail[:120]) for r in reads
                if r.due >= first_answer and not r.ok]
    assert not relapses, (f"failed after the first answer at +{first_answer - t_start:.3f} s (deployment returned "
                          f"at +{t_ready - t_start:.3f} s): {relapses[:10]}")
    assert all(r.ok for r in records if r.kind == "click")             # clicks never needed Triton
    assert stack.api.pid == api_pid and stack.api.alive()              # the same API process throughout

    window = summarize(records, since=t_stop, until=first_answer)
    report.record("Triton stopped and restarted under the API (API load 20/s)", requests=window["requests"],
                  failed=window["errors"], failed_how={"503 + Retry-After": len(failed)},
                  recovery_s=first_answer - t_start, events_lost=0,
                  note=f"recovery counted from the restart: stop took {t_stopped - t_stop:.1f} s, start + loading the "
                       f"14 models {t_ready - t_start:.1f} s; the same API process answered 200 again by itself")
