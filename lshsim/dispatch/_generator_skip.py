"""Move a torch CPU generator past n of its 32-bit draws without drawing them: its Mersenne Twister
(MT19937) state is regenerated n / 624 times by a numba loop (about 1 ns a draw, against about 4 ns
a value for torch's own normal draws). `synthetic_router_inputs` uses it to reach the gate's numbers,
which come after the hidden states', without drawing the hidden states twice.

torch's CPU generator state (`torch.Generator.get_state()`, `CPUGeneratorImplState`): the seed
(uint64), `left` (int32: draws left before the next regeneration, plus one), `seeded` (int32),
`next` (uint64: the index of the next word), the 624 words (as uint64), then fields this leaves
alone. `skip_works()` checks once per process, on small draws, that moving the state here gives the
numbers torch gives (the layout above and the draw counts `synthetic` relies on); when numba is
missing, its compiler is switched off (NUMBA_DISABLE_JIT=1: the loop would run in Python, about
1.5 ms a regeneration, 40 minutes for DeepSeek-V3's states on 64 GPUs) or the check fails, `skip`
returns False and the caller draws the numbers instead (about 4 ns a value).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["skip", "skip_works"]

_N, _M = 624, 397
_LEFT, _NEXT, _WORDS = 8, 16, 24          # byte offsets in the state tensor
_KERNEL = None
_WORKS: bool | None = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(cache=True, nogil=True)
        def regenerate(state, times):
            """MT19937's regeneration of the 624 words (torch's mt19937 next_state), `times` times."""
            upper, lower, matrix = np.uint32(0x80000000), np.uint32(0x7FFFFFFF), np.uint32(0x9908B0DF)
            one = np.uint32(1)
            for _ in range(times):
                for i in range(_N):
                    following = state[i + 1] if i + 1 < _N else state[0]
                    y = (state[i] & upper) | (following & lower)
                    value = state[i + _M if i + _M < _N else i + _M - _N] ^ (y >> one)
                    if following & one:
                        value ^= matrix
                    state[i] = value

        _KERNEL = regenerate
    return _KERNEL


def _skip(generator: torch.Generator, draws: int) -> None:
    raw = generator.get_state().numpy().copy()
    left = int(raw[_LEFT:_LEFT + 4].view(np.int32)[0])
    nxt = int(raw[_NEXT:_NEXT + 8].view(np.uint64)[0])
    available = left - 1                       # draws before the next regeneration
    if draws <= available:                     # each draw: left - 1, next + 1
        left, nxt = left - draws, nxt + draws
    else:
        draws -= available
        times = -(-draws // _N)                 # regenerations
        used = draws - (times - 1) * _N         # draws from the last regenerated words, 1..624
        words = raw[_WORDS:_WORDS + 8 * _N].view(np.uint64).astype(np.uint32)    # (624,)
        _kernel()(words, times)
        raw[_WORDS:_WORDS + 8 * _N] = words.astype(np.uint64).view(np.uint8)
        left, nxt = _N + 1 - used, used
    raw[_LEFT:_LEFT + 4] = np.array([left], dtype=np.int32).view(np.uint8)
    raw[_NEXT:_NEXT + 8] = np.array([nxt], dtype=np.uint64).view(np.uint8)
    generator.set_state(torch.from_numpy(raw))


def normal_draws(numel: int) -> int:
    """The 32-bit draws torch's normal fill of `numel` >= 16 float32 values takes: one a value, and
    16 more when 16 does not divide numel (the last 16 values drawn again)."""
    return numel + (16 if numel % 16 else 0)


def skip_works() -> bool:
    """Whether `skip` can be used here (numba imports, and skipping equals drawing on small draws)."""
    global _WORKS
    if _WORKS is None:
        try:
            import numba

            if numba.config.DISABLE_JIT:     # the kernel would run in Python, far slower than drawing
                _WORKS = False
                return _WORKS
            _kernel()
            ok = True
            for first, numel in ((0, 350), (5, 352), (3, 5000), (0, 624 * 3 - 1), (0, 624 * 2 + 16)):
                drawn = torch.Generator().manual_seed(11)
                skipped = torch.Generator().manual_seed(11)
                if first:
                    torch.randn(first, generator=drawn)
                    torch.randn(first, generator=skipped)
                torch.randn(numel, generator=drawn)
                _skip(skipped, normal_draws(numel))
                ok = ok and torch.equal(torch.randn(40, generator=drawn), torch.randn(40, generator=skipped))
            _WORKS = ok
        except Exception:           # numba missing or broken, or another torch: draw instead
            _WORKS = False
    return _WORKS


def skip(generator: torch.Generator, draws: int) -> bool:
    """Move `generator` (a CPU torch.Generator) past `draws` 32-bit draws; False (nothing done) when
    `skip_works()` is False."""
    if not skip_works():
        return False
    _skip(generator, int(draws))
    return True
