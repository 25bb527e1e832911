"""`executor launch`: start N local ranks without torchrun, watch them, never hang the caller, never
leave a rank behind.

Each rank is `python -m lshsim.executor <sub-command> ... --status-dir DIR` with RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (what torchrun sets). The launcher
polls the processes, the ranks' progress files and their heartbeats (`lshsim.executor.status`):

1. every rank exits 0: exit 0;
2. a rank exits with code 2 (a bad input, refused by the entry point before any work): exit 2 with
   that rank's one-line error;
3. a rank exits non-zero or is killed by a signal: after a 2 s grace (a crash breaks its peers'
   collectives too) the others are killed and the run exits 1, naming the failed rank whose error
   is a cause rather than a broken collective (a peer's reset connection or a timeout), the first
   such one if several, with its exit code (or the signal that killed it) and the last line of its
   error output; if a rank that did not fail is strictly behind every other rank (it stopped
   making progress while the others went on to wait for it), that rank is named as the cause;
4. a running rank's heartbeat stops for `heartbeat_timeout_s` (the rank is frozen: SIGSTOP, a
   debugger, swapped out): all ranks are killed and the run exits 124, naming that rank
   ("rank 1 stopped responding (no heartbeat for 5.0 s)");
5. a rank has not recorded its first step `startup_timeout_s` after the start (its imports, its
   inputs, for some commands the rendezvous): all ranks are killed and the run exits 124, naming
   the ranks that did not start;
6. once every rank has started, every rank is alive but no rank records progress for
   `stall_timeout_s` (a hang: a rank that waits for something that never comes, the others
   blocked in a collective with it), or the run exceeds `timeout_s`: all ranks are killed and the
   run exits 124, naming the ranks that are behind and their last step;
7. the launcher receives SIGINT, SIGTERM or SIGHUP: it stops every rank and exits 128 + the
   signal's number (130, 143, 129) with one line.

**No rank outlives the launcher.** Each rank runs in its own session (process group), which the
launcher ends as a whole: SIGTERM (and SIGCONT, for a stopped rank), then SIGKILL after
`KILL_GRACE_S`. On Linux every rank has the parent-death signal SIGKILL
(`prctl(PR_SET_PDEATHSIG)`), so a launcher killed with SIGKILL takes its ranks with it: set
between fork and exec when the launcher has no other thread (a pre-exec function is not safe in a
threaded process), and in any case again by the rank at its start
(`lshsim.executor.status.die_with_parent`); after setting it the parent's PID is checked, which
closes the race with a launcher that died just before. Elsewhere, and as a further line of
defence, a rank's heartbeat thread ends its rank once its parent is no longer the launcher. (The
parent-death signal follows the *thread* that started the rank: call `launch` from a thread that
lives until it returns, as every caller does since it blocks.)

**The status folder.** Without `status_dir` the launcher creates one in the temporary directory
and removes it at the end, whatever the end (success, failure, signal); a folder left by a
launcher killed with SIGKILL is removed by the next launch (`sweep_stale_folders`). A folder given
by the caller is kept, with every rank's progress, heartbeat and stderr files.

**The defaults.** `timeout_s` 3600 s. `stall_timeout_s` 60 s: a hang is named within a minute,
and a minute is well above the longest step between two progress marks of the shipped work (the
rendezvous and NCCL's set-up take seconds, up to ~30 s on 8 GPUs; an iteration of the shipped
workloads or one size of the calibration sweep takes milliseconds on GPUs and at most seconds on
CPUs); raise it for a workload whose single iteration takes longer. `startup_timeout_s` 120 s:
importing torch and reading the inputs, which takes seconds, but tens of seconds on a loaded
machine or a slow shared file system, is not taken for a hang. `heartbeat_timeout_s` 10 s: ten
missed heartbeats of one second each, so a rank that is merely slow to be scheduled on a loaded
machine is not taken for a frozen one.

Rank 0's standard output is passed through; every rank's standard error goes to a file in the
status folder and its tail is shown on failure.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lshsim.checks import finite_number, positive_int
from lshsim.executor.status import (FOLDER_PREFIX, HEARTBEAT_ENV, LAUNCHER_PID_ENV, failure_path, mark_owned,
                                    read_heartbeat, read_progress, stderr_path, sweep_stale_folders)

__all__ = ["LaunchResult", "launch", "free_port", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_TIMEOUT",
           "DEFAULT_TIMEOUT_S", "DEFAULT_STALL_TIMEOUT_S", "DEFAULT_STARTUP_TIMEOUT_S", "DEFAULT_HEARTBEAT_TIMEOUT_S", "MAX_TIMEOUT_S",
           "MIN_HEARTBEAT_TIMEOUT_S", "KILL_GRACE_S", "MAX_NPROC"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TIMEOUT = 124

DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_STALL_TIMEOUT_S = 60.0
DEFAULT_STARTUP_TIMEOUT_S = 120.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
#: most local ranks one launcher starts (each is a Python process that imports torch)
MAX_NPROC = 256
#: largest accepted timeout of any kind (launcher and collectives): about 11.6 days
MAX_TIMEOUT_S = 1e6
#: a heartbeat timeout below this would take scheduling noise for a frozen rank
MIN_HEARTBEAT_TIMEOUT_S = 0.5
#: SIGTERM -> SIGKILL delay when the launcher ends its ranks
KILL_GRACE_S = 3.0
#: after a rank fails, how long its peers get to fail too (their errors tell the cause from the consequences)
FAILURE_GRACE_S = 2.0
#: the signals the launcher passes on to its ranks (then it exits 128 + the signal's number)
FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LaunchResult:
    exit_code: int
    message: str
    returncodes: list[int | None]
    pids: list[int] = field(default_factory=list)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_progress(status_dir: Path, rank: int) -> tuple[int, str]:
    return read_progress(status_dir, rank)


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _strip_rank_prefix(line: str) -> str:
    """torch prefixes a rank's error output with '[rankN]: '."""
    if line.startswith("[rank") and "]: " in line:
        return line.split("]: ", 1)[1]
    return line


