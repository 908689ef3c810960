"""Codemod for issue 16's release package: rewrite imports and uses of moved modules and symbols in a tree.

    .venv/bin/python scripts/codemods/release_package.py PATH [PATH ...] [--check]

Re-runnable (a rewritten tree has nothing left to rewrite). Python files: ``from OLD import a, b`` lines (at any
depth), ``from PKG import MOD [as ALIAS]`` plus every ``ALIAS.symbol`` use (a split module's alias becomes the
new modules' names; ``rl.promote`` -> ``promotion.promote``), names renamed by the move (``_input_digest`` ->
``path_sha256``). Then, in every text file (Python, Markdown, Makefile, YAML, TOML, shell), dotted module paths and
file paths of moved modules (``recsys_assets.serving.deploy``, ``recsys_assets/serving/deploy.py``).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

RELEASE = "recsys_assets.release"
# Whole modules that moved (old dotted path -> new dotted path).
MODULES = {
    "recsys_assets.lib.triton_server": f"{RELEASE}.triton_server",
    "recsys_assets.serving.repository": f"{RELEASE}.repository",
    "recsys_assets.serving.deploy": f"{RELEASE}.deploy",
    "recsys_assets.serving.serve": f"{RELEASE}.serve",
    "recsys_assets.serving.tiny": f"{RELEASE}.tiny",
    "recsys_assets.serving.pipeline": f"{RELEASE}.pipeline",
    "recsys_assets.serving.client": f"{RELEASE}.client",
    "recsys_assets.serving.onnx_groups": f"{RELEASE}.onnx_groups",
    "tests.serving.tiny_serving": "tests.release.tiny_serving",
    "tests.serving.test_serving_repository": "tests.release.test_repository",
    "tests.serving.test_onnx_groups": "tests.release.test_onnx_groups",
}
_RELEASES = {
    "repository": ("ReleaseError alias parse_alias repository_lock version_dir trained_from_release "
                   "defaults_from_release start_date_of canonical_ensemble assemble_candidate write_aliases "
                   "write_served_ensemble write_served served_release_of _drop_stale_aliases"),
    "records": ("KINDS STATUSES now ReleaseRecord ServedState manifests manifest records record write_record "
                "served_state write_served_state next_release pending_candidates _jsonable"),
    "promotion": "PromotionError SwitchReport answer promote serve_release verify _unload _short _ready_models",
    "scoring": ("ReleaseScorer EvaluationSlice held_out_sessions evaluation_slice popularity_scores evaluate "
                "gate"),
    "lineage": "VARIANTS lineage_of",
}
_SEED_FAITHFUL_BUILDER = ("MerlinEnv probe_merlin_env make_seed_faithful SHIM SEED_FAITHFUL_STAGES "
                          "tiny_training_rows fit_tiny_workflows server_environ main _fit_and_compile PROJECT_ROOT "
                          "DEFAULT_MERLIN_ENV MERLIN_ENV_VAR")
# (old module, symbol) -> (new module, new symbol): split modules and renamed symbols.
SYMBOLS = {
    **{("recsys_assets.lib.releases", name): (f"{RELEASE}.{module}", name)
       for module, names in _RELEASES.items() for name in names.split()},
    ("recsys_assets.lib.releases", "file_digest"): ("recsys_assets.lib.digests", "path_sha256"),
    **{("recsys_assets.serving.seed_faithful", name): (f"{RELEASE}.seed_faithful", name)
       for name in _SEED_FAITHFUL_BUILDER.split()},
    ("recsys_assets.serving.repository", "_header"): (f"{RELEASE}.repository", "config_header"),
    ("recsys_assets.serving.repository", "_served_versions"): (f"{RELEASE}.repository", "served_versions"),
    ("recsys_assets.serving.repository", "_input_digest"): ("recsys_assets.lib.digests", "path_sha256"),
    ("recsys_assets.serving.repository", "_file_digest"): ("recsys_assets.lib.digests", "file_sha256"),
    ("recsys_assets.lib.triton_server", "_pytriton_dir"): (f"{RELEASE}.triton_server", "pytriton_dir"),
    ("recsys_assets.lib.daily", "file_digest"): ("recsys_assets.lib.digests", "file_sha256"),
}
# Modules that split: a symbol not in SYMBOLS goes to (or stays in) the module named here.
SPLIT = {"recsys_assets.lib.releases": f"{RELEASE}.repository", "recsys_assets.serving.seed_faithful": "recsys_assets.serving.seed_faithful",
         "recsys_assets.lib.daily": "recsys_assets.lib.daily"}
SKIP_MARK = "codemod: leave this file"
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".sh", ".pbtxt", ""}


def new_location(module: str, name: str) -> tuple[str, str]:
    if (module, name) in SYMBOLS:
        return SYMBOLS[(module, name)]
    if module in SPLIT:
        if SPLIT[module] is None:
            raise KeyError(f"{module}.{name} has no new home in the codemod's map: add it to SYMBOLS")
        return SPLIT[module], name
    return MODULES.get(module, module), name


def _moved(module: str) -> bool:
    return module in MODULES or module in SPLIT or any(m == module for m, _ in SYMBOLS)


def _offsets(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def _span(node, starts) -> tuple[int, int]:
    return starts[node.lineno - 1] + node.col_offset, starts[node.end_lineno - 1] + node.end_col_offset


def _scope_of(tree) -> dict:
    """Each node -> the innermost function (or the module) holding it."""
    owner = {}

    def walk(node, scope):
        for child in ast.iter_child_nodes(node):
            owner[child] = scope
            walk(child, child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope)

    walk(tree, tree)
    return owner


def _identifiers(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
    return found


def _import_lines(groups: dict, indent: str) -> str:
    """``{module: [(name, asname)]}`` -> ``from module import a, b as c`` lines, one per module."""
    lines = []
    for module in sorted(groups):
        names = ", ".join(n if a in (None, n) else f"{n} as {a}" for n, a in sorted(set(groups[module])))
        line = f"from {module} import {names}"
        if len(indent) + len(line) > 120:
            line = f"from {module} import (\n" + "".join(f"{indent}    {n},\n" for n in names.split(", ")) + indent + ")"
        lines.append(line)
    return ("\n" + indent).join(lines)


def rewrite_python(text: str) -> str:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    starts = _offsets(text)
    owner = _scope_of(tree)
    taken = _identifiers(tree)
    edits = []
    renamed_names = {}  # local name -> new local name (from-imports of renamed symbols)
    targets = {}        # module alias -> {new module: local name it is imported under}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        indent = " " * node.col_offset
        groups: dict = {}
        changed = False
        for item in node.names:
            full = f"{node.module}.{item.name}"
            local = item.asname or item.name
            if _moved(node.module):
                new_module, new_name = new_location(node.module, item.name)
                groups.setdefault(new_module, []).append((new_name, item.asname))
                if item.asname is None and new_name != item.name:
                    renamed_names[item.name] = new_name
                changed |= (new_module, new_name) != (node.module, item.name)
                continue
            if not _moved(full):
                groups.setdefault(node.module, []).append((item.name, item.asname))
                continue
            scope = owner.get(node, tree)
            used = {a.attr for a in ast.walk(scope) if isinstance(a, ast.Attribute)
                    and isinstance(a.value, ast.Name) and a.value.id == local}
            bare = any(isinstance(n, ast.Name) and n.id == local and not _is_attr_base(n, scope)
                                for n in ast.walk(scope))
            home = SPLIT.get(full, MODULES.get(full, full))
            homes = {new_location(full, attr)[0] for attr in used}
            if home is not None and (bare or home in homes or not used):
                homes.add(home)
            mapping = targets.setdefault(local, {})
            for new_module in sorted(homes, key=lambda m: m != home):
                name = new_module.rpartition(".")[2]
                if new_module in mapping:  # the same alias imported again in another function
                    groups.setdefault(new_module.rpartition(".")[0], []).append(
                        (name, None if mapping[new_module] == name else mapping[new_module]))
                    continue
                if new_module == home and (full in MODULES or home == full):  # moved whole, or stays: same name
                    as_name = item.asname
                elif len(homes) == 1 and home not in homes and item.asname is None and name == item.name:
                    as_name = None  # the only new home has the old name: keep it
                else:
                    as_name = f"release_{name}" if (name in taken or name == local and home in homes) else None
                mapping[new_module] = as_name or name
                taken.add(as_name or name)
                groups.setdefault(new_module.rpartition(".")[0], []).append((name, as_name))
            changed |= homes != {full}
        if changed:
            edits.append((*_span(node, starts), _import_lines(groups, indent)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in targets:
            local = node.value.id
            old = _alias_of(tree, local)
            if old is None:
                continue
            new_module, new_name = new_location(old, node.attr)
            target = targets[local].get(new_module, local)
            if (target, new_name) != (local, node.attr):
                edits.append((*_span(node, starts), f"{target}.{new_name}"))
        elif isinstance(node, ast.Name) and node.id in renamed_names:
            edits.append((*_span(node, starts), renamed_names[node.id]))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _alias_of(tree, local: str) -> str | None:
    """The moved module ``local`` is bound to by a ``from PKG import MOD [as local]`` in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for item in node.names:
                if (item.asname or item.name) == local and _moved(f"{node.module}.{item.name}"):
                    return f"{node.module}.{item.name}"
    return None


