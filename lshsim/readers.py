"""Reading input files: the one YAML loader and the one JSON loader of every file format.

Every reader of a file format (topology, workload, model, traffic, trace, calibration files) opens
its file through `read_text` and parses it with `load_yaml` or `load_json`, so that every format
refuses the same things the same way, with a ValueError of one line that names the file:

- a missing file, a folder given as a file, a file that cannot be read or is not UTF-8 text;
- an empty file (nothing but white space or comments);
- a syntax error: ``FILE:LINE: not valid YAML: ...`` / ``FILE:LINE: not valid JSON: ...``;
- a key given twice in one mapping (YAML) or object (JSON): ``FILE:LINE: key 'x' is given twice
  (first at line N)``; PyYAML and `json` would silently keep the last value.

The YAML loader is PyYAML's safe loader with two changes: the duplicate keys above, and a plain
(unquoted) scalar in exponent notation without a dot (``25e9``, ``1e-6``) is a float, as in YAML
1.2 (YAML 1.1 reads it as the text "25e9"). A quoted ``"25e9"`` stays text, so that the readers can
refuse a number given as a string. `dump_yaml` writes with the same rule (such a string is quoted),
so a written file reads back as it was.

>>> load_yaml(text="a: 25e9\\nb: '25e9'\\n", source="x.yaml")
{'a': 25000000000.0, 'b': '25e9'}
>>> load_yaml(text="a: 1\\nb: 2\\na: 3\\n", source="x.yaml")
Traceback (most recent call last):
...
ValueError: x.yaml:3: key 'a' is given twice (first at line 1)
>>> load_json(text='{"a": 1, "a": 2}', source="t.json")
Traceback (most recent call last):
...
ValueError: t.json: key 'a' is given twice in one object
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

__all__ = ["read_text", "load_yaml", "load_json", "dump_yaml", "UniqueKeyLoader", "YAML_FLOAT"]

#: plain scalars in exponent notation that YAML 1.1 leaves as text (no dot, or no exponent sign)
YAML_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a key given twice in one mapping and reads 25e9 as a float."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:                 # an unhashable key: the base class refuses it
                    continue
                if first is not None:
                    raise _DuplicateKey(
                        None, None, f"key {key!r} is given twice (first at line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML_FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes a string the loader would read as a float (e.g. '25e9')."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", YAML_FLOAT, list("-+0123456789."))


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of `path`; ValueError naming the file if it is missing, a folder, unreadable or not UTF-8. A UTF-8
    byte-order mark (what some Windows editors write first) is dropped, so that such a JSON or YAML file reads as
    the same file without it."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {error.strerror or error}") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_yaml(path: str | Path | None = None, *, text: str | None = None, source: str | None = None,
              what: str = "file"):
    """The YAML document of `path` (or of `text`), read by `UniqueKeyLoader`; `source` names it in
    errors (default: the path). An empty document is refused."""
    if text is None:
        if path is None:
            raise ValueError("load_yaml needs a path or a text")
        text = read_text(path, what)
    source = source if source is not None else str(path)
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)          # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = error.problem or error.context or "syntax error"
        if isinstance(error, _DuplicateKey):
            raise ValueError(f"{where}: {problem}") from None
        raise ValueError(f"{where}: not valid YAML: {_one_line(problem)}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {_one_line(error)}") from None
    except ValueError as error:   # a value the loader cannot build: an integer of more than 4,300 digits
        raise ValueError(f"{source}: not a usable YAML value: {_one_line(error)}") from None
    except RecursionError:
        raise ValueError(f"{source}: not valid YAML: nested too deeply") from None
    if data is None:
        raise ValueError(f"{source}: the file is empty (expected a YAML mapping)")
    return data


def _unique_pairs(source: str):
    def hook(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"{source}: key {key!r} is given twice in one object")
            out[key] = value
        return out
    return hook


def load_json(path: str | Path | None = None, *, text: str | None = None, source: str | None = None,
              what: str = "file"):
    """The JSON document of `path` (or of `text`); refuses duplicate keys and an empty file.
    NaN and Infinity are read as floats: each format's field checks refuse them where a number must
    be finite, naming the field."""
    if text is None:
        if path is None:
            raise ValueError("load_json needs a path or a text")
        text = read_text(path, what)
    source = source if source is not None else str(path)
    if not text.strip():
        raise ValueError(f"{source}: the file is empty (expected JSON)")
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs(source))
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        raise ValueError(f"{source}: not valid JSON: nested too deeply") from None
    except ValueError as error:   # an integer of more than 4,300 digits (Python's limit); a duplicate key names the file
        if str(error).startswith(f"{source}: "):
            raise
        raise ValueError(f"{source}: not a usable JSON value: {_one_line(error)}") from None


def dump_yaml(data, **options) -> str:
    """YAML text of `data` (safe types only) that `load_yaml` reads back as it was; options as
    `yaml.safe_dump` (default: sort_keys=False, block style)."""
    options.setdefault("sort_keys", False)
    options.setdefault("default_flow_style", False)
    return yaml.dump(data, Dumper=_Dumper, **options)
