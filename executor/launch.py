"""`executor launch`: start N local ranks without torchrun, watch them, never hang the caller.

Each rank is `python -m lshsim.executor <sub-command> ... --status-dir DIR` with RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (what torchrun sets). The launcher
polls the processes and the ranks' progress files (`lshsim.executor.runtime.Progress`):

1. every rank exits 0: exit 0;
2. a rank exits non-zero: after a 2 s grace (a crash breaks its peers' collectives too) the
   others are killed and the run exits 1, naming the failed rank whose error is a cause rather
   than a broken collective (a peer's reset connection or a timeout), the first such one if
   several, with its exit code and the last line of its error output; if a rank that did not fail is strictly
   behind every other rank (it stopped making progress while the others went on to wait for
   it), that rank is named as the cause;
3. no rank records progress for `stall_timeout_s`, or the run exceeds `timeout_s`: all ranks are
   killed and the run exits 124, naming the ranks that are behind and their last step.

Rank 0's standard output is passed through; every rank's standard error goes to a file in the
status folder and its tail is shown on failure.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lshsim.checks import positive_int

__all__ = ["LaunchResult", "launch", "free_port"]

EXIT_FAILED = 1
EXIT_TIMEOUT = 124


@dataclass(frozen=True)
class LaunchResult:
    exit_code: int
    message: str
    returncodes: list[int | None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_progress(status_dir: Path, rank: int) -> tuple[int, str]:
    path = status_dir / f"rank{rank}"
    try:
        count, label = path.read_text().rstrip("\n").split("\t", 1)
        return int(count), label
    except (OSError, ValueError):
        return 0, "not started"


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _failure_time(folder: Path, rank: int) -> float:
    """When the rank reported its failure (`lshsim.executor.commands.report_failure` writes
    rank{r}.failed), else the last change of its error output."""
    try:
        return float((folder / f"rank{rank}.failed").read_text().split("\t", 1)[0])
    except (OSError, ValueError):
        try:
            return (folder / f"rank{rank}.stderr").stat().st_mtime
        except OSError:
            return float("inf")


#: error texts of a rank whose collective broke because a peer crashed, hung or left
_CONSEQUENCES = ("by peer", "remote worker", "remote process", "timed out", "timeout", "connection", "socket",
                 "watchdog", "nccl error")


def _is_consequence(folder: Path, rank: int) -> bool:
    """The rank's error reads like a broken collective (a consequence), not a cause."""
    try:
        text = (folder / f"rank{rank}.failed").read_text()
    except OSError:
        text = _tail(folder / f"rank{rank}.stderr", 1)
    lowered = text.lower()
    return any(marker in lowered for marker in _CONSEQUENCES)


def _laggards(progress: list[tuple[int, str]]) -> list[int]:
    """Ranks strictly behind all others (empty if every rank is at the same step)."""
    counts = [count for count, _ in progress]
    low = min(counts)
    if low == max(counts):
        return []
    return [rank for rank, count in enumerate(counts) if count == low]


def _describe_progress(progress: list[tuple[int, str]]) -> str:
    return "; ".join(f"rank {rank}: step {count} '{label}'" for rank, (count, label) in enumerate(progress))


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 5.0
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(nproc: int, args: list[str], *, timeout_s: float = 3600.0, stall_timeout_s: float = 600.0,
           poll_s: float = 0.1, env: dict[str, str] | None = None, status_dir: str | None = None,
           stderr_lines: int = 20, port_retries: int = 3) -> LaunchResult:
    """Run `python -m lshsim.executor *args` as `nproc` ranks; see the module docstring for the exit codes.

    The rendezvous port is a free port picked just before the start; if another process takes it
    first (EADDRINUSE), the run is started again on a new port, up to `port_retries` times.
    """
    for _attempt in range(port_retries + 1):
        result = _launch_once(nproc, args, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s, poll_s=poll_s,
                              env=env, status_dir=status_dir, stderr_lines=stderr_lines)
        if not (result.exit_code == EXIT_FAILED and "EADDRINUSE" in result.message):
            return result
    return result


def _launch_once(nproc: int, args: list[str], *, timeout_s: float, stall_timeout_s: float, poll_s: float,
                 env: dict[str, str] | None, status_dir: str | None, stderr_lines: int) -> LaunchResult:
    positive_int("nproc", nproc)
    if timeout_s <= 0 or stall_timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s} and stall_timeout_s={stall_timeout_s} must be > 0")
    owned_dir = None
    if status_dir is None:
        owned_dir = tempfile.TemporaryDirectory(prefix="executor-launch-")
        status_dir = owned_dir.name
    folder = Path(status_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("rank*"):  # progress and failures of an earlier attempt
        stale.unlink()
    port = free_port()
    base_env = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen] = []
    err_files = []
    try:
        for rank in range(nproc):
            rank_env = {**base_env, "RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
                        "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "PYTHONUNBUFFERED": "1"}
            err = open(folder / f"rank{rank}.stderr", "w")
            err_files.append(err)
            stdout = None if rank == 0 else subprocess.DEVNULL
            procs.append(subprocess.Popen([sys.executable, "-m", "lshsim.executor", *args, "--status-dir", str(folder)],
                                          env=rank_env, stdout=stdout, stderr=err))
        start = last_change = time.monotonic()
        last_progress = [_read_progress(folder, r) for r in range(nproc)]
        while True:
            codes = [proc.poll() for proc in procs]
            progress = [_read_progress(folder, r) for r in range(nproc)]
            now = time.monotonic()
            if progress != last_progress:
                last_progress, last_change = progress, now
            failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                # let the other ranks fail too (a peer's crash breaks their collectives), then blame
                # the rank that reported its error first
                grace_end = time.monotonic() + 2.0
                while time.monotonic() < grace_end and any(proc.poll() is None for proc in procs):
                    time.sleep(poll_s)
                codes = [proc.poll() for proc in procs]
                progress = [_read_progress(folder, r) for r in range(nproc)]
                failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
                first = min(failed, key=lambda r: (_is_consequence(folder, r), _failure_time(folder, r)))
                _kill_all(procs)
                tail = _tail(folder / f"rank{first}.stderr", stderr_lines)
                last_line = tail.splitlines()[-1] if tail else ""
                behind = [r for r in _laggards(progress) if r != first and r not in failed]
                if behind:
                    names = ", ".join(str(r) for r in behind)
                    message = (f"rank {names} stopped making progress (last step: "
                               f"'{progress[behind[0]][1]}'); rank {first} then failed with exit code "
                               f"{codes[first]}: {last_line}")
                else:
                    message = f"rank {first} failed with exit code {codes[first]}: {last_line}"
                message += f"\nprogress: {_describe_progress(progress)}\n--- rank {first} stderr (tail) ---\n{tail}"
                return LaunchResult(EXIT_FAILED, message, [proc.poll() for proc in procs])
            if all(code == 0 for code in codes):
                return LaunchResult(0, "all ranks finished", codes)
            stalled = now - last_change > stall_timeout_s
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
                message += f"\nprogress: {_describe_progress(progress)}"
                return LaunchResult(EXIT_TIMEOUT, message, [proc.poll() for proc in procs])
            time.sleep(poll_s)
    finally:
        _kill_all(procs)
        for handle in err_files:
            handle.close()
        if owned_dir is not None:
            owned_dir.cleanup()
