"""The status folder that `executor launch` shares with its ranks (torch-free).

The launcher passes the folder to every rank as `--status-dir DIR`; each rank r writes, each file
replaced atomically (a temporary file in the folder, then `os.replace`), so that the launcher never
reads half a line:

- ``rank{r}``: ``COUNT<TAB>LABEL`` -- the step the rank last reached (`lshsim.executor.runtime.Progress`);
  a rank that is alive but no longer reaches new steps (a hang in a collective) stops changing it;
- ``rank{r}.alive``: ``PID<TAB>BEATS`` -- refreshed every `heartbeat_interval_s()` by a daemon thread
  of the rank (`Heartbeat`), whatever its main thread is doing (a long computation, a blocking
  collective); a rank that is frozen (SIGSTOP, swapped out, a debugger) stops changing it;
- ``rank{r}.failed``: ``TIME<TAB>ERROR`` -- why the rank failed (`lshsim.executor.commands.report_failure`);
- ``rank{r}.stderr``: the rank's standard error (opened by the launcher);
- ``launcher``: the launcher's PID, in a folder the launcher created itself (a folder left behind by
  a launcher that was killed with SIGKILL is removed by the next launch, `sweep_stale_folders`).

The launcher also sets two environment variables of the ranks: `LSHSIM_HEARTBEAT_S` (the heartbeat
interval) and `LSHSIM_LAUNCHER_PID` (a rank whose launcher is gone ends itself at its next heartbeat,
a second line of defence behind the parent-death signal, `lshsim.executor.launch`).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import threading
from pathlib import Path

from lshsim.workers import die_with_parent  # a rank binds itself to the launcher with it (re-exported)

__all__ = ["progress_path", "heartbeat_path", "failure_path", "stderr_path", "write_atomically", "read_progress",
           "read_heartbeat", "Heartbeat", "start_heartbeat", "die_with_parent", "heartbeat_interval_s", "mark_owned",
           "sweep_stale_folders", "FOLDER_PREFIX", "HEARTBEAT_ENV", "LAUNCHER_PID_ENV", "DEFAULT_HEARTBEAT_S"]

#: prefix of the status folders the launcher creates in the temporary directory
FOLDER_PREFIX = "executor-launch-"
HEARTBEAT_ENV = "LSHSIM_HEARTBEAT_S"
LAUNCHER_PID_ENV = "LSHSIM_LAUNCHER_PID"
#: heartbeat interval of a rank when the launcher does not set one (seconds)
DEFAULT_HEARTBEAT_S = 1.0
_OWNER_FILE = "launcher"


def progress_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rank{rank}"


def heartbeat_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rank{rank}.alive"


def failure_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rank{rank}.failed"


def stderr_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rank{rank}.stderr"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one step (a status file: no fsync, it only lives as long as the run)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_progress(folder: str | Path, rank: int) -> tuple[int, str]:
    """(steps reached, label of the last one); (0, 'not started') before the first step."""
    try:
        count, label = progress_path(folder, rank).read_text().rstrip("\n").split("\t", 1)
        return int(count), label
    except (OSError, ValueError):
        return 0, "not started"


def read_heartbeat(folder: str | Path, rank: int) -> tuple[int, int] | None:
    """(pid, beats) of the rank's last heartbeat, or None before its first one."""
    try:
        pid, beats = heartbeat_path(folder, rank).read_text().split()
        return int(pid), int(beats)
    except (OSError, ValueError):
        return None


def heartbeat_interval_s() -> float:
    """The interval the launcher asked for (`LSHSIM_HEARTBEAT_S`), else `DEFAULT_HEARTBEAT_S`."""
    try:
        value = float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    except ValueError:
        return DEFAULT_HEARTBEAT_S
    return value if math.isfinite(value) and value > 0 else DEFAULT_HEARTBEAT_S


class Heartbeat:
    """A daemon thread that rewrites ``rank{r}.alive`` every `interval_s` seconds.

    With `launcher_pid`, the thread also watches its parent: once the rank's parent is no longer
    that process (the launcher died and the rank was re-parented), it kills its own rank.
    """

    def __init__(self, folder: str | Path, rank: int, interval_s: float, launcher_pid: int | None = None) -> None:
        self.path = heartbeat_path(folder, rank)
        self.interval_s = interval_s
        self.launcher_pid = launcher_pid
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lshsim-heartbeat-rank{rank}", daemon=True)

    def start(self) -> "Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, 2 * self.interval_s))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()

    def _beat(self) -> None:
        if self.launcher_pid is not None and os.getppid() != self.launcher_pid:
            os.kill(os.getpid(), signal.SIGKILL)  # orphaned: the launcher is gone, nobody waits for this rank
        self.beats += 1
        try:
            write_atomically(self.path, f"{os.getpid()}\t{self.beats}\n")
        except OSError:
            pass  # the folder is gone: the launcher has ended the run, it will end this rank too


def start_heartbeat(folder: str | Path | None, rank: int | None = None) -> Heartbeat | None:
    """Start this rank's heartbeat if it runs under a status folder (None otherwise). The rank is
    RANK from the environment unless given. Under `executor launch` (`LSHSIM_LAUNCHER_PID` set) the
    rank is first bound to the launcher's life (`die_with_parent`) and its heartbeat watches it."""
    if folder is None:
        return None
    if rank is None:
        try:
            rank = int(os.environ.get("RANK", "0"))
        except ValueError:
            rank = 0
    try:
        launcher_pid = int(os.environ[LAUNCHER_PID_ENV])
    except (KeyError, ValueError):
        launcher_pid = None
    if launcher_pid is not None:
        die_with_parent(launcher_pid)
    return Heartbeat(folder, rank, heartbeat_interval_s(), launcher_pid).start()


def mark_owned(folder: str | Path) -> None:
    """Note in a folder the launcher created that this process owns it (`sweep_stale_folders`)."""
    write_atomically(Path(folder) / _OWNER_FILE, f"{os.getpid()}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_folders(parent: str | Path) -> list[Path]:
    """Remove the launcher's status folders in `parent` whose launcher process is gone (killed with
    SIGKILL, so that it could not remove its folder itself); returns the folders removed. A folder
    without the owner file, or whose owner is alive, is left alone."""
    removed = []
    for folder in Path(parent).glob(FOLDER_PREFIX + "*"):
        try:
            pid = int((folder / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid > 0 and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed
