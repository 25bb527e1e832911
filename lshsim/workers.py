"""Worker processes of lshsim's local process pools (`lshsim sweep --jobs N`, `lshsim validate --published
--jobs N`): a pool worker that outlives the command that made it is a leak, since a command ended by SIGTERM or
SIGKILL runs no clean-up and its idle workers wait on a dead queue for good."""
from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent_pid: int) -> None:
    """Call first in a pool worker (the pool's `initializer`, `initargs=(os.getpid(),)` in the parent): on Linux the
    kernel SIGKILLs this process when its parent dies (`prctl(PR_SET_PDEATHSIG)`, as `lshsim launch` binds its ranks);
    then the process ends at once if `parent_pid` has died already (the race the check closes). Elsewhere only the
    check."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