def _failure_time(folder: Path, rank: int) -> float:
    """When the rank reported its failure (`lshsim.executor.commands.report_failure` writes
    rank{r}.failed), else the last change of its error output."""
    try:
        return float(failure_path(folder, rank).read_text().split("\t", 1)[0])
    except (OSError, ValueError):
        try:
            return stderr_path(folder, rank).stat().st_mtime
        except OSError:
            return float("inf")


#: error texts of a rank whose collective broke because a peer crashed, hung or left
_CONSEQUENCES = ("by peer", "remote worker", "remote process", "timed out", "timeout", "connection", "socket",
                 "watchdog", "nccl error")


def _is_consequence(folder: Path, rank: int, code: int | None) -> bool:
    """The rank's error reads like a broken collective (a consequence), not a cause. A rank killed
    by a signal the launcher did not send is a cause."""
    if code is not None and code < 0:
        return False
    try:
        text = failure_path(folder, rank).read_text()
    except OSError:
        text = _tail(stderr_path(folder, rank), 1)
    lowered = text.lower()
    return any(marker in lowered for marker in _CONSEQUENCES)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _how_it_ended(code: int) -> str:
    return f"was killed by {_signal_name(-code)}" if code < 0 else f"failed with exit code {code}"


def _laggards(progress: list[tuple[int, str]]) -> list[int]:
    """Ranks strictly behind all others (empty if every rank is at the same step)."""
    counts = [count for count, _ in progress]
    low = min(counts)
    if low == max(counts):
        return []
    return [rank for rank, count in enumerate(counts) if count == low]


def _describe_progress(progress: list[tuple[int, str]], beat_age: list[float | None] | None = None) -> str:
    parts = []
    for rank, (count, label) in enumerate(progress):
        text = f"rank {rank}: step {count} '{label}'"
        if beat_age is not None:
            age = beat_age[rank]
            text += " (no heartbeat yet)" if age is None else f" (last heartbeat {age:.1f} s ago)"
        parts.append(text)
    return "; ".join(parts)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the rank's process group (its session: the rank and anything it started)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass


