"""Links into benchmarks/RESULTS.md and benchmarks/HISTORY.md resolve: every link to an anchor of either file
anywhere in the repository's text files names a heading of that file (GitHub's anchor rule), every in-file `(#anchor)` link of the two files (their Contents) does too, every `## ` section of
HISTORY.md is listed in its Contents, and a reference by quoted section name ("benchmarks/RESULTS.md,
"Real tokens"") names a heading that exists in the file it names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DOCS = {"RESULTS.md": BENCH / "RESULTS.md", "HISTORY.md": BENCH / "HISTORY.md"}
SKIP_DIRS = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints", "_run"}
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".txt", ".cfg", ".toml"}


def github_anchor(heading: str) -> str:
    """GitHub's rule: lowercase, drop every character but letters, digits, '_', '-' and spaces, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text: str, level: int | None = None) -> list[str]:
    """The Markdown headings outside fenced code blocks, in order (only those of `level` if given)."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"(#{1,6}) +(.*?) *#*$", line)
        if m and not fenced and level in (None, len(m.group(1))):
            out.append(m.group(2))
    return out


def anchors(text: str) -> set[str]:
    """Every anchor of the file, the second and later equal headings getting GitHub's -1, -2 suffixes."""
    seen: dict[str, int] = {}
    out = set()
    for h in headings(text):
        a = github_anchor(h)
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    return out


def _text_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size < 4_000_000:
            yield path


LINK = re.compile(r"(?<![\w/.-])((?:\.\./)*(?:benchmarks/)?(RESULTS|HISTORY)\.md)#([^\s)\]>\"'`,;]+)")
NAMED = re.compile(r"\b(RESULTS|HISTORY)\.md,? +(?:section +)?\"([^\"]{3,200})\"")


@pytest.fixture(scope="module")
def doc_text():
    return {name: path.read_text() for name, path in DOCS.items()}


def test_anchor_rule_on_known_headings():
    assert github_anchor("Issue 14: the p6-b300 topologies' PCIe, Gen5 -> Gen6 (branch b300pcie, 2026-12-01)") == \
        "issue-14-the-p6-b300-topologies-pcie-gen5---gen6-branch-b300pcie-2026-12-01"
    assert github_anchor("LocMoE's ec_min is a count of tokens (branch ecmin, 2026-12-02)") == \
        "locmoes-ec_min-is-a-count-of-tokens-branch-ecmin-2026-12-02"
    assert github_anchor("Issue 11: the LSH layer without its T*k-row send gather") == \
        "issue-11-the-lsh-layer-without-its-tk-row-send-gather"
    assert anchors("## A\n```\n## B\n```\n### A\n") == {"a", "a-1"}


def test_cross_file_links_resolve(doc_text):
    files = {name: anchors(text) for name, text in doc_text.items()}
    bad, n = [], 0
    for path in _text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for m in LINK.finditer(text):
            n += 1
            if m.group(3) not in files[f"{m.group(2)}.md"]:
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert n > 0
    assert not bad, "links to no heading:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", sorted(DOCS))
def test_in_file_links_and_contents_resolve(doc_text, name):
    text = doc_text[name]
    own = anchors(text)
    links = re.findall(r"\]\(#([^)\s]+)\)", text)
    assert len(links) >= 10                                    # the Contents at least
    missing = [a for a in links if a not in own]
    assert not missing, f"{name}: in-file links to no heading: {missing}"


def test_history_contents_lists_every_section(doc_text):
    text = doc_text["HISTORY.md"]
    contents = text.split("\n## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)\s]+)\)", contents))
    sections = [h for h in headings(text, level=2) if h != "Contents"]
    unlisted = [h for h in sections if github_anchor(h) not in listed]
    assert len(sections) > 50 and not unlisted, f"HISTORY.md sections not in its Contents: {unlisted}"


def test_references_by_section_name_exist(doc_text):
    heads = {name: [" ".join(h.lower().split()) for h in headings(text)] for name, text in doc_text.items()}
    bad, n = [], 0
    for path in _text_files():
        if path.name in DOCS and path.parent == BENCH:
            continue
        try:
            text = " ".join(path.read_text().replace("#", " ").split())   # quotes broken over comment lines
        except UnicodeDecodeError:
            continue
        for m in NAMED.finditer(text):
            if "awslabs" in text[max(0, m.start() - 200):m.start()]:      # another project's RESULTS.md
                continue
            n += 1
            pieces = [p.strip().lower() for p in m.group(2).split("...") if p.strip()]
            if not any(all(p in h for p in pieces) for h in heads[f"{m.group(1)}.md"]):
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert n > 0
    assert not bad, "references to no section:\n" + "\n".join(bad)
