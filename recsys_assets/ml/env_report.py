"""Reports what the merlin environment holds (runs inside it through Dagster Pipes).

Proves the runner end to end: the versions of the Merlin stack come back as materialization metadata.
Imports only dagster_pipes and what the merlin env has.
"""

from __future__ import annotations

import importlib
import platform
import sys


def collect() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("nvtabular", "merlin.models", "merlin.core", "tensorflow", "numpy", "pandas", "dask"):
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "unknown")
        except Exception as exc:  # report, do not hide: a broken import is exactly what this step exists to show
            versions[module] = f"import failed: {type(exc).__name__}: {exc}"
    return versions


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        versions = collect()
        pipes.log.info(f"merlin env: {versions}")
        broken = {k: v for k, v in versions.items() if v.startswith("import failed")}
        pipes.report_asset_materialization(
            metadata={**{f"version/{k}": v for k, v in versions.items()},
                      "executable": sys.executable, "import_failures": len(broken)}
        )
        if broken:
            raise RuntimeError(f"merlin env is incomplete: {broken}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
