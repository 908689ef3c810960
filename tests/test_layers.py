"""The import direction of the package's layers, checked on every module's source (``ast``: imports at any depth,
function-local ones included, since a lazy import is still a dependency).

- ``lib`` is the bottom: it imports nothing of ours above it (no serving, release, defs, api, ml);
- ``serving`` runs inside Triton: it imports only ``lib`` and ``serving``;
- ``ml`` runs in the merlin env: no dagster (``dagster_pipes`` only), nothing from defs, release or api;
- only ``defs/`` and the two entry points above it import dagster: ``definitions.py`` (the code location) and
  ``demo.py`` (the ``make demo`` command, which runs the jobs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recsys_assets"
LAYERS = ("lib", "serving", "release", "ml", "defs", "api", "data")
# layer -> the layers of ours it must not import (None: only those listed in ONLY)
FORBIDDEN = {"lib": {"serving", "release", "defs", "api", "ml", "definitions", "demo"},
             "ml": {"defs", "release", "api", "definitions", "demo"}}
ONLY = {"serving": {"lib", "serving"}}
DAGSTER_ALLOWED = ("defs", "definitions", "demo")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE)


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (or in ``source`` as if it were ``path``),
    relative ones resolved."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = ["recsys_assets", *path.relative_to(PACKAGE).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from recsys_assets import serving` names a layer as the imported name
            if module == "recsys_assets":
                found += [(node.lineno, f"recsys_assets.{alias.name}") for alias in node.names]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "recsys_assets" else None


def violations(relative: Path, imports: list[tuple[int, str]]) -> list[str]:
    """What breaks the rules in one module (``relative`` to the package) importing ``imports``."""
    layer = relative.parts[0] if len(relative.parts) > 1 else relative.stem
    out = []
    for line, module in imports:
        where = f"recsys_assets/{relative.as_posix()}:{line} imports {module}"
        top = module.split(".")[0]
        if top.startswith("dagster") and top != "dagster_pipes" and layer not in DAGSTER_ALLOWED:
            out.append(f"{where}: only defs/, definitions.py and demo.py import dagster")
        target = _layer(module)
        if target is None:
            continue
        if target in FORBIDDEN.get(layer, ()):
            out.append(f"{where}: {layer} must not import {target} (it sits above {layer})")
        if layer in ONLY and target not in ONLY[layer]:
            out.append(f"{where}: {layer} imports only {' and '.join(sorted(ONLY[layer]))}")
    return out


def test_every_module_imports_downwards_only():
    problems = [v for relative in _modules() for v in violations(relative, _imports(PACKAGE / relative))]
    assert not problems, "imports against the layer direction:\n" + "\n".join(problems)


@pytest.mark.parametrize("relative, module, broken", [
    ("lib/paths.py", "recsys_assets.serving.runtime", True),
    ("lib/paths.py", "recsys_assets.release.records", True),
    ("lib/paths.py", "recsys_assets.lib.settings", False),
    ("serving/runtime.py", "recsys_assets.release.repository", True),
    ("serving/runtime.py", "recsys_assets.ml.nvt_compile", True),
    ("serving/runtime.py", "recsys_assets.lib.settings", False),
    ("ml/dlrm.py", "dagster", True),
    ("ml/dlrm.py", "dagster_pipes", False),
    ("ml/dlrm.py", "recsys_assets.release.tiny", True),
    ("release/tiny.py", "dagster", True),
    ("release/tiny.py", "recsys_assets.ml.nvt_compile", False),
    ("api/app.py", "dagster", True),
    ("defs/serving/assets.py", "dagster", False),
    ("definitions.py", "dagster", False),
])
def test_the_rules_catch_what_they_name(relative, module, broken):
    assert bool(violations(Path(relative), [(1, module)])) is broken


def test_function_local_and_relative_imports_are_seen():
    source = "def f():\n    from ..serving import runtime\n    if True:\n        import dagster\n"
    found = _imports(PACKAGE / "lib" / "probe.py", source)
    assert (2, "recsys_assets.serving") in found and (4, "dagster") in found
    assert violations(Path("lib/probe.py"), found) != []
