"""The fault suite: `executor launch` with 2 CPU ranks (gloo) on a tiny workload, one fault at a time.

A rank raises, hangs (alive, no progress), is SIGKILLed, is SIGSTOPped (frozen, no heartbeat); the
launcher receives SIGTERM, SIGINT or SIGKILL. Each case:

* ends within twice its configured bound, measured from the moment of the fault (the faulty rank's
  progress file shows the step where the fault is injected, or the signal is sent);
* names the faulty rank where there is one (exit 1 for a failed rank, 124 for a hung or frozen one,
  128 + the signal for the launcher's signals);
* leaves no process behind: the rank PIDs, read from their heartbeat files, are gone (a zombie
  whose parent has died counts as gone: it runs nothing and holds nothing);
* leaves no partial output: the trace file is absent (no run gets to write it) and its folder holds
  nothing else; the launcher's own status folder is removed (and the one a SIGKILLed launcher could
  not remove is swept by the next launch).

The bounds (seconds): the stall timeout 6 (a hang), the heartbeat timeout 3 (a frozen rank), the
launcher's failure grace (2) and kill grace (3). The launch-time argument checks (timeouts, fault
rank, threads, tolerance) run in-process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lshsim.executor.launch import FAILURE_GRACE_S, KILL_GRACE_S
from lshsim.executor.status import FOLDER_PREFIX, read_heartbeat, read_progress, sweep_stale_folders

REPO = Path(__file__).resolve().parents[1]
TINY = """name: tiny
tokens_per_rank: 32
d_model: 8
d_ffn: 16
num_experts: 4
router: {name: topk, k: 2, capacity_factor: 1.25}
skew: 1.0
iterations: 2
warmup: 1
"""
STALL_S = 6.0       # a hang is named after this long without progress (once every rank has started)
HEARTBEAT_S = 3.0   # a frozen rank is named after this long without a heartbeat
FAULT_STEP = "iteration 0"  # the step at which `run --fault` strikes
STARTUP_S = 60.0    # start-up (importing torch) on a loaded machine: not what is tested, generous
STARTUP_LIMIT_S = 90.0  # waiting for the ranks to get to the fault


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """One `executor launch --nproc 2 -- run ...` in a subprocess, with its folders."""

    def __init__(self, tmp_path: Path, fault: str | None, *, keep_status: bool = True) -> None:
        self.tmp = tmp_path / "tmp"          # TMPDIR of the launcher: its own status folder goes here
        self.tmp.mkdir()
        self.out_dir = tmp_path / "out"
        self.out = self.out_dir / "trace.json"
        self.status = tmp_path / "status" if keep_status else None
        workload = tmp_path / "tiny.yaml"
        workload.write_text(TINY)
        command = [sys.executable, "-m", "lshsim.executor", "launch", "--nproc", "2", "--timeout-s", "120",
                   "--stall-timeout-s", str(STALL_S), "--startup-timeout-s", str(STARTUP_S),
                   "--heartbeat-timeout-s", str(HEARTBEAT_S)]
        if self.status is not None:
            command += ["--status-dir", str(self.status)]
        command += ["--", "run", "--workload", str(workload), "--out", str(self.out), "--threads", "1",
                    "--collective-timeout-s", "60"]
        if fault is not None:
            command += ["--fault", fault, "--fault-rank", "1"]
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        # the launcher as a shell's foreground command gets it: SIGINT at its default. A test run started
        # as a background job of a script (`make test &`, nohup) inherits SIGINT ignored, and the launcher
        # rightly keeps an ignored SIGINT ignored, which the SIGINT case would then read as a failure
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=_default_sigint)

    def folder(self) -> Path | None:
        if self.status is not None:
            return self.status
        found = list(self.tmp.glob(FOLDER_PREFIX + "*"))
        return found[0] if found else None

    def wait_for_fault(self) -> tuple[float, list[int]]:
        """Wait until rank 1 reached the fault step; (that moment, the PIDs of both ranks)."""
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while time.monotonic() < deadline:
            folder = self.folder()
            if folder is not None and read_progress(folder, 1)[1] == FAULT_STEP:
                moment = time.monotonic()
                beats = [read_heartbeat(folder, r) for r in range(2)]
                assert all(beat is not None for beat in beats), beats
                return moment, [beat[0] for beat in beats]
            if self.proc.poll() is not None:
                pytest.fail(f"the launcher ended before the fault: {self.proc.returncode} {self.proc.stderr.read()}")
            time.sleep(0.02)
        self.proc.kill()
        pytest.fail("the ranks did not reach the fault step")

    def finish(self, timeout: float) -> tuple[int, str, float]:
        """(exit code, standard error, when it ended)."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"the launcher did not end within {timeout:g} s: {err}")
        return self.proc.returncode, err, time.monotonic()

    def assert_no_output(self) -> None:
        """No trace written, and nothing else (a temporary file) in its folder."""
        leftovers = sorted(p.name for p in self.out_dir.iterdir()) if self.out_dir.exists() else []
        assert leftovers == [], leftovers

    def assert_own_folder_removed(self) -> None:
        assert list(self.tmp.iterdir()) == []


