"""The documentation: the site builds with no broken link or anchor, the README's links (outside ``docs/``)
resolve, every file path the pages name exists, and the package table of ``docs/architecture.md`` is the
import graph of the code."""
from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify as mkdocs_slugify

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# a path into the code, optionally with ``::test_name`` (``*`` at the end: a prefix), or a bare ``::test_name``
# that continues the previous path; not inside a URL (``.../#/experiments/1/runs/``)
PATH = re.compile(r"(?<![\w/.-])((?:platform|codetr|tests|benchmarks)/[\w/*.-]*?\.py)((?:::[\w*]+)?)"
                  r"|(?<![\w.])::([\w*]+)")


def prose(text: str) -> str:
    """The text without its fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    return FENCE.sub("", text)


def github_slug(heading: str) -> str:
    """The anchor a code host gives a heading: lower case, punctuation dropped, each space a hyphen."""
    text = heading.replace("`", "").strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


def anchors(page: Path) -> tuple[set[str], set[str]]:
    """The heading anchors of ``page`` as the site (MkDocs) and as a code host name them."""
    headings = HEADING.findall(prose(page.read_text()))
    return ({mkdocs_slugify(h.replace("`", ""), "-") for h in headings}, {github_slug(h) for h in headings})


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict`` with the link, anchor and nav validation of mkdocs.yml: any broken link,
    missing anchor, absolute link or page left out of the nav is an error."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    built = sorted(p.parent.name for p in (tmp_path / "site").glob("*/index.html") if p.parent.name != "search")
    assert built == sorted(p.stem for p in DOCS.glob("*.md") if p.stem != "index")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files_and_anchors(page):
    """Every relative link resolves to a file, and its anchor to a heading under both the site's and a code
    host's naming (MkDocs checks docs/ itself; the README lies outside it)."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor:
            site, host = anchors(file)
            if anchor not in site or anchor not in host:
                broken.append(f"{target}: no heading with anchor #{anchor} (site: {anchor in site}, "
                              f"code host: {anchor in host})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_code_path_named_exists(page):
    """``platform/...py``, ``codetr/...py``, ``tests/...py`` and ``benchmarks/...py`` paths exist (a glob
    matches a file); ``tests/x.py::test_name`` names a test of that file (``test_prefix_*``: one that starts so)."""
    missing, last = [], None
    for path, test, bare in PATH.findall(page.read_text()):
        if path:
            files = sorted(REPO.glob(path)) if "*" in path else [REPO / path]
            if not files or not all(f.is_file() for f in files):
                missing.append(path)
                last = None
                continue
            last = files[0]
            test = test.removeprefix("::")
        else:
            test = bare
            if last is None:
                missing.append(f"::{bare} (no file before it)")
                continue
        if test:
            pattern = re.escape(test.removesuffix("*")) + (r"\w*" if test.endswith("*") else r"\b")
            if not re.search(rf"^\s*def {pattern}\(", last.read_text(), re.M):
                missing.append(f"{last.relative_to(REPO)}::{test}")
    assert not missing, f"{page.name} names what does not exist: {missing}"


# ------------------------------------------------------------------------------ the package map


def package_table() -> list[tuple[list[str], list[str]]]:
    """The rows of the table under "## The packages" in docs/architecture.md: (paths, imported paths)."""
    text = (DOCS / "architecture.md").read_text()
    section = text.split("## The packages", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[2])))
    return rows


@functools.lru_cache(maxsize=None)
def module_file(module: str) -> Path | None:
    """The file of a project module (``platform.train.cli`` -> platform/train/cli.py), None outside it."""
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(file: Path, tree: ast.Module) -> set[str]:
    """Every module ``file`` (parsed: ``tree``) imports, at its top or inside a function (relative imports
    resolved)."""
    package = ".".join(file.relative_to(REPO).with_suffix("").parts)
    if file.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)   # ``from codetr import engine``
    return out


def test_the_package_table_is_the_import_graph():
    """Each file of codetr/ and platform/ belongs to one row; what it imports from the project is among the
    row's listed imports (or its own row); the graph between rows has no cycle; codetr imports no Ray,
    MLflow or platform."""
    rows = package_table()
    units = {path: i for i, (paths, _) in enumerate(rows) for path in paths}

    def unit_of(file: Path) -> str | None:
        rel = file.relative_to(REPO).as_posix()
        return max((u for u in units if rel == u or (u.endswith("/") and rel.startswith(u))), key=len, default=None)

    files = sorted([*REPO.glob("codetr/**/*.py"), *REPO.glob("platform/**/*.py")])
    unmapped = [str(f.relative_to(REPO)) for f in files if unit_of(f) is None]
    assert not unmapped, f"files on no row of docs/architecture.md's package table: {unmapped}"
    wrong, edges = [], set()
    for file in files:
        source = unit_of(file)
        allowed = rows[units[source]][1]
        modules = imported_modules(file, ast.parse(file.read_text()))
        if source.startswith("codetr/"):
            outside = {m for m in modules if m.split(".")[0] in ("ray", "mlflow", "platform")}
            assert not outside, f"{file.relative_to(REPO)} imports {outside}: codetr is a plain PyTorch library"
        for module in modules:
            if module.split(".")[0] not in ("platform", "codetr"):
                continue
            target_file = module_file(module)
            target = unit_of(target_file) if target_file else None
            if target is None or units[target] == units[source]:
                continue
            edges.add((units[source], units[target]))
            if not any(target == a or (a.endswith("/") and target.startswith(a)) for a in allowed):
                wrong.append(f"{file.relative_to(REPO)} imports {module} ({target}), not in its row's imports")
    assert not wrong, "\n".join(wrong)
    # no cycle: peel off rows that import no remaining row
    remaining = set(range(len(rows)))
    while remaining:
        leaves = {u for u in remaining if not any(s == u and t in remaining for s, t in edges)}
        assert leaves, f"import cycle among {[rows[u][0] for u in remaining]}"
        remaining -= leaves
