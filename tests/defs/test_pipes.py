"""The Pipes runner against the real merlin env (.venv-merlin): versions come back as metadata."""

import dagster as dg
import pytest

from recsys_assets.defs.platform.assets import merlin_environment
from recsys_assets.defs.resources import MerlinRunner

pytestmark = pytest.mark.merlin


def test_merlin_env_reports_its_stack_through_pipes(resources):
    result = dg.materialize([merlin_environment], resources=resources)
    assert result.success
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
