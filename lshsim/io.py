"""Every output file of lshsim and the executor, written whole, and the one rule for output paths.

**Written whole.** `write_text_atomically`, `write_bytes_atomically` and `atomic_output` (a context
manager for writers that need a file object or a path: `json.dump`, matplotlib's `savefig`) write to
a temporary file in the destination's own folder (``.NAME.PID.tmp``), flush it, `os.fsync` it and
`os.replace` it onto the destination. A reader sees the old file or the whole new one, never a part;
an error or an interruption while writing (a full disk, Ctrl-C) leaves the old file as it was and
removes the temporary file. A destination that is a symbolic link keeps its link: the file it points
to is replaced. A writer killed outright (SIGKILL) cannot remove its temporary file: the
next write of the same file removes it (`remove_stale_temporaries`, by the dead writer's PID).

**Appended, durably** (`append_durably`): the one exception to "written whole", for a table that
grows by records and must survive an interruption (`lshsim sweep`'s resumable CSV). Each `write` is
flushed and fsynced before it returns, so an interrupted run leaves whole records plus at most one
cut last line, which the reader drops.

**The output rule** (`prepare_output`, `prepare_output_dir`), the same for every command, checked
before any work starts (before a simulation, a measurement or a run):

- the folder of an output file (and an output folder such as `--out-dir`) is created, with its
  parents, if it does not exist;
- a path that cannot be created or written to, an output file that is an existing folder or an existing
  device, named pipe or socket (`/dev/null`, `/dev/stdout`: the rename would replace it), or an output
  folder that is an existing file, is refused with a ValueError naming the option and the path
  (the command line turns it into exit code 2).

**Names from inputs** (a workload's name becomes ``NAME.json`` under `--out-dir`) never leave the
output folder: `path_in_folder` resolves the joined path and refuses one outside the folder.

>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> path = write_text_atomically(os.path.join(folder, "a.txt"), "whole\\n")
>>> open(path).read(), sorted(os.listdir(folder))
('whole\\n', ['a.txt'])
>>> path_in_folder(folder, "../x.json", "--out-dir")
Traceback (most recent call last):
...
ValueError: --out-dir: the file name '../x.json' leaves the output folder ...
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["check_distinct_outputs", "write_text_atomically", "write_bytes_atomically", "atomic_output", "append_durably",
           "remove_stale_temporaries",
           "prepare_output", "prepare_output_dir", "path_in_folder", "OUTPUT_RULE"]

#: one sentence for --help texts
OUTPUT_RULE = "its folder is created if missing; checked before any work"


def _not_a_regular_file(path: Path) -> str | None:
    """What `path` is when it exists and is neither a regular file nor a folder (after symbolic links):
    'a character device' (/dev/null), 'a named pipe', 'a socket' or 'a block device'; else None. An
    output is renamed onto its path, which would replace such a node (as root, /dev/null itself) with a
    regular file: it is refused instead."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a character device" if stat.S_ISCHR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a block device" if stat.S_ISBLK(mode) else "not a regular file")


def _refuse_special(path: Path, option: str) -> None:
    kind = _not_a_regular_file(path)
    if kind is not None:
        raise ValueError(f"{option} {path}: is {kind}, not a regular file (an output is a temporary file renamed "
                         f"onto its path, which would replace it); give a file name")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # it exists but belongs to someone else
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files ``.NAME.PID.tmp`` of `path` left by a writer that was killed
    (SIGKILL cannot be caught) and whose process no longer exists; a live writer's file is kept.
    Called before every atomic write of `path`; returns what it removed."""
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        pid = candidate.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a platform without directory file descriptors skips it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator:
    """`with atomic_output(path) as handle:` write through `handle`; on a normal exit the temporary
    file is flushed, fsynced and renamed onto `path`; on an exception it is removed and `path` is
    left as it was. `mode` is "w" (text) or "wb" (bytes: e.g. `fig.savefig(handle, format="png")`).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output: mode={mode!r} must be 'w' or 'wb'")
    path = Path(path)
    _refuse_special(path, "output")
    if path.is_symlink():           # replace the link's target, not the link
        path = Path(os.path.realpath(path))
    temporary = _temporary(path)
    remove_stale_temporaries(path)
    try:
        with open(temporary, mode, **({} if "b" in mode else {"encoding": encoding})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(path.parent)


class _DurableAppender:
    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, text: str) -> None:
        """Append `text` and return once it is on disk (flush + fsync)."""
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())


@contextlib.contextmanager
def append_durably(path: str | Path, *, encoding: str = "utf-8") -> Iterator[_DurableAppender]:
    r"""A file opened for appending whose every `write(text)` is on disk when it returns (module docstring).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> with append_durably(path) as table:
    ...     table.write("a,b\n")
    >>> with append_durably(path) as table:
    ...     table.write("1,2\n")
    >>> open(path).read()
    'a,b\n1,2\n'
    """
    with open(path, "a", encoding=encoding, newline="") as handle:
        yield _DurableAppender(handle)


