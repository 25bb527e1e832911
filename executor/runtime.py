"""Process-group set-up shared by `executor run` and `executor calibrate`.

The rank, world size and rendezvous come from the environment that torchrun (or `executor launch`)
sets: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. NCCL on CUDA, gloo on CPU. A world
of one runs without a process group (the collectives are then no-ops).

`Progress` writes the step a rank has reached to a file in a status folder (one file per rank,
replaced atomically, `lshsim.executor.status`), so that `executor launch` can say which rank is
behind when a run hangs.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lshsim.checks import env_int, finite_number
from lshsim.executor.launch import MAX_TIMEOUT_S
from lshsim.executor.status import progress_path, write_atomically

__all__ = ["Runtime", "init_runtime", "shutdown", "Progress", "provenance"]


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def init_runtime(device: str = "auto", collective_timeout_s: float = 600.0) -> Runtime:
    """Join the process group named by the environment (or none for a world of one).

    collective_timeout_s: a collective that waits longer raises (finite, > 0, at most
    `lshsim.executor.launch.MAX_TIMEOUT_S`).
    """
    finite_number("collective_timeout_s", collective_timeout_s, minimum=0.0, exclusive=True, maximum=MAX_TIMEOUT_S)
    rank, world_size, local_rank = env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"environment RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size}: need "
                         f"WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r} must be auto, cpu or cuda")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    backend = None
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=collective_timeout_s), **kwargs)
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Progress:
    """`step(label)`: record that this rank reached a step (no-op without a status folder).

    The file is ``rank{r}`` of the status folder (`lshsim.executor.status`); that the rank is alive
    at all is told separately, by its heartbeat (`lshsim.executor.status.Heartbeat`).
    """

    def __init__(self, status_dir: str | None, rank: int) -> None:
        self.path = None if status_dir is None else progress_path(status_dir, rank)
        self.count = 0

    def step(self, label: str) -> None:
        self.count += 1
        if self.path is None:
            return
        write_atomically(self.path, f"{self.count}\t{label}\n")


def provenance(runtime: Runtime, command: list[str] | None = None) -> dict:
    """What a measured trace must say about where it was measured (Trace meta 'provenance')."""
    if runtime.device.type == "cuda":
        gpu = torch.cuda.get_device_name(runtime.device)
        version = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
        nccl = ".".join(str(v) for v in version) if isinstance(version, tuple) else version
    else:
        gpu, nccl = None, None
    return {
        "gpu": gpu,
        "count": runtime.world_size,
        "device_type": runtime.device.type,
        "backend": runtime.backend,
        "torch": str(torch.__version__),
        "cuda": None if torch.version.cuda is None else str(torch.version.cuda),
        "nccl": nccl,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command if command is not None else [sys.executable, *sys.argv]),
        "host_cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        # NCCL's settings change its speed (e.g. NCCL_P2P_NVL_CHUNKSIZE moves the p2p channel
        # thresholds, lshsim.sim.nccl): a trace names the ones it ran with
        "nccl_env": {key: value for key, value in sorted(os.environ.items()) if key.startswith("NCCL_")},
    }
