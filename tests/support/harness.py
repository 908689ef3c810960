"""``benchmarks/load.py`` (the load harness) as an importable module for the tests.

The folder cannot be imported as ``benchmarks``: a dependency installs an unrelated top-level ``benchmarks``
package into site-packages, which shadows it. So the file is loaded by path, once, under its own name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"
NAME = "recsys_benchmarks_load"


def _module():
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[NAME]


load = _module()
BackgroundLoad = load.BackgroundLoad
Mix = load.Mix
Op = load.Op
Target = load.Target
summarize = load.summarize
run_load = load.run_load
check_loopback = load.check_loopback
