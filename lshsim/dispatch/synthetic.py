"""Seeded synthetic router inputs: hidden states, gate logits, token ids, source ranks; the expert
popularity skew (Dirichlet) and the clustered-token model, one implementation each.

The simulator, the executor and the CLI draw workloads from here, so the same seed gives the same
tokens everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch

from lshsim.checks import finite_number, non_negative_int, positive_int

__all__ = ["RouterInputs", "synthetic_router_inputs", "dirichlet_popularity", "unit_centres", "tokens_around"]


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
        positive_int(name, value)
    if not (skew >= 0 and skew < float("inf")):
        raise ValueError(f"skew={skew!r} must be finite and >= 0")
    generator = torch.Generator().manual_seed(seed)
    num_tokens = num_tokens_per_rank * world_size
    hidden = torch.randn(num_tokens, d_model, generator=generator)  # (T, d)
    gate = torch.randn(d_model, num_experts, generator=generator) / d_model ** 0.5  # (d, E)
    logits = hidden @ gate  # (T, E)
    if skew > 0:
        popularity = dirichlet_popularity(num_experts, generator)  # (E,)
        logits = logits + skew * popularity.clamp_min(1e-12).log()
    token_ids = torch.randint(0, vocab_size, (num_tokens,), generator=generator)  # (T,)
    token_rank = torch.arange(world_size).repeat_interleave(num_tokens_per_rank)  # (T,)
    return RouterInputs(hidden=hidden, logits=logits, token_ids=token_ids, token_rank=token_rank)


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
