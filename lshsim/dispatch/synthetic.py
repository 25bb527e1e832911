"""Seeded synthetic router inputs: hidden states, gate logits, token ids, source ranks; the expert
popularity skew (Dirichlet) and the clustered-token model, one implementation each.

The simulator, the executor and the CLI draw workloads from here, so the same seed gives the same
tokens everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import math
import numbers
import queue
import threading

import torch

from lshsim.checks import SEED_MAX, finite_number, non_negative_int, positive_int
from lshsim.dispatch import _generator_skip

__all__ = ["RouterInputs", "HIDDEN_MODES", "synthetic_router_inputs", "pooled_hidden", "dirichlet_popularity",
           "unit_centres", "tokens_around"]


@dataclass(frozen=True)
class RouterInputs:
    """Inputs for every router at once (T = W * tokens per rank).

    hidden: (T, d) float32, standard normal hidden states; drawn with hidden="pooled" their GrAP
        group means (T, E) instead, and with hidden="none" None (`synthetic_router_inputs`).
    logits: (T, E) float32, hidden @ W_gate / sqrt(d) + skew bias (unit-variance logits).
    token_ids: (T,) int64, ids in [0, vocab_size).
    token_rank: (T,) int64, tokens grouped by rank: rank r holds rows [r*T_r, (r+1)*T_r).
    """

    hidden: torch.Tensor | None
    logits: torch.Tensor
    token_ids: torch.Tensor
    token_rank: torch.Tensor


#: HIDDEN_MODES of `synthetic_router_inputs`: what it keeps of the hidden states
HIDDEN_MODES = ("full", "pooled", "none")
#: hidden="pooled" / "none" draw the hidden states in row blocks of about this many values (128 MiB of
#: float32) when there are more of them than that; fewer are drawn at once, as hidden="full" draws them
BLOCK_VALUES = 1 << 25


def pooled_hidden(hidden: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(T, E) float32 group means of (T, d) hidden states, d / E features a group: what LocMoE's GrAP
    gate reads of them (`lshsim.dispatch.routers.grap_scores`; the same expression). A group of one
    feature is its own mean, so `grap_scores(pooled_hidden(h, E), E)` is `grap_scores(h, E)` bit for bit."""
    num_tokens, d_model = hidden.shape
    if d_model % num_experts != 0:
        raise ValueError(f"d_model={d_model} is not divisible by num_experts={num_experts} (no equal groups to pool)")
    return hidden.reshape(num_tokens, num_experts, d_model // num_experts).mean(dim=2, dtype=torch.float32)


def _row_blocks(num_rows: int, block_rows: int):
    """(start, stop) row blocks of `block_rows` rows (a multiple of 16), the last one taking every row
    left when fewer than 2 x block_rows are: every block but the last has a multiple of 16 values and
    the last at least 16, which is what lets the blocks' normal draws equal one draw of all rows
    (`_blocks_match_randn`)."""
    start = 0
    while start < num_rows:
        stop = num_rows if num_rows - start < 2 * block_rows else start + block_rows
        yield start, stop
        start = stop


def _draw_blocks(generator: torch.Generator, num_rows: int, width: int, block_rows: int):
    """Yield (start, stop, block): the rows start..stop-1 of torch.randn(num_rows, width,
    generator=generator), drawn block by block into one reused buffer (valid until the next yield)."""
    blocks = list(_row_blocks(num_rows, block_rows))
    buffer = torch.empty(max(stop - start for start, stop in blocks), width)
    for start, stop in blocks:
        block = buffer[:stop - start]
        block.normal_(generator=generator)
        yield start, stop, block


class _BlocksAhead:
    """`_draw_blocks` with the blocks drawn by a helper thread from the moment this is made, one block
    ahead of the caller (the draws are serial, one core; torch and the generator skip release the GIL):
    the same numbers in the same order, in two buffers. Iterate it once, inside `with`: leaving
    (an error, an early exit) stops the helper; an error of the helper is raised in the loop."""

    def __init__(self, generator: torch.Generator, num_rows: int, width: int, block_rows: int):
        self.blocks = list(_row_blocks(num_rows, block_rows))
        rows = max(stop - start for start, stop in self.blocks)
        self.free: queue.Queue = queue.Queue()
        self.ready: queue.Queue = queue.Queue()
        for _ in range(2):
            self.free.put(torch.empty(rows, width))
        self.stopping = threading.Event()
        self.helper = threading.Thread(target=self._draw, args=(generator,), name="lshsim-hidden-draws", daemon=True)
        self.helper.start()

    def _draw(self, generator: torch.Generator) -> None:
        try:
            for start, stop in self.blocks:
                buffer = self.free.get()
                if self.stopping.is_set():
                    return
                block = buffer[:stop - start]
                block.normal_(generator=generator)
                self.ready.put((start, stop, buffer, block))
        except BaseException as error:     # handed to the caller
            self.ready.put(error)

    def __iter__(self):
        for _ in self.blocks:
            item = self.ready.get()
            if isinstance(item, BaseException):
                raise item
            start, stop, buffer, block = item
            yield start, stop, block
            self.free.put(buffer)

    def __enter__(self) -> "_BlocksAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.free.put(torch.empty(0))      # wakes a helper waiting for a buffer
        self.helper.join()


_BLOCKS_MATCH: bool | None = None


def _blocks_match_randn() -> bool:
    """Whether normal draws made block by block (`_draw_blocks`) equal one torch.randn of all rows, the
    generator left in the same state: torch fills a float tensor of >= 16 values with one 32-bit draw
    a value, turned into normals 16 values at a time (the last 16 drawn again when 16 does not divide
    the count). Checked once per process on a small draw; when it fails (another torch), the blocks
    are not used and every draw is made whole."""
    global _BLOCKS_MATCH
    if _BLOCKS_MATCH is None:
        ok = True
        for rows, width in ((70, 5), (64, 3), (96, 16)):
            whole = torch.Generator().manual_seed(7)
            blocks = torch.Generator().manual_seed(7)
            expected = torch.randn(rows, width, generator=whole)
            got = torch.empty(rows, width)
            for start, stop, block in _draw_blocks(blocks, rows, width, 16):
                got[start:stop] = block
            ok = ok and torch.equal(expected, got) and torch.equal(torch.rand(8, generator=whole),
                                                                   torch.rand(8, generator=blocks))
        _BLOCKS_MATCH = ok
    return _BLOCKS_MATCH


def synthetic_router_inputs(num_tokens_per_rank: int, world_size: int, d_model: int, num_experts: int,
                            seed: int = 0, skew: float = 0.0, vocab_size: int = 50257,
                            hidden: str = "full") -> RouterInputs:
    """Draw router inputs with a fixed seed.

    skew = 0 gives experts equal popularity in expectation; skew > 0 adds skew * log(p) to every
    token's logits, p ~ Dirichlet(1, ..., 1) drawn once, so popular experts get more tokens.

    hidden: what RouterInputs.hidden holds: "full" the (T, d) hidden states; "pooled" their (T, E)
    group means (`pooled_hidden`, all that LocMoE's router reads; d_model a multiple of num_experts);
    "none" nothing (None). With "pooled" and "none" the (T, d) states are never held whole (131,072
    tokens x 7,168 features are 3.8 GB): above BLOCK_VALUES values the generator first skips past
    them to the gate's numbers, which come after them (`lshsim.dispatch._generator_skip`; where it
    cannot, they are drawn and dropped), while a helper thread draws them again in row blocks for the
    logits (`_BlocksAhead`, one block ahead of the matrix products); logits,
    token ids and pooled states are those of the "full" draw bit for bit (tests/test_synthetic_blocks.py).
    """
    for name, value in (("num_tokens_per_rank", num_tokens_per_rank), ("world_size", world_size),
                        ("d_model", d_model), ("num_experts", num_experts), ("vocab_size", vocab_size)):
        positive_int(name, value)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= SEED_MAX:
        # torch's CPU generator seeds its Mersenne Twister with the low 32 bits: -1 drew seed 2^32 - 1's
        # tokens and 2^32 seed 0's; above 2^64 - 1 torch's own error named no seed
        raise ValueError(f"seed={seed!r} must be a whole number in [0, {SEED_MAX}] (as lshsim plan --seed)")
    if not (skew >= 0 and skew < float("inf")):
        raise ValueError(f"skew={skew!r} must be finite and >= 0")
    if hidden not in HIDDEN_MODES:
        raise ValueError(f"hidden={hidden!r} must be one of {HIDDEN_MODES}")
    if hidden == "pooled" and d_model % num_experts != 0:
        raise ValueError(f"hidden='pooled' needs d_model={d_model} divisible by num_experts={num_experts}")
    generator = torch.Generator().manual_seed(seed)
    num_tokens = num_tokens_per_rank * world_size
    block_rows = max(16, BLOCK_VALUES // d_model // 16 * 16)
    if hidden == "full" or num_tokens < 2 * block_rows or not _blocks_match_randn():
        states = torch.randn(num_tokens, d_model, generator=generator)  # (T, d)
        gate = torch.randn(d_model, num_experts, generator=generator) / d_model ** 0.5  # (d, E)
        logits = states @ gate  # (T, E)
        kept = states if hidden == "full" else pooled_hidden(states, num_experts) if hidden == "pooled" else None
    else:
        # the hidden states again, from a second generator, drawn ahead by a helper thread meanwhile
        with _BlocksAhead(torch.Generator().manual_seed(seed), num_tokens, d_model, block_rows) as blocks:
            # past the hidden states: skipped (`_generator_skip`, about 4x faster than drawing), else drawn
            if not _generator_skip.skip(generator, _generator_skip.normal_draws(num_tokens * d_model)):
                for _ in _draw_blocks(generator, num_tokens, d_model, block_rows):
                    pass
            gate = torch.randn(d_model, num_experts, generator=generator) / d_model ** 0.5  # (d, E)
            logits = torch.empty(num_tokens, num_experts)                                   # (T, E)
            kept = torch.empty(num_tokens, num_experts) if hidden == "pooled" else None
            for start, stop, block in blocks:
                torch.matmul(block, gate, out=logits[start:stop])
                if kept is not None:
                    kept[start:stop] = pooled_hidden(block, num_experts)
    if skew > 0:
        popularity = dirichlet_popularity(num_experts, generator)  # (E,)
        logits = logits + skew * popularity.clamp_min(1e-12).log()
    token_ids = torch.randint(0, vocab_size, (num_tokens,), generator=generator)  # (T,)
    token_rank = torch.arange(world_size).repeat_interleave(num_tokens_per_rank)  # (T,)
    return RouterInputs(hidden=kept, logits=logits, token_ids=token_ids, token_rank=token_rank)


def dirichlet_popularity(num_experts: int, generator: torch.Generator) -> torch.Tensor:
    """(E,) float32 expert popularity p ~ Dirichlet(1, ..., 1) drawn with `generator`: normalised
    Exp(1) draws, Exp(1) = -log(U) with U ~ U(0, 1) in float64. The popularity skew of
    `synthetic_router_inputs` and of the executor's gate bias (logits += skew * log p).

    >>> p = dirichlet_popularity(4, torch.Generator().manual_seed(0))
    >>> p.shape, round(float(p.sum()), 6)
    (torch.Size([4]), 1.0)
    """
    exponential = -torch.rand(num_experts, generator=generator, dtype=torch.float64).clamp_min(1e-300).log()
    return (exponential / exponential.sum()).float()


def unit_centres(num_clusters: int, d_model: int, generator: torch.Generator) -> torch.Tensor:
    """(K, d) float32 cluster centres of unit norm: N(0, I_d) draws with `generator`, normalised.

    The centres of the clustered-token model (`lshsim.dispatch.lsh.clustered_tokens`, the executor's
    `input_clusters` workloads): a toy model of the similar tokens LSH-MoE observes (its Figure 4).
    """
    positive_int("num_clusters", num_clusters)
    positive_int("d_model", d_model)
    centres = torch.randn(num_clusters, d_model, generator=generator)  # (K, d)
    return centres / torch.linalg.vector_norm(centres, dim=1, keepdim=True)


def tokens_around(centres: torch.Tensor, num_tokens: int, noise: float, generator: torch.Generator,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(N, d) tokens: token t = centre[c_t] + noise * g_t / sqrt(d), c_t uniform over the K centres,
    g_t ~ N(0, I_d), both drawn with `generator` (on `device`, default the centres' device), so the
    noise has norm ~= `noise` relative to unit centres; noise = 0 gives exact duplicates.
    """
    non_negative_int("num_tokens", num_tokens)
    finite_number("noise", noise, minimum=0.0)
    num_clusters, d_model = centres.shape
    device = centres.device if device is None else device
    assignment = torch.randint(0, num_clusters, (num_tokens,), generator=generator, device=device)  # (N,)
    jitter = torch.randn(num_tokens, d_model, generator=generator, device=device) * (noise / math.sqrt(d_model))
    return centres.to(device)[assignment] + jitter  # (N, d)