def _kill_all(procs: list[subprocess.Popen], grace_s: float = KILL_GRACE_S) -> None:
    """End every rank still running: SIGTERM (and SIGCONT, so that a stopped rank receives it) to
    its process group, then SIGKILL after `grace_s`; waits until each has ended."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        _signal_group(proc, signal.SIGTERM)
        if hasattr(signal, "SIGCONT"):
            _signal_group(proc, signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _parent_death_setup():
    """The rank's pre-exec step (Linux): SIGKILL when the launcher dies, and end at once if it has
    already died between the fork and this call (the race the check of the parent's PID closes)."""
    launcher_pid = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
        except (OSError, AttributeError):
            prctl = None

    def setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher_pid:
            os._exit(1)

    return setup


class _SignalWatch:
    """While active (main thread only): SIGINT, SIGTERM and SIGHUP are recorded instead of
    interrupting the launcher; the watch loop sees them and stops the ranks. A signal that the
    caller ignores (SIG_IGN, e.g. SIGINT of a background job) stays ignored."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_SignalWatch":
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED_SIGNALS:
                try:
                    if signal.getsignal(sig) is signal.SIG_IGN:
                        continue
                    self._previous[sig] = signal.signal(sig, self._record)
                except (ValueError, OSError):
                    pass
        return self

    def _record(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def launch(nproc: int, args: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S,
           stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S, startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
           heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S, poll_s: float = 0.1,
           env: dict[str, str] | None = None, status_dir: str | None = None, stderr_lines: int = 20,
           port_retries: int = 3) -> LaunchResult:
    """Run `python -m lshsim.executor *args` as `nproc` ranks; see the module docstring for the exit codes.

    Timeouts are seconds, finite and > 0, at most `MAX_TIMEOUT_S`; `heartbeat_timeout_s` at least
    `MIN_HEARTBEAT_TIMEOUT_S`. The rendezvous port is a free port picked just before the start; if
    another process takes it first (EADDRINUSE), the run is started again on a new port, up to
    `port_retries` times.
    """
    positive_int("nproc", nproc)
    if nproc > MAX_NPROC:
        raise ValueError(f"nproc={nproc} must be at most {MAX_NPROC} (local ranks of one launcher)")
    finite_number("timeout_s", timeout_s, minimum=0.0, exclusive=True, maximum=MAX_TIMEOUT_S)
    finite_number("stall_timeout_s", stall_timeout_s, minimum=0.0, exclusive=True, maximum=MAX_TIMEOUT_S)
    finite_number("startup_timeout_s", startup_timeout_s, minimum=0.0, exclusive=True, maximum=MAX_TIMEOUT_S)
    finite_number("heartbeat_timeout_s", heartbeat_timeout_s, minimum=MIN_HEARTBEAT_TIMEOUT_S, maximum=MAX_TIMEOUT_S)
    finite_number("poll_s", poll_s, minimum=0.0, exclusive=True, maximum=1.0)
    with _SignalWatch() as watch:
        for _attempt in range(port_retries + 1):
            result = _launch_once(nproc, args, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s,
                                  startup_timeout_s=startup_timeout_s,
                                  heartbeat_timeout_s=heartbeat_timeout_s, poll_s=poll_s, env=env,
                                  status_dir=status_dir, stderr_lines=stderr_lines, watch=watch)
            if not (result.exit_code == EXIT_FAILED and "EADDRINUSE" in result.message):
                return result
    return result


def _status_folder(status_dir: str | None):
    """(folder, the TemporaryDirectory to clean up or None)."""
    if status_dir is None:
        parent = tempfile.gettempdir()
        sweep_stale_folders(parent)
        owned = tempfile.TemporaryDirectory(prefix=FOLDER_PREFIX)
        mark_owned(owned.name)
        return Path(owned.name), owned
    folder = Path(status_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("rank*"):  # progress, heartbeats and failures of an earlier run
            stale.unlink()
    except OSError as error:
        raise ValueError(f"status folder (--status-dir) {str(folder)!r}: {error.strerror or error}") from None
    return folder, None


def _launch_once(nproc: int, args: list[str], *, timeout_s: float, stall_timeout_s: float, startup_timeout_s: float,
                 heartbeat_timeout_s: float, poll_s: float, env: dict[str, str] | None, status_dir: str | None,
                 stderr_lines: int, watch: _SignalWatch) -> LaunchResult:
    folder, owned_dir = _status_folder(status_dir)
    port = free_port()
    base_env = dict(os.environ if env is None else env)
    heartbeat_s = min(1.0, heartbeat_timeout_s / 4)
    procs: list[subprocess.Popen] = []
    err_files = []
    setup = _parent_death_setup()

    def pids() -> list[int]:
        return [proc.pid for proc in procs]

    def stopped_by_signal() -> LaunchResult:
        _kill_all(procs)
        name = _signal_name(watch.received)
        return LaunchResult(128 + watch.received, f"interrupted by {name}; stopped the {len(procs)} rank(s) "
                            f"started", [proc.poll() for proc in procs], pids())

    try:
        for rank in range(nproc):
            if watch.received is not None:
                return stopped_by_signal()
            rank_env = {**base_env, "RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
                        "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "PYTHONUNBUFFERED": "1", HEARTBEAT_ENV: repr(heartbeat_s),
                        LAUNCHER_PID_ENV: str(os.getpid())}
            err = open(stderr_path(folder, rank), "w")
            err_files.append(err)
            stdout = None if rank == 0 else subprocess.DEVNULL
            procs.append(subprocess.Popen([sys.executable, "-m", "lshsim.executor", *args, "--status-dir", str(folder)],
                                          env=rank_env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err,
                                          start_new_session=True,
                                          preexec_fn=setup if threading.active_count() == 1 else None))
        start = last_change = last_loop = time.monotonic()
        last_progress = [_read_progress(folder, r) for r in range(nproc)]
        beats: list[tuple[int, int] | None] = [None] * nproc
        beat_time = [start] * nproc
        while True:
            if watch.received is not None:
                return stopped_by_signal()
            codes = [proc.poll() for proc in procs]
            progress = [_read_progress(folder, r) for r in range(nproc)]
            now = time.monotonic()
            if now - last_loop > max(1.0, heartbeat_timeout_s / 2):
                # the launcher itself was not running (suspended, starved): nothing can be judged
                # on the time that passed meanwhile, so the clocks start again
                last_change, beat_time = now, [now] * nproc
            last_loop = now
            if progress != last_progress:
                last_progress, last_change = progress, now
            for r in range(nproc):
                beat = read_heartbeat(folder, r)
                if beat != beats[r]:
                    beats[r], beat_time[r] = beat, now
            failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                # let the other ranks fail too (a peer's crash breaks their collectives), then blame
                # the rank that reported its error first
                grace_end = time.monotonic() + FAILURE_GRACE_S
                while (time.monotonic() < grace_end and any(proc.poll() is None for proc in procs)
                       and watch.received is None):
                    time.sleep(poll_s)
                if watch.received is not None:
                    return stopped_by_signal()
                codes = [proc.poll() for proc in procs]
                progress = [_read_progress(folder, r) for r in range(nproc)]
                failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
                first = min(failed, key=lambda r: (_is_consequence(folder, r, codes[r]), _failure_time(folder, r)))
                _kill_all(procs)
                tail = _tail(stderr_path(folder, first), stderr_lines)
                last_line = _strip_rank_prefix(tail.splitlines()[-1]) if tail else ""
                if codes[first] == EXIT_BAD_INPUT and ": error: " in last_line:
                    # the entry point refused an input (every rank reads the same ones): its one line
                    return LaunchResult(EXIT_BAD_INPUT, f"rank {first}: {last_line}", [proc.poll() for proc in procs],
                                        pids())
                behind = [r for r in _laggards(progress) if r != first and r not in failed]
                error = f" {_how_it_ended(codes[first])}" + (f": {last_line}" if last_line else "")
                if behind:
                    names = ", ".join(str(r) for r in behind)
                    message = (f"rank {names} stopped making progress (last step: "
                               f"'{progress[behind[0]][1]}'); rank {first} then{error}")
                else:
                    message = f"rank {first}{error}"
                message += f"\nprogress: {_describe_progress(progress)}"
                if tail:
                    message += f"\n--- rank {first} stderr (tail) ---\n{tail}"
                return LaunchResult(EXIT_FAILED, message, [proc.poll() for proc in procs], pids())
            if all(code == 0 for code in codes):
                return LaunchResult(0, "all ranks finished", codes, pids())
            ages = [None if beats[r] is None else now - beat_time[r] for r in range(nproc)]
            frozen = [r for r in range(nproc) if codes[r] is None and ages[r] is not None
                      and ages[r] > heartbeat_timeout_s]
            if frozen:
                _kill_all(procs)
                names = ", ".join(str(r) for r in frozen)
                message = (f"rank {names} stopped responding (no heartbeat for {ages[frozen[0]]:.1f} s; last step: "
                           f"'{progress[frozen[0]][1]}'), the others wait for it"
                           f"\nprogress: {_describe_progress(progress, ages)}")
                return LaunchResult(EXIT_TIMEOUT, message, [proc.poll() for proc in procs], pids())
            not_started = [r for r in range(nproc) if progress[r][0] == 0 and codes[r] is None]
            if not_started and now - start > startup_timeout_s:
                _kill_all(procs)
                names = ", ".join(str(r) for r in not_started)
                message = (f"rank {names} did not start within {startup_timeout_s:g} s (no first step: imports, "
                           f"inputs, rendezvous)\nprogress: {_describe_progress(progress, ages)}")
                return LaunchResult(EXIT_TIMEOUT, message, [proc.poll() for proc in procs], pids())
            stalled = not not_started and now - last_change > stall_timeout_s
            if stalled or now - start > timeout_s:
                _kill_all(procs)
                behind = _laggards(progress)
                what = (f"no rank made progress for {stall_timeout_s:g} s" if stalled
                        else f"the run exceeded {timeout_s:g} s")
                if behind:
                    names = ", ".join(str(r) for r in behind)
                    message = (f"{what}; rank {names} is behind (last step: '{progress[behind[0]][1]}'), "
                               f"the others wait for it")
                else:
                    message = f"{what}; every rank is at step {progress[0][0]} '{progress[0][1]}'"
                message += f"\nprogress: {_describe_progress(progress, ages)}"
                return LaunchResult(EXIT_TIMEOUT, message, [proc.poll() for proc in procs], pids())
            time.sleep(poll_s)
    finally:
        _kill_all(procs)
        for handle in err_files:
            handle.close()
        if owned_dir is not None:
            owned_dir.cleanup()