def write_text_atomically(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` whole (module docstring); returns the path."""
    with atomic_output(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` whole (module docstring); returns the path."""
    with atomic_output(path, "wb") as handle:
        handle.write(data)
    return Path(path)


#: folders the output checks created in this process, deepest first per check: a command refused after
#: its output check removes those still empty (`remove_created_empty_folders`), so that a refusal leaves
#: nothing behind
CREATED_FOLDERS: list[Path] = []


def remove_created_empty_folders() -> None:
    """Remove the folders the output checks created (CREATED_FOLDERS) that are still empty; keep the rest."""
    while CREATED_FOLDERS:
        folder = CREATED_FOLDERS.pop(0)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder; a parent after its child


def _writable_folder(folder: Path, option: str, target: str | None = None) -> None:
    """Create `folder` (with its parents) if missing and check that it is writable; `target` is the output
    file in it, for the message."""
    named = f"{option} {target}: the folder {folder}" if target else f"{option} {folder}:"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{named} is a file, not a folder")
    for parent in folder.parents:          # a file in the way higher up: say which
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{named} cannot be created: {parent} is a file, not a folder")
            break
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{named} cannot be created ({error.strerror or error})") from None
    CREATED_FOLDERS.extend(missing)  # deepest first
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{named} is not writable")
    # os.access says yes to root everywhere, also where no file can be made (/proc, a read-only mount):
    # make (and remove) a file there, so that the refusal comes now, not after the work
    try:
        handle, probe = tempfile.mkstemp(prefix=".lshsim-probe-", suffix=".tmp", dir=folder)
    except OSError as error:
        raise ValueError(f"{named} is not writable ({error.strerror or error})") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def prepare_output(path: str | Path | None, option: str) -> Path | None:
    """Check an output FILE before any work (module docstring: the output rule); None passes through.

    >>> prepare_output(None, "--plot") is None
    True
    """
    if path is None:
        return None
    text = str(path)
    if not text.strip():
        raise ValueError(f"{option} {text!r}: an empty file name")
    path = Path(text)
    if path.is_dir() or text.endswith(os.sep):
        raise ValueError(f"{option} {text}: is a folder; give a file name")
    _refuse_special(path, option)
    _writable_folder(path.parent if str(path.parent) else Path("."), option, text)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {text}: the file exists and is not writable")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_distinct_outputs(outputs, inputs=()) -> None:
    """Refuse, before any work, two outputs onto one file and an output onto a file the command reads.

    `outputs`, `inputs`: (option, path) pairs; a None path is skipped, and so is an input that is no existing
    file (a catalog name such as a model or topology name). Written whole, the later output replaced the earlier
    one (`plan --plot p.json --trace p.json`: exit 0, one of them lost), and an output onto an input replaced the
    input (`plan --model m.json --plot m.json` wrote a PNG over the model).

    >>> check_distinct_outputs([("--plot", "a.png"), ("--trace", "./a.png")])
    Traceback (most recent call last):
    ...
    ValueError: --plot and --trace name the same file a.png: give each output its own file
    """
    named = [(option, Path(str(path))) for option, path in outputs if path is not None and str(path).strip()]
    for i, (first, a) in enumerate(named):
        for second, b in named[i + 1:]:
            if _same_file(a, b):
                raise ValueError(f"{first} and {second} name the same file {a}: give each output its own file")
    for in_option, given in inputs:
        if given is None:
            continue
        source = Path(str(given))
        if not source.is_file():
            continue
        for option, path in named:
            if _same_file(path, source):
                raise ValueError(f"{option} {path}: is the file {in_option} reads ({given}); writing it would "
                                 f"replace that input: give the output another name")


def prepare_output_dir(folder: str | Path | None, option: str) -> Path | None:
    """Check an output FOLDER before any work: created if missing, must be writable (the output rule)."""
    if folder is None:
        return None
    text = str(folder)
    if not text.strip():
        raise ValueError(f"{option} {text!r}: an empty folder name")
    _writable_folder(Path(text), option)
    return Path(text)


def path_in_folder(folder: str | Path, name: str, option: str) -> Path:
    """`folder / name`, refused (ValueError naming `option`) if it resolves outside `folder`, e.g.
    a name with '..' or an absolute name, or if `name` is empty."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{option}: the file name {name!r} is not a usable file name")
    base = Path(folder).resolve()
    target = (base / name).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"{option}: the file name {name!r} leaves the output folder {str(folder)!r} "
                         f"(it resolves to {str(target)!r})")
    return Path(folder) / name
