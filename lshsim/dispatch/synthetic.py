"""Seeded synthetic router inputs: hidden states, gate logits, token ids, source ranks.

The simulator, the executor and the CLI draw workloads from here, so the same seed gives the same
tokens everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RouterInputs", "synthetic_router_inputs"]


@dataclass(frozen=True)
class RouterInputs:
    """Inputs for every router at once (T = W * tokens per rank).

    hidden: (T, d) float32, standard normal hidden states.
    logits: (T, E) float32, hidden @ W_gate / sqrt(d) + skew bias (unit-variance logits).
    token_ids: (T,) int64, ids in [0, vocab_size).
    token_rank: (T,) int64, tokens grouped by rank: rank r holds rows [r*T_r, (r+1)*T_r).
    """

    hidden: torch.Tensor
    logits: torch.Tensor
    token_ids: torch.Tensor
    token_rank: torch.Tensor


def synthetic_router_inputs(num_tokens_per_rank: int, world_size: int, d_model: int, num_experts: int,
                            seed: int = 0, skew: float = 0.0, vocab_size: int = 50257) -> RouterInputs:
    """Draw router inputs with a fixed seed.

    skew = 0 gives experts equal popularity in expectation; skew > 0 adds skew * log(p) to every
    token's logits, p ~ Dirichlet(1, ..., 1) drawn once, so popular experts get more tokens.
    """
    for name, value in (("num_tokens_per_rank", num_tokens_per_rank), ("world_size", world_size),
                        ("d_model", d_model), ("num_experts", num_experts), ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not (skew >= 0 and skew < float("inf")):
        raise ValueError(f"skew={skew!r} must be finite and >= 0")
    generator = torch.Generator().manual_seed(seed)
    num_tokens = num_tokens_per_rank * world_size
    hidden = torch.randn(num_tokens, d_model, generator=generator)  # (T, d)
    gate = torch.randn(d_model, num_experts, generator=generator) / d_model ** 0.5  # (d, E)
    logits = hidden @ gate  # (T, E)
    if skew > 0:
        popularity = _dirichlet_ones(num_experts, generator)  # (E,)
        logits = logits + skew * popularity.clamp_min(1e-12).log()
    token_ids = torch.randint(0, vocab_size, (num_tokens,), generator=generator)  # (T,)
    token_rank = torch.arange(world_size).repeat_interleave(num_tokens_per_rank)  # (T,)
    return RouterInputs(hidden=hidden, logits=logits, token_ids=token_ids, token_rank=token_rank)


def _dirichlet_ones(size: int, generator: torch.Generator) -> torch.Tensor:
    """Dirichlet(1, ..., 1) with a given generator: normalised Exp(1) draws."""
    exponential = -torch.rand(size, generator=generator, dtype=torch.float64).clamp_min(1e-300).log()
    return (exponential / exponential.sum()).float()
