"""The Pipes runner against the real merlin env (.venv-merlin): versions come back as metadata."""

import dagster as dg
import pytest

from recsys_assets.defs.platform.assets import merlin_environment
from recsys_assets.defs.resources import MerlinRunner

pytestmark = pytest.mark.merlin


def test_merlin_env_reports_its_stack_through_pipes(resources, tmp_path):
    # with log_dir (the demo's quiet console) the step's own output lands in its file, and Pipes still reports
    logs = tmp_path / "logs"
    result = dg.materialize([merlin_environment], resources={**resources, "merlin": MerlinRunner(log_dir=str(logs))})
    assert result.success
    assert (logs / "env_report.log").stat().st_size > 0  # the merlin stack's import warnings, off the console
    meta = result.asset_materializations_for_node("merlin_environment")[0].metadata
    assert meta["version/nvtabular"].value == "23.08.00"
    assert meta["version/tensorflow"].value.startswith("2.12")
    assert meta["version/merlin.models"].value.startswith("23.12")
    assert meta["import_failures"].value == 0
    assert ".venv-merlin" in meta["executable"].value


def test_missing_merlin_env_fails_with_setup_advice(tmp_path):
    runner = MerlinRunner(python=str(tmp_path / "nope" / "python"))
    result = dg.materialize([merlin_environment], resources={"merlin": runner}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "make setup" in str(failure.event_specific_data.error)


def test_a_failed_step_with_a_log_dir_names_the_file_and_repeats_its_end(tmp_path):
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho 'loading the merlin stack' >&2\necho 'boom: out of memory' >&2\nexit 3\n")
    script.chmod(0o755)
    logs = tmp_path / "logs"
    runner = MerlinRunner(python=str(script), log_dir=str(logs))
    result = dg.materialize([merlin_environment], resources={"merlin": runner}, raise_on_error=False)
    assert not result.success
    error = str(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)
    assert str(logs / "env_report.log") in error and "boom: out of memory" in error
    assert "loading the merlin stack" in (logs / "env_report.log").read_text()