def _is_attr_base(name_node, scope) -> bool:
    return any(isinstance(a, ast.Attribute) and a.value is name_node for a in ast.walk(scope))


def _module_local(name: str, identifiers: set[str]) -> str | None:
    """The local name a new module is imported under: its own, or ``release_<name>`` where the file already
    uses that name for something else (a local variable ``lineage``)."""
    return f"release_{name}" if name in identifiers else None


def _module_local_name(name: str, identifiers: set[str]) -> str:
    return _module_local(name, identifiers) or name


def rewrite_text(text: str) -> str:
    """Dotted and file paths of moved modules, in code strings and documentation."""
    for (old, name), (new, new_name) in SYMBOLS.items():
        new_short = new.split(".", 1)[1]
        text = re.sub(rf"(?<![\w.])(recsys_assets\.)?{re.escape(old.split('.', 1)[1])}\.{name}(?!\w)",
                      lambda m, new_short=new_short, new_name=new_name: (m.group(1) or "") + f"{new_short}.{new_name}",
                      text)
    for old, new in MODULES.items():
        old_short, new_short = old.split(".", 1)[1], new.split(".", 1)[1]
        if old.startswith("recsys_assets."):
            text = re.sub(rf"(?<![\w.])(recsys_assets\.)?{re.escape(old_short)}(?!\w)",
                          lambda m, new_short=new_short: (m.group(1) or "") + new_short, text)
        else:
            text = re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, text)
        text = re.sub(rf"(?<![\w.]){re.escape(old.replace('.', '/'))}\.py", new.replace(".", "/") + ".py", text)
        text = re.sub(rf"(?<![\w]){re.escape(old_short.replace('.', '/'))}\.py(?!\w)",
                      new_short.replace(".", "/") + ".py", text)
    text = re.sub(r"(?<![\w.])(recsys_assets\.)?lib\.releases(?!\w)", lambda m: (m.group(1) or "") + "release", text)
    text = re.sub(r"(?<![\w])lib/releases\.py", "release/", text)
    return text


