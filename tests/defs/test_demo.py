"""The demo's run policy on a small real code location: a failed WARN check is an outcome it prints and goes on
from (a fine-tune its gate rejects), a failed ERROR check or a failed step stops it with what went wrong."""

import dagster as dg
import pytest

from recsys_assets.demo import _metadata, run_job


def _defs(severity: dg.AssetCheckSeverity, raise_in_step: bool = False) -> dg.Definitions:
    @dg.asset(check_specs=[dg.AssetCheckSpec("gate", asset="candidate", blocking=True)])
    def candidate():
        if raise_in_step:
            raise RuntimeError("the step broke")
        return dg.MaterializeResult(metadata={"release": 2, "status": "gate_failed"}, check_results=[
            dg.AssetCheckResult(check_name="gate", passed=False, severity=severity,
                                metadata={"description": "candidate rejected: 0.20 < served 0.25"})])

    return dg.Definitions(assets=[candidate], jobs=[dg.define_asset_job("job", selection=[candidate])])


def test_a_rejected_candidate_is_printed_and_the_demo_goes_on(capsys):
    with dg.instance_for_test() as instance:
        result = run_job(_defs(dg.AssetCheckSeverity.WARN), "job", instance)
    assert result.success and _metadata(result, "candidate") == {"release": 2, "status": "gate_failed"}
    assert "warning: candidate.gate: candidate rejected: 0.20 < served 0.25" in capsys.readouterr().out


@pytest.mark.parametrize("severity, raise_in_step, said", [(dg.AssetCheckSeverity.ERROR, False, "check failed"),
                                                           (dg.AssetCheckSeverity.WARN, True, "the step broke")])
def test_an_error_check_or_a_failed_step_stops_the_demo(capsys, severity, raise_in_step, said):
    with dg.instance_for_test() as instance, pytest.raises(SystemExit, match="job"):
        run_job(_defs(severity, raise_in_step), "job", instance)
    assert said in capsys.readouterr().err
