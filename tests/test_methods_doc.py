"""Citations of docs/methods.md resolve: every ``docs/methods.md, "<section>"`` in the package, the tests, the
README, benchmarks/ and configs/ names a heading of docs/methods.md, and nothing points at a design document
outside the repository (docs/methods.md, "How to cite a section")."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"

#: a citation: methods.md, then a comma and the section name in quotes (an escaped quote inside a Python string too)
CITATION = re.compile(r"methods\.md,\s*\\?[\"']([^\"'\\\n]+)\\?[\"']")
#: references that leave the repository
OUTSIDE = re.compile(r"shared/design|\.\./shared|shared/papers|architecture\.md|papers/[\w-]+\.txt")


def headings(text: str) -> list[str]:
    """The text of every Markdown heading (outside fenced code blocks)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            out.append(m.group(1))
    return out


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def citations(text: str) -> list[str]:
    return [" ".join(m.group(1).split()) for m in CITATION.finditer(text)]


def bad_citations(text: str, sections: set[str]) -> list[str]:
    """The cited section names of ``text`` that are not headings (compared case-insensitively)."""
    keys = {_key(s) for s in sections}
    return [c for c in citations(text) if _key(c) not in keys]


def split_citations(text: str) -> list[str]:
    """Citations whose section name does not close on the line it opens on (the checks above would miss them)."""
    return [m.group(0).strip() for m in re.finditer(r"methods\.md,\s*\\?[\"'][^\"'\n]*\n", text)]


def bare_mentions(text: str) -> list[str]:
    """Lines that mention methods.md other than as ``docs/methods.md``."""
    return [line.strip() for line in text.splitlines() if re.search(r"(?<!docs/)\bmethods\.md", line)]


def uncited_mentions(text: str) -> list[str]:
    """Lines of package code that mention docs/methods.md without naming a section right after it."""
    return [line.strip() for line in text.splitlines()
            if re.search(r"docs/methods\.md(?!,\s*\\?[\"'])", line)]


def _files(*patterns: str) -> list[Path]:
    out: list[Path] = []
    for pattern in patterns:
        out += sorted(p for p in ROOT.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return out


PACKAGE = _files("densekd/**/*.py", "densekd/**/*.yaml")
#: everything else that may cite the document (not the document itself, nor this file's made-up examples)
OTHERS = [p for p in _files("README.md", "tests/**/*.py", "benchmarks/**/*.py", "benchmarks/**/*.md",
                            "benchmarks/**/*.sh", "configs/**/*.yaml", "configs/**/*.md", "docs/**/*.md")
          if p not in (DOC, Path(__file__).resolve())]


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.fixture(scope="module")
def sections() -> set[str]:
    return set(headings(DOC.read_text(encoding="utf-8")))


def test_headings_are_unique():
    names = [_key(h) for h in headings(DOC.read_text(encoding="utf-8"))]
    assert len(names) > 20
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_every_citation_names_a_heading(sections):
    bad = {_rel(p): b for p in PACKAGE + OTHERS if (b := bad_citations(p.read_text(encoding="utf-8"), sections))}
    assert bad == {}, f"citations of docs/methods.md that name no heading there: {bad}"
    split = {_rel(p): s for p in PACKAGE + OTHERS if (s := split_citations(p.read_text(encoding="utf-8")))}
    assert split == {}, f"keep each citation on one line: {split}"


def test_the_package_cites_sections_and_only_as_docs_methods_md():
    found = {_rel(p): citations(t) for p in PACKAGE if (t := p.read_text(encoding="utf-8"))}
    assert sum(len(c) for c in found.values()) >= 20  # the package does cite the document (not vacuous)
    bare = {_rel(p): b for p in PACKAGE + OTHERS
            if (b := bare_mentions(p.read_text(encoding="utf-8")))}
    assert bare == {}, f"write docs/methods.md, not methods.md: {bare}"
    uncited = {_rel(p): u for p in PACKAGE if (u := uncited_mentions(p.read_text(encoding="utf-8")))}
    assert uncited == {}, f"the package must name a section when it cites docs/methods.md: {uncited}"


def test_nothing_points_outside_the_repository():
    outside = {_rel(p): [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if OUTSIDE.search(ln)]
               for p in PACKAGE + OTHERS + [DOC]}
    assert {k: v for k, v in outside.items() if v} == {}


def test_the_readme_links_the_document():
    assert "](docs/methods.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_checks_catch_what_they_are_for():
    """The parsers on made-up text: a misspelt section, a bare methods.md and a section-less citation are found."""
    sections = {"Optimisation of the mask modules", "STCA-FF"}
    text = ('see docs/methods.md, "Optimisation of the mask modules" and docs/methods.md, "STCA-FF"\n'
            'f"... (docs/methods.md, \\"optimisation of  the mask modules\\")"\n'
            "docs/methods.md, 'Optimisation of the masks'\n")
    assert citations(text) == ["Optimisation of the mask modules", "STCA-FF", "optimisation of the mask modules",
                               "Optimisation of the masks"]
    assert bad_citations(text, sections) == ["Optimisation of the masks"]
    assert split_citations('docs/methods.md, "Optimisation of the\n    mask modules"') == [
        'methods.md, "Optimisation of the']
    assert bare_mentions("see methods.md, \"STCA-FF\"\nsee docs/methods.md, \"STCA-FF\"") == ['see methods.md, "STCA-FF"']
    assert uncited_mentions("(docs/methods.md)\n(docs/methods.md, \"STCA-FF\")") == ["(docs/methods.md)"]
    assert headings("# A\n```\n# not a heading\n```\n### B c ###\n") == ["A", "B c"]
