"""The Dagster UI reads at a glance (issue 21), checked in a real browser: ``dagster-webserver`` over the project's
``workspace.yaml`` and an instance holding in-process runs made the way ``make demo`` makes them
(:mod:`tests.defs.dagster_ui_run`), with the partition set ended at day 03 as ``make dev`` ends it at the demo's
last day. Debian's Chromium through Playwright opens the asset graph, a partitioned asset's partitions (2 of 4
filled), the job's runs (the demo's runs listed under it) and an asset check with its description. Screenshots go
to ``test-artifacts/dagster-ui/``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from recsys_assets.demo import code_location, run_tags
from recsys_assets.lib.valkey_server import free_port
from tests.support.browser import chromium

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "dagster-ui"


def test_the_workspace_names_the_code_location_the_demo_files_its_runs_under():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert code_location() == pyproject["tool"]["dg"]["project"]["code_location_name"] == "recsys_assets"
    assert run_tags() == {".dagster/repository": "__repository__@recsys_assets"}


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    work = tmp_path_factory.mktemp("dagster-ui")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "RECSYS_ARTIFACTS": str(work / "artifacts"),
                "RECSYS_SCALE": "tiny", "RECSYS_LAST_DAY": "3", "DAGSTER_HOME": str(work / "dagster_home"),
                "RECSYS_VALKEY_PORT": str(free_port())})
    proc = subprocess.run([sys.executable, "-m", "tests.defs.dagster_ui_run"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])["runs"]
    port = free_port()
    log = (work / "webserver.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=PROJECT_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_loaded(url, server, work / "webserver.log")
        yield {"url": url, "runs": runs}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_until_loaded(url: str, server, log: Path, timeout_s: float = 180.0) -> None:
    """Until the code location answers through the webserver's GraphQL (the server up and the location loaded)."""
    import httpx

    query = {"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                      "locationOrLoadError { __typename } } } } }"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dagster-webserver exited ({server.returncode}):\n{log.read_text()[-4000:]}")
        try:
            entries = httpx.post(f"{url}/graphql", json=query, timeout=5).json()["data"]["workspaceOrError"][
                "locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                kinds = [e["locationOrLoadError"]["__typename"] for e in entries]
                assert kinds == ["RepositoryLocation"], f"the code location failed to load: {kinds}"
                return
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            pass
        time.sleep(1)
    pytest.fail(f"dagster-webserver did not load the workspace in {timeout_s} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium(tmp_path_factory.mktemp("chromium-profile"), width=1600, height=1000) as context:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        assert errors == [], f"the UI raised in the browser: {errors}"


def _open(page, url: str, text: str, shot: str, timeout_ms: int = 60_000) -> str:
    """Open ``url``, wait until ``text`` shows, skip the community sign-up dialog the UI opens on a fresh
    profile (as a newcomer would), screenshot, return the page's text."""
    page.goto(url)
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout_ms)
    page.wait_for_load_state("networkidle")
    dialog = page.get_by_text("Join the Dagster community")
    if dialog.count():
        page.get_by_role("button", name="Skip").first.click()
        dialog.first.wait_for(state="hidden", timeout=10_000)
    page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"), full_page=True)
    return page.inner_text("body")


@pytest.mark.integration
def test_the_ui_shows_the_graph_the_partitions_the_jobs_runs_and_the_checks(webserver, page):
    base, location = webserver["url"], code_location()
    # the asset graph: the pipeline's stages as groups
    from recsys_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    body = _open(page, f"{base}/asset-groups", "ingest", "01-asset-groups")
    assert groups <= set(body.split("\n")), f"groups missing from the asset lineage page: {groups}"
    # a daily asset's partitions: the set ends at day 03 (4 partitions), days 00-01 materialized
    body = _open(page, f"{base}/assets/raw_interactions?view=partitions", "2026-01-04", "02-partitions")
    assert "2026-01-05" not in body, "the partition set runs past RECSYS_LAST_DAY"
    assert "4 Partitions Selected" in body and "Materialized (2)" in body and "Missing (2)" in body, body[:3000]
    # the job's runs: the in-process runs are filed under the job of the workspace's code location
    body = _open(page, f"{base}/locations/{location}/jobs/full_build_job/runs", webserver["runs"][0][:8],
                 "03-job-runs")
    for run in webserver["runs"]:
        assert run[:8] in body, f"run {run} is not listed under full_build_job"
    # an asset check with its description (no "No description provided")
    spec = next(iter(sorted(defs.resolve_assets_def("raw_interactions").check_specs, key=lambda c: c.name)))
    body = _open(page, f"{base}/assets/raw_interactions?view=checks", spec.name, "04-checks")
    assert spec.description and spec.description in body and "No description provided" not in body