def _gone(pid: int) -> bool:
    """The process has ended (no such process, or a zombie: ended, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _assert_gone(pids: list[int], within_s: float = 0.0) -> None:
    deadline = time.monotonic() + within_s
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in pids if not _gone(pid)]
    for pid in alive:  # do not leave them running for the next tests
        os.kill(pid, signal.SIGKILL)
    assert alive == [], f"ranks still running: {alive}"


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc (Linux)")


@pytest.mark.distributed
@pytest.mark.slow
def test_a_rank_that_raises_is_named(tmp_path):
    run = Run(tmp_path, "raise")
    fault, pids = run.wait_for_fault()
    code, err, end = run.finish(60)
    assert code == 1, err
    first = err.splitlines()[0]
    assert first.startswith("executor launch: rank 1 failed with exit code 1") and "injected fault on rank 1" in first
    assert end - fault < 2 * (FAILURE_GRACE_S + KILL_GRACE_S)
    _assert_gone(pids)
    run.assert_no_output()
    # a status folder the caller gave is kept, with what the ranks wrote
    assert "injected fault on rank 1" in (run.status / "rank1.failed").read_text()
    assert (run.status / "rank0.stderr").exists() and read_heartbeat(run.status, 0)[0] == pids[0]
    assert run.assert_own_folder_removed() is None  # and the launcher made none of its own


@pytest.mark.distributed
@pytest.mark.slow
def test_a_hanging_rank_is_named_as_behind(tmp_path):
    run = Run(tmp_path, "hang")
    fault, pids = run.wait_for_fault()
    code, err, end = run.finish(60)
    assert code == 124, err
    first = err.splitlines()[0]
    assert first.startswith(f"executor launch: no rank made progress for {STALL_S:g} s; rank 1 is behind"), first
    assert f"'{FAULT_STEP}'" in first
    assert STALL_S - 1 < end - fault < 2 * (STALL_S + KILL_GRACE_S)
    _assert_gone(pids)
    run.assert_no_output()


@pytest.mark.distributed
@pytest.mark.slow
def test_a_killed_rank_is_named(tmp_path):
    run = Run(tmp_path, "kill")
    fault, pids = run.wait_for_fault()
    code, err, end = run.finish(60)
    assert code == 1, err
    assert err.splitlines()[0] == "executor launch: rank 1 was killed by SIGKILL", err
    assert end - fault < 2 * (FAILURE_GRACE_S + KILL_GRACE_S)
    _assert_gone(pids)
    run.assert_no_output()


@pytest.mark.distributed
@pytest.mark.slow
def test_a_stopped_rank_is_named_by_its_heartbeat(tmp_path):
    run = Run(tmp_path, "stop")
    fault, pids = run.wait_for_fault()
    code, err, end = run.finish(60)
    assert code == 124, err
    first = err.splitlines()[0]
    assert first.startswith("executor launch: rank 1 stopped responding (no heartbeat for "), first
    assert f"'{FAULT_STEP}'" in first
    assert end - fault < 2 * (HEARTBEAT_S + KILL_GRACE_S)
    _assert_gone(pids)  # a stopped rank too: the launcher continues it (SIGCONT) after its SIGTERM
    run.assert_no_output()


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_launcher_stops_its_ranks_and_removes_its_folder(tmp_path, sig, code):
    run = Run(tmp_path, "hang", keep_status=False)   # a run in progress: rank 1 hangs, rank 0 waits
    _, pids = run.wait_for_fault()
    sent = time.monotonic()
    run.proc.send_signal(sig)
    exit_code, err, end = run.finish(30)
    assert exit_code == code
    assert err == f"executor launch: interrupted by {sig.name}; stopped the 2 rank(s) started\n"  # one line
    assert end - sent < 2 * KILL_GRACE_S
    _assert_gone(pids)
    run.assert_no_output()
    run.assert_own_folder_removed()


@pytest.mark.distributed
@pytest.mark.slow
def test_a_killed_launcher_takes_its_ranks_with_it(tmp_path):
    run = Run(tmp_path, "hang", keep_status=False)
    _, pids = run.wait_for_fault()
    folder = run.folder()
    run.proc.send_signal(signal.SIGKILL)
    code, _, _ = run.finish(30)
    assert code == -signal.SIGKILL
    _assert_gone(pids, within_s=2.0)  # the parent-death signal: at once
    run.assert_no_output()
    # a SIGKILLed launcher cannot remove its status folder: the next launch sweeps it
    assert folder.exists()
    assert sweep_stale_folders(run.tmp) == [folder]
    run.assert_own_folder_removed()


def test_a_live_launchers_folder_is_not_swept(tmp_path):
    from lshsim.executor.status import mark_owned

    mine = tmp_path / (FOLDER_PREFIX + "live")
    mine.mkdir()
    mark_owned(mine)                     # this process: alive
    foreign = tmp_path / (FOLDER_PREFIX + "foreign")
    foreign.mkdir()                      # no owner file: not the launcher's
    (tmp_path / (FOLDER_PREFIX + "odd")).mkdir()
    (tmp_path / (FOLDER_PREFIX + "odd") / "launcher").write_text("not a pid\n")
    assert sweep_stale_folders(tmp_path) == []
    assert mine.exists() and foreign.exists()


# ---- numbers and the fault rank, refused before anything starts (in-process, fast) ----

LAUNCH = ["launch", "--nproc", "2"]
RUN = ["run", "--workload", "data/workloads/cal-uniform-d2048-t128.yaml"]


@pytest.mark.parametrize("argv, words", [
    (LAUNCH + ["--timeout-s", "nan", "--"] + RUN, ["--timeout-s", "nan"]),
    (LAUNCH + ["--timeout-s", "inf", "--"] + RUN, ["--timeout-s", "inf"]),
    (LAUNCH + ["--timeout-s=-inf", "--"] + RUN, ["--timeout-s", "inf"]),
    (LAUNCH + ["--timeout-s", "0", "--"] + RUN, ["--timeout-s", "> 0"]),
    (LAUNCH + ["--timeout-s", "-5", "--"] + RUN, ["--timeout-s", "> 0"]),
    (LAUNCH + ["--timeout-s", "1e7", "--"] + RUN, ["--timeout-s", "<= 1e+06"]),
    (LAUNCH + ["--timeout-s", "soon", "--"] + RUN, ["--timeout-s", "soon"]),
    (LAUNCH + ["--stall-timeout-s", "nan", "--"] + RUN, ["--stall-timeout-s", "nan"]),
    (LAUNCH + ["--stall-timeout-s", "0", "--"] + RUN, ["--stall-timeout-s", "> 0"]),
    (LAUNCH + ["--stall-timeout-s", "-1", "--"] + RUN, ["--stall-timeout-s", "> 0"]),
    (LAUNCH + ["--stall-timeout-s", "inf", "--"] + RUN, ["--stall-timeout-s", "inf"]),
    (LAUNCH + ["--startup-timeout-s", "nan", "--"] + RUN, ["--startup-timeout-s", "nan"]),
    (LAUNCH + ["--startup-timeout-s", "0", "--"] + RUN, ["--startup-timeout-s", "> 0"]),
    (LAUNCH + ["--heartbeat-timeout-s", "nan", "--"] + RUN, ["--heartbeat-timeout-s", "nan"]),
    (LAUNCH + ["--heartbeat-timeout-s", "0.1", "--"] + RUN, ["--heartbeat-timeout-s", ">= 0.5"]),
    (LAUNCH + ["--heartbeat-timeout-s", "-1", "--"] + RUN, ["--heartbeat-timeout-s", ">= 0.5"]),
    (LAUNCH + ["--nproc", "0", "--"] + RUN, ["--nproc", "0"]),
    (LAUNCH + ["--nproc", "100000", "--"] + RUN, ["--nproc", "100000"]),
    (LAUNCH + ["--"] + RUN + ["--collective-timeout-s", "nan"], ["--collective-timeout-s", "nan"]),
    (LAUNCH + ["--"] + RUN + ["--collective-timeout-s", "0"], ["--collective-timeout-s", "> 0"]),
    (LAUNCH + ["--"] + RUN + ["--collective-timeout-s=-inf"], ["--collective-timeout-s", "inf"]),
    (LAUNCH + ["--"] + RUN + ["--threads", "-3"], ["--threads", "-3"]),
    (LAUNCH + ["--"] + RUN + ["--threads", "100000"], ["--threads", "100000"]),
    (LAUNCH + ["--"] + RUN + ["--fault", "raise", "--fault-rank", "9"], ["--fault-rank 9", "< --nproc 2"]),
    (LAUNCH + ["--"] + RUN + ["--fault", "hang", "--fault-rank", "2"], ["--fault-rank 2", "< --nproc 2"]),
    (LAUNCH + ["--"] + RUN + ["--fault", "kill", "--fault-rank", "-1"], ["--fault-rank", "-1"]),
    (LAUNCH + ["--"] + RUN + ["--fault", "explode"], ["--fault", "explode"]),
    (LAUNCH + ["--", "check", "--tolerance", "nan"], ["--tolerance", "nan"]),
    (LAUNCH + ["--", "check", "--tolerance=-1e-4"], ["--tolerance", ">= 0"]),
    (LAUNCH + ["--", "frobnicate"], ["unknown sub-command 'frobnicate'", "run, calibrate, check"]),
    (LAUNCH, ["run, calibrate or check"]),
    (["check", "--tolerance", "nan"], ["--tolerance", "nan"]),
    (["check", "--tolerance", "inf"], ["--tolerance", "inf"]),
    (["check", "--collective-timeout-s", "nan"], ["--collective-timeout-s", "nan"]),
    (["check", "--threads", "-3"], ["--threads", "-3"]),
    (RUN + ["--fault", "raise", "--fault-rank", "1"], ["--fault-rank 1", "world size", "WORLD_SIZE 1"]),
    (RUN + ["--collective-timeout-s", "inf"], ["--collective-timeout-s", "inf"]),
    (["calibrate", "--collective-timeout-s", "nan"], ["--collective-timeout-s", "nan"]),
    (["calibrate", "--threads", "-3"], ["--threads", "-3"]),
])
def test_bad_numbers_are_refused_before_anything_starts(argv, words, capsys, monkeypatch):
    from lshsim.executor.__main__ import main

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    start = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert time.monotonic() - start < 5


def test_launch_refuses_bad_numbers_as_a_library():
    from lshsim.executor.launch import launch

    for kwargs in ({"timeout_s": float("nan")}, {"stall_timeout_s": float("nan")}, {"timeout_s": 0.0},
                   {"stall_timeout_s": -1.0}, {"heartbeat_timeout_s": float("inf")}, {"heartbeat_timeout_s": 0.1}, {"startup_timeout_s": float("nan")},
                   {"timeout_s": True}):
        with pytest.raises(ValueError, match="timeout_s"):
            launch(2, ["check"], **kwargs)
    for nproc in (0, -1, 1000, 2.0):
        with pytest.raises(ValueError, match="nproc"):
            launch(nproc, ["check"])


def test_help_states_the_limits(capsys):
    from lshsim.executor.__main__ import main

    with pytest.raises(SystemExit):
        main(["launch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--timeout-s", "default 3600", "--stall-timeout-s", "default 60", "--startup-timeout-s", "default 120", "--heartbeat-timeout-s",
                   ">= 0.5", "default 10", "at most 1e+06", "--status-dir", "1 to 256"):
        assert phrase in text, phrase
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--collective-timeout-s", "--threads", "0 to 1024", "--fault-rank", "world size - 1", "kill",
                   "stop"):
        assert phrase in text, phrase
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert ">= 0" in " ".join(capsys.readouterr().out.split())


def test_a_rank_binds_itself_to_its_launcher(tmp_path):
    """The rank-side parent-death signal (`die_with_parent`, what a rank does at its start under the
    launcher, whether or not the launcher could set it before exec): a child whose parent is
    SIGKILLed dies too; one whose launcher is already gone when it starts ends at once."""
    child_code = ("import os, sys, time; from lshsim.executor.status import die_with_parent; "
                  "die_with_parent(int(sys.argv[1])); print(os.getpid(), flush=True); time.sleep(60)")
    parent_code = ("import os, subprocess, sys, time; "
                   f"p = subprocess.Popen([sys.executable, '-c', {child_code!r}, str(os.getpid())]); "
                   "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert not _gone(child_pid)
    parent.kill()
    parent.wait()
    _assert_gone([child_pid], within_s=2.0)
    orphan = subprocess.run([sys.executable, "-c", child_code, str(os.getpid() + 10 ** 6)], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert orphan.returncode == -signal.SIGKILL and orphan.stdout == ""
