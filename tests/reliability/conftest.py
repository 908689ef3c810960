"""The reliability suite's shared stack (started once per session, on first use) and its measurement table."""

import os

import pytest

from tests.support import report


@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    """Valkey (AUTH) + the tiny world in Feast + Triton deployed by the serving assets + the API process.

    Started on first use and stopped when the package's last test is done (not kept through the rest of the
    suite). Tests that break something put it back before they end (and check readiness first), so the order of
    the modules does not matter.
    """
    from tests.release.tiny_serving import tiny_artifacts
    from tests.support.stack import start_stack

    tiny = tiny_artifacts(tmp_path_factory)
    stack = start_stack(tmp_path_factory.mktemp("reliability"), tiny=tiny)
    try:
        yield stack
    finally:
        stack.close()


def pytest_terminal_summary(terminalreporter):
    if not report.ROWS:
        return
    terminalreporter.write_sep("-", "reliability: what each fault cost (measured, not asserted)")
    terminalreporter.write_line(report.table())
    path = os.environ.get("RECSYS_RELIABILITY_REPORT")
    if path:
        report.write(path)
        terminalreporter.write_line(f"(written to {path})")