def rewrite_strings(text: str) -> str:
    """:func:`rewrite_text` applied to the string literals and comments of Python source only (in code, a name
    such as ``serving.deploy`` may be an attribute of something else)."""
    import io
    import tokenize

    starts = _offsets(text)
    edits = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.STRING, tokenize.COMMENT) or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
                new = rewrite_text(token.string)
                if new != token.string:
                    start = starts[token.start[0] - 1] + token.start[1]
                    end = starts[token.end[0] - 1] + token.end[1]
                    edits.append((start, end, new))
    except (tokenize.TokenError, SyntaxError):
        return text
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def rewritten(path: Path, text: str) -> str:
    if path.suffix == ".py":
        return rewrite_strings(rewrite_python(text))
    return rewrite_text(text)


def rewrite(path: Path) -> bool:
    text = path.read_text()
    new = rewritten(path, text)
    if new != text:
        path.write_text(new)
        return True
    return False


def files(roots: list[Path]):
    skip = {".git", ".venv", ".venv-merlin", "node_modules", "__pycache__", "artifacts"}
    for root in roots:
        if root.is_file():
            yield root
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not skip & set(path.parts) and (path.suffix in TEXT_SUFFIXES
                                                                  or path.name == "Makefile"):
                if path.resolve() == Path(__file__).resolve():
                    continue
                yield path


def main(argv: list[str]) -> int:
    check = "--check" in argv
    roots = [Path(a) for a in argv if a != "--check"]
    if not roots:
        print(__doc__, file=sys.stderr)
        return 2
    changed = []
    for path in files(roots):
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if SKIP_MARK in text[:1000]:  # a file that quotes the old layout on purpose (the codemod's own tests)
            continue
        if check:
            new = rewritten(path, text)
            if new != text:
                changed.append(path)
        elif rewrite(path):
            changed.append(path)
    for path in changed:
        print(("would rewrite " if check else "rewrote ") + str(path))
    return 1 if check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
