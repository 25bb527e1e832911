"""What a user copies from the documentation exists: every `--option` of an `lshsim SUB ...` command shown in
README.md, docs/ and the data folders' READMEs is an option of that sub-command (names, not abbreviations), and
every repository path those files name (`lshsim/...`, `data/...`, `notebooks/...`, ...) is in the repository."""
from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

from lshsim.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
        "data/topologies/README.md", "data/sweeps/README.md", "data/papers/README.md", "data/tokens/README.md",
        "data/corpus/README.md", "data/measured/h200/README.md"]
#: paths the documents name on purpose although they do not exist: a sub-command a reader would add
#: (ARCHITECTURE.md's example) and the file an example call writes
NOT_FILES = {"lshsim/cli/topologies.py", "lshsim/cli/NAME.py", "data/topologies/my-h100x4.yaml",
             "notebooks/01_lsh_compression.ipynb"}   # the last: written by the jupytext command the README shows before it
TOP = r"(?:lshsim|executor|models|benchmarks|data|docs|tests|notebooks)"
PATH = re.compile(r"(?<![\w/.-])(" + TOP + r"/[\w./{},*-]*[\w*}/])")


def _subparsers():
    parser = build_parser()
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def _commands(text: str) -> list[str]:
    """Command lines of the ```bash blocks (continuations joined, comments dropped) and inline `lshsim ...`."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").split("\n"):
            if not line.lstrip().startswith("#"):
                lines.append(re.sub(r"\s#.*$", "", line))
    lines += re.findall(r"`([^`\n]*\blshsim [a-z0-9-]+[^`\n]*)`", text)
    return lines


def _invocations(line: str, subs) -> list[tuple[str, list[str]]]:
    """(sub-command, its arguments) of every lshsim call in a shell line (`launch ... -- run ...`: both)."""
    out = []
    for part in re.split(r"&&|\|\||[|;>]", line):
        tokens = part.split()
        start = next((i for i, t in enumerate(tokens)
                      if (t.endswith("lshsim") and not t.startswith("-")) or t in ("lshsim.executor", "lshsim.cli")),
                     None)
        if start is None:
            continue
        rest = tokens[start + 1:]
        while rest and rest[0].startswith("--"):                  # global options: --plugin MODULE, --version
            rest = rest[2:] if rest[0] == "--plugin" else rest[1:]
        if not rest or rest[0] not in subs:
            continue
        sub, args = rest[0], rest[1:]
        if sub == "launch" and "--" in args:
            cut = args.index("--")
            out.append(("launch", args[:cut]))
            if cut + 1 < len(args) and args[cut + 1] in subs:
                out.append((args[cut + 1], args[cut + 2:]))
        else:
            out.append((sub, args))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_documented_options_exist(doc):
    subs = _subparsers()
    known = {name: {o for action in p._actions for o in action.option_strings} for name, p in subs.items()}
    checked, bad = 0, []
    for line in _commands((ROOT / doc).read_text()):
        for sub, args in _invocations(line, subs):
            for token in args:
                if token.startswith("--") and len(token) > 2:
                    checked += 1
                    if token.split("=")[0] not in known[sub]:
                        bad.append(f"lshsim {sub} {token.split('=')[0]}  ({line.strip()[:90]})")
    assert not bad, f"{doc}: options that `lshsim SUB --help` does not have:\n" + "\n".join(bad)
    if doc == "README.md":
        assert checked > 100                                   # the extraction found the README's commands


def _expand(path: str) -> list[str]:
    """a{b,c}d -> [abd, acd], nested left to right."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [q for alt in match.group(1).split(",") for q in _expand(path[:match.start()] + alt + path[match.end():])]


@pytest.mark.parametrize("doc", DOCS)
def test_documented_paths_exist(doc):
    text = (ROOT / doc).read_text()
    missing = []
    for m in PATH.finditer(text):
        for path in _expand(m.group(1).rstrip(".")):
            if path in NOT_FILES:
                continue
            found = glob.glob(str(ROOT / path)) if "*" in path else (ROOT / path).exists()
            if not found:
                missing.append(f"{doc}:{text.count(chr(10), 0, m.start()) + 1}: {path}")
    assert not missing, "repository paths that do not exist:\n" + "\n".join(missing)


def test_the_checks_catch_a_wrong_option_and_a_wrong_path():
    subs = _subparsers()
    [(sub, args)] = _invocations("lshsim --plugin p.py plan --modle x", subs)
    assert sub == "plan" and "--modle" not in {o for a in subs["plan"]._actions for o in a.option_strings}
    assert _invocations("lshsim launch --nproc 2 -- run --workload w.yaml", subs) == \
        [("launch", ["--nproc", "2"]), ("run", ["--workload", "w.yaml"])]
    assert _expand("data/topologies/calibrated/h200-x{2,4}.yaml") == \
        ["data/topologies/calibrated/h200-x2.yaml", "data/topologies/calibrated/h200-x4.yaml"]
    assert PATH.findall("see `lshsim/sim/nowhere.py` and data/sweeps/README.md.") == \
        ["lshsim/sim/nowhere.py", "data/sweeps/README.md"]


def test_every_subcommand_and_option_has_help_text():
    """`lshsim SUB --help` explains the command (a description) and every option (`check` had no description)."""
    missing = []
    for name, sub in _subparsers().items():
        if not (sub.description or "").strip():
            missing.append(f"lshsim {name}: no description")
        missing += [f"lshsim {name} {'/'.join(a.option_strings) or a.dest}: no help"
                    for a in sub._actions if not (a.help or "").strip()]
    assert not missing, "\n".join(missing)
