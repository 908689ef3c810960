"""The README and docs/ stay true to the code: a short README, links that resolve, names that exist, and
pictures that match what Dagster loads and what Triton serves.

A failure names the file, the link or name, and what it should be; fix the page (or, when the code changed on
purpose, the page and its picture together).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250
PAGES = (README, *sorted(DOCS.glob("*.md")))
# [text](target): the target up to a space or the closing parenthesis (a title after a space is ignored)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s[^)]*)?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
MERMAID = re.compile(r"^```mermaid\n(.*?)^```", re.S | re.M)


def _prose(text: str) -> str:
    """The page without its code blocks, where `[x](y)` is code, not a link."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(page.read_text()).splitlines():
        if match := re.match(r"^#{1,6}\s+(.*)$", line):
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            anchors.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
    return anchors


def _relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(page.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not files here


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): "
                                       "move detail into a page under docs/ and link it")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            shown = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved
            broken.append(f"{target}: no file {shown}")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path):
    """The checker itself: a missing file and a missing anchor are caught, a good link and a URL are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading (with punctuation)\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-code-heading-with-punctuation) [web](https://example.com/x)\n"
                    "[gone](missing.md) [bad anchor](other.md#nothing)\n```\n[in code](nowhere.md)\n```\n")
    links = _relative_links(page)
    assert links == ["other.md#a-code-heading-with-punctuation", "missing.md", "other.md#nothing"]
    assert "a-code-heading-with-punctuation" in _anchors(tmp_path / "other.md")
    assert "nothing" not in _anchors(tmp_path / "other.md")


def _code_text() -> str:
    sources = [*ROOT.joinpath("recsys_assets").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py"),
               *ROOT.joinpath("benchmarks").glob("*.py"), *ROOT.joinpath("scripts").rglob("*.sh"),
               ROOT / "Makefile", *ROOT.joinpath("infra").rglob("*.yaml"),
               *ROOT.joinpath("feature_repo").glob("*")]
    return "\n".join(p.read_text(errors="replace") for p in sources if p.is_file() and p != Path(__file__))


def test_every_setting_named_in_the_docs_exists_in_the_code():
    code = set(re.findall(r"RECSYS_[A-Z0-9_]+", _code_text()))
    named = {(page.relative_to(ROOT), name) for page in PAGES for name in re.findall(r"RECSYS_[A-Z0-9_]+",
                                                                                       page.read_text())}
    unknown = sorted(f"{page}: {name}" for page, name in named
                     if name not in code and not name.endswith("_"))  # `RECSYS_API_*`-style families
    assert not unknown, "settings the code does not read (renamed or removed?):\n" + "\n".join(unknown)


def _snapshot() -> dict:
    """ASSETS, JOBS, SCHEDULES and SENSORS of tests/defs/test_definitions.py, read without importing it."""
    tree = ast.parse((ROOT / "tests" / "defs" / "test_definitions.py").read_text())
    wanted = {"ASSETS", "JOBS", "SCHEDULES", "SENSORS"}
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in wanted}


def test_every_job_schedule_and_sensor_named_in_the_docs_exists():
    snapshot = _snapshot()
    known = set(snapshot["JOBS"]) | set(snapshot["SCHEDULES"]) | set(snapshot["SENSORS"])
    unknown = sorted({f"{page.relative_to(ROOT)}: {name}" for page in PAGES
                      for name in re.findall(r"`([a-z_]+_(?:job|schedule|sensor))`", page.read_text())
                      if name not in known})
    assert not unknown, ("names of jobs, schedules or sensors the code location does not define "
                         "(tests/defs/test_definitions.py):\n" + "\n".join(unknown))


def _mermaid(page: Path, index: int = 0) -> str:
    blocks = MERMAID.findall(page.read_text())
    assert len(blocks) > index, f"{page.relative_to(ROOT)} lost its mermaid diagram #{index + 1}"
    return blocks[index]


def _edges(diagram: str) -> set[tuple[str, str]]:
    """`a & b --> c --> d` lines as (source, target) pairs; node labels (`a["..."]`) are dropped."""
    edges = set()
    for line in diagram.splitlines():
        if "-->" not in line:
            continue
        stages = [[re.sub(r"\[.*$", "", n.strip()) for n in part.split("&")] for part in line.split("-->")]
        for sources, targets in zip(stages, stages[1:]):
            edges |= {(s, t) for s in sources for t in targets}
    return edges


def test_the_readme_groups_are_the_code_locations_groups():
    """Each group box of the README's asset picture lists exactly that group's assets (`*`: daily)."""
    boxes = dict(re.findall(r'^\s*(\w+)\["\w+: ([^"]*)"\]', _mermaid(README, 0), re.M))
    drawn = {group: {a.strip().rstrip("*") for a in assets.split(",")} for group, assets in boxes.items()}
    assert drawn == _snapshot()["ASSETS"], "README.md's asset picture: groups differ from test_definitions.py"


def test_the_pictures_of_the_asset_graph_match_the_loaded_definitions():
    from recsys_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    nodes = {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}
    edges = {(parent.to_user_string(), name) for name, node in nodes.items() for parent in node.parent_keys}
    group = {name: node.group_name for name, node in nodes.items()}

    full = _mermaid(DOCS / "architecture.md")
    drawn_groups = {}
    current = None
    for line in full.splitlines():
        if match := re.match(r"^\s*subgraph (\w+)", line):
            current = match.group(1)
        elif line.strip() == "end":
            current = None
        elif current and (match := re.match(r"^\s*(\w+)", line)):
            drawn_groups[match.group(1)] = current
    assert drawn_groups == group, "docs/architecture.md's asset graph: assets or groups differ from the code"
    assert _edges(full) == edges, (f"docs/architecture.md's asset graph: edges differ; missing "
                                   f"{sorted(edges - _edges(full))}, extra {sorted(_edges(full) - edges)}")

    group_edges = {(group[a], group[b]) for a, b in edges if group[a] != group[b]}
    readme = _edges(_mermaid(README, 0))
    assert readme == group_edges, (f"README.md's group picture: missing {sorted(group_edges - readme)}, "
                                   f"extra {sorted(readme - group_edges)}")


def test_the_picture_of_the_serving_graph_is_the_ensemble():
    """README's serving picture: an edge wherever a step reads a tensor that another step (or the request)
    produced."""
    config = (ROOT / "triton_repo" / "ensemble_model" / "config.pbtxt").read_text()
    producer, edges = {}, set()
    for name, body in re.findall(r'model_name:\s*"(\w+)"(.*?)(?=model_name:|\Z)', config, re.S):
        for tensor in re.findall(r'input_map\s*{\s*key:\s*"\w+"\s*value:\s*"(\w+)"', body):
            edges.add((producer.get(tensor, "request"), name))
        for tensor in re.findall(r'output_map\s*{\s*key:\s*"\w+"\s*value:\s*"(\w+)"', body):
            producer[tensor] = name
    steps = {name for _, name in edges}
    assert steps == {p.name for p in (ROOT / "triton_repo").iterdir() if p.is_dir()} - {"ensemble_model"}
    drawn = _edges(_mermaid(README, 1))
    assert drawn == edges, (f"README.md's serving picture: missing {sorted(edges - drawn)}, "
                            f"extra {sorted(drawn - edges)}")
