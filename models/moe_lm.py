"""A small trainable MoE language model whose MoE layers run on `lshsim.dispatch`.

The model answers a quality question the simulator cannot: does LSH-MoE compression (Nie et al.,
NeurIPS 2024) keep the model's quality, and how do the routers compare when they train a model?
The MoE layer uses exactly the code the executor and the simulator use: `lshsim.dispatch.route`
(the ROUTERS registry: topk, hash, locmoe, ...), the capacity and drops of the DispatchPlan,
`lshsim.dispatch.routers.aux_loss` and `lshsim.dispatch.lsh.compress / residuals / restore`.

Model (`MoELM`, byte-level, vocabulary 256): token + learned position embeddings, `num_layers`
pre-norm blocks x + attn(LN(x)), x + ffn(LN(x)) with causal multi-head attention
(`scaled_dot_product_attention`), an MoE FFN in layer l when (l + 1) % moe_every == 0 (the
catalog's rule; moe_every = 1: every layer) and a dense FFN elsewhere, a final LayerNorm and a
head tied to the embedding. Expert and dense FFNs are gelu(x W1) W2, like the executor's experts.

One MoE layer (`MoEFFN.forward`, T tokens of the batch flattened in order):

1. Simulated ranks: token t lives on rank floor(t W / T) (the batch is split over W ranks in
   order) and rank r on node r // gpus_per_node; experts are placed contiguously
   (`contiguous_placement`). The placement only decides capacity buffers, which choices count as
   "local" and how LSH groups tokens; everything runs on one device.
2. Route: `route(RouterConfig, placement, logits=x W_gate | hidden=x | token_ids=bytes,
   token_rank)`: topk reads learned logits, locmoe the hidden states (GrAP gate, own-node bonus),
   hash the input byte ids. Capacity C per (source rank, expert) as the plan says; dropped
   choices contribute nothing (the block's residual connection carries the token).
3. Group: the kept (token, choice) copies are sorted by (expert, source rank, token): the rows one
   expert receives, rank-major, as after the dispatch all-to-all.
4. LSH-MoE (optional): `compress(rows, group = expert * W + source rank, config)`, i.e. per
   destination expert on every sending rank (what a real rank does before its all-to-all; with
   W = 1 the group is the expert). The expert runs on the centroids; `restore` gives each copy
   E(c) + (x - c) (residual compensation) or E(c) (without).
5. Experts: one gelu(x W1) W2 per expert on its contiguous rows (grouped).
6. Combine: y_t = sum over kept choices of gate weight * output (`index_add`).
7. Losses: the Switch load-balance loss `aux_loss(plan, alpha)` for routers with scores
   (topk, locmoe; hash has none) and, optionally for locmoe, `locality_loss(plan, mu)`.

With `LSHConfig(exact=True)` every copy is its own bucket, the centroids are the rows in the same
order, so the forward is bit-identical to the layer without LSH and the gradients agree within
float32 rounding (tested in `tests/test_moe_lm.py`).

Statistics per forward (`MoEFFN.last_stats`, summed over layers by `MoELM.stats`): copies kept,
dropped, centroids (compression rate = centroids / kept copies) and copies whose expert lives on
the token's node ("local share").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lshsim.dispatch import RouterConfig, aux_loss, contiguous_placement, locality_loss, route
from lshsim.dispatch.lsh import LSHConfig, compress, residuals, restore

__all__ = ["MoELMConfig", "MoEFFN", "MoELM", "ExpertBank", "token_ranks", "lsh_config_from_dict"]

VOCAB_SIZE = 256  # bytes


@dataclass(frozen=True)
class MoELMConfig:
    """Sizes and MoE options of `MoELM`.

    router:          RouterConfig of every MoE layer (name, k, capacity_factor, locality_bonus).
    lsh:             LSHConfig of the LSH-MoE compression, or None (no compression). Each layer
                     uses seed lsh.seed + layer index (independent rotations per layer).
    lsh_residual:    restore with residual compensation E(c) + (x - c) (True) or E(c) (False).
    world_size:      W simulated ranks (capacity buffers, LSH groups, locality).
    gpus_per_node:   ranks per simulated node.
    aux_alpha:       weight of the Switch load-balance loss (0 switches it off).
    locality_mu:     weight of LocMoE's locality loss (locmoe only; 0 = off).
    """

    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    d_ffn: int = 512
    num_experts: int = 8
    moe_every: int = 1
    seq_len: int = 128
    vocab_size: int = VOCAB_SIZE
    router: RouterConfig = field(default_factory=RouterConfig)
    lsh: LSHConfig | None = None
    lsh_residual: bool = True
    world_size: int = 4
    gpus_per_node: int = 2
    aux_alpha: float = 0.01
    locality_mu: float = 0.0

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "d_ffn", "num_experts", "moe_every", "seq_len",
                     "vocab_size", "world_size", "gpus_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.router.name == "locmoe" and self.d_model % self.num_experts:
            raise ValueError(f"locmoe: d_model={self.d_model} is not divisible by num_experts={self.num_experts}")
        # raises with the numbers when the experts do not spread over the ranks
        contiguous_placement(self.num_experts, self.world_size, self.gpus_per_node)

    def is_moe(self, layer: int) -> bool:
        return (layer + 1) % self.moe_every == 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["router"] = {"name": self.router.name, "k": self.router.k, "capacity_factor": self.router.capacity_factor,
                         "drop_policy": self.router.drop_policy, "locality_bonus": self.router.locality_bonus}
        return out


def lsh_config_from_dict(values: dict | None) -> LSHConfig | None:
    return None if values is None else LSHConfig(**values)


def token_ranks(num_tokens: int, world_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T,) int64 simulated source rank of each token: the tokens split over W ranks in order.

    >>> token_ranks(8, 4).tolist()
    [0, 0, 1, 1, 2, 2, 3, 3]
    """
    return torch.arange(num_tokens, device=device) * world_size // max(num_tokens, 1)


class ExpertBank(nn.Module):
    """E expert FFNs gelu(x W1) W2: w1 (E, d, f), w2 (E, f, d), applied per expert on contiguous rows."""

    def __init__(self, num_experts: int, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(num_experts, d_model, d_ffn) / math.sqrt(d_model))
        self.w2 = nn.Parameter(torch.randn(num_experts, d_ffn, d_model) / math.sqrt(d_ffn))

    def forward(self, rows: torch.Tensor, rows_per_expert: list[int]) -> torch.Tensor:
        """rows (N, d) grouped by expert (rows_per_expert[e] rows of expert e, in order) -> (N, d)."""
        outs = []
        for expert, chunk in enumerate(torch.split(rows, rows_per_expert)):
            if chunk.shape[0]:
                outs.append(F.gelu(chunk @ self.w1[expert]) @ self.w2[expert])
        if not outs:
            return rows.new_zeros(rows.shape)
        return torch.cat(outs)


class MoEFFN(nn.Module):
    """One MoE FFN on `lshsim.dispatch` (see the module docstring, steps 1-7)."""

    def __init__(self, config: MoELMConfig, layer: int = 0) -> None:
        super().__init__()
        self.config = config
        self.layer = layer
        self.router = config.router
        self.gate = nn.Linear(config.d_model, config.num_experts, bias=False) if config.router.name not in (
            "hash", "locmoe") else None
        if self.gate is not None:
            nn.init.normal_(self.gate.weight, std=0.02)
        self.experts = ExpertBank(config.num_experts, config.d_model, config.d_ffn)
        self.placement = contiguous_placement(config.num_experts, config.world_size, config.gpus_per_node)
        self.lsh = None if config.lsh is None else LSHConfig(**{**asdict(config.lsh), "seed": config.lsh.seed + layer})
        self.last_stats: dict = {}

    def _placement_on(self, device: torch.device):
        if self.placement.expert_to_rank.device != device:
            from lshsim.dispatch import Placement

            self.placement = Placement(self.placement.expert_to_rank.to(device), self.placement.rank_to_node.to(device))
        return self.placement

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, d), token_ids (T,) -> (y (T, d), auxiliary loss (scalar))."""
        config = self.config
        num_tokens, d_model = x.shape
        num_experts, world_size = config.num_experts, config.world_size
        placement = self._placement_on(x.device)
        token_rank = token_ranks(num_tokens, world_size, x.device)  # (T,)
        inputs = {}
        if self.router.name == "hash":
            inputs["token_ids"] = token_ids
        elif self.router.name == "locmoe":
            inputs["hidden"] = x
        else:
            inputs["logits"] = self.gate(x).float()  # (T, E)
        plan = route(self.router, placement, token_rank=token_rank, **inputs)
        # 3. kept copies, ordered by (expert, source rank, token): the rows each expert receives
        kept = plan.kept  # (T, k)
        token_of_choice = torch.arange(num_tokens, device=x.device).unsqueeze(1).expand_as(kept)[kept]  # (N,)
        expert_of_choice = plan.expert_index[kept]  # (N,)
        weight_of_choice = plan.gate_weight[kept]  # (N,) keeps the gate's gradient
        group = expert_of_choice * world_size + token_rank[token_of_choice]  # (N,)
        key = group * num_tokens + token_of_choice  # unique per copy (a token picks an expert once)
        order = torch.sort(key).indices  # (N,)
        token_sorted = token_of_choice[order]
        group_sorted = group[order]
        rows = x[token_sorted]  # (N, d)
        counts = torch.bincount(expert_of_choice, minlength=num_experts)  # (E,)
        if self.lsh is None:
            out = self.experts(rows, counts.tolist())  # (N, d)
            num_centroids = rows.shape[0]
        else:
            compressed = compress(rows, group_sorted, self.lsh)
            per_expert = torch.bincount(compressed.centroid_group // world_size, minlength=num_experts)
            centroid_out = self.experts(compressed.centroids, per_expert.tolist())  # (B, d)
            residual = residuals(rows, compressed) if config.lsh_residual else None
            out = restore(centroid_out, compressed, residual)  # (N, d)
            num_centroids = compressed.num_centroids
        # 6. combine: y_t = sum over kept choices of gate weight * expert output
        weighted = out * weight_of_choice[order].to(out.dtype).unsqueeze(1)  # (N, d)
        y = torch.zeros_like(x).index_add(0, token_sorted, weighted)  # (T, d)
        # 7. auxiliary losses
        loss = x.new_zeros(())
        if plan.router_logits is not None and config.aux_alpha > 0:
            loss = loss + aux_loss(plan, config.aux_alpha)
        if self.router.name == "locmoe" and config.locality_mu > 0:
            loss = loss + locality_loss(plan, config.locality_mu)
        with torch.no_grad():
            token_node = placement.rank_to_node[token_rank]  # (T,)
            local = placement.expert_to_node[expert_of_choice] == token_node[token_of_choice]
            self.last_stats = {"kept": kept.sum(), "routed": plan.routed.sum(), "centroids": num_centroids,
                               "local": local.sum()}
        return y, loss


class DenseFFN(nn.Module):
    def __init__(self, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ffn, bias=False)
        self.w2 = nn.Linear(d_ffn, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class Block(nn.Module):
    def __init__(self, config: MoELMConfig, layer: int) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.ln1 = nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.ffn = MoEFFN(config, layer) if config.is_moe(layer) else DenseFFN(config.d_model, config.d_ffn)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d_model, dim=2)
        heads = lambda t: t.reshape(batch, seq, self.num_heads, d_model // self.num_heads).transpose(1, 2)  # noqa: E731
        attn = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)  # (B, H, S, dh)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, seq, d_model))
        h = self.ln2(x).reshape(batch * seq, d_model)
        if isinstance(self.ffn, MoEFFN):
            y, loss = self.ffn(h, token_ids.reshape(-1))
        else:
            y, loss = self.ffn(h), x.new_zeros(())
        return x + y.reshape(batch, seq, d_model), loss


class MoELM(nn.Module):
    """Decoder-only byte-level LM with MoE FFNs on `lshsim.dispatch` (module docstring)."""

    def __init__(self, config: MoELMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Parameter(torch.zeros(config.seq_len, config.d_model))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)

    def moe_layers(self) -> list[MoEFFN]:
        return [block.ffn for block in self.blocks if isinstance(block.ffn, MoEFFN)]

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """tokens (B, S) int64 bytes -> (logits (B, S, V), cross-entropy or None, auxiliary loss)."""
        batch, seq = tokens.shape
        if seq > self.config.seq_len:
            raise ValueError(f"sequence of {seq} tokens exceeds seq_len={self.config.seq_len}")
        x = self.embed(tokens) + self.pos[:seq]
        aux = x.new_zeros(())
        for block in self.blocks:
            x, loss = block(x, tokens)
            aux = aux + loss
        logits = self.ln_f(x) @ self.embed.weight.t()  # (B, S, V), tied head
        ce = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                           targets.reshape(-1))
        return logits, ce, aux

    def stats(self) -> dict:
        """Summed over the MoE layers of the last forward: kept, routed and local copies, centroids;
        compression_rate = centroids / kept, local_share = local / kept, drop_rate = 1 - kept / routed."""
        totals = {"kept": 0, "routed": 0, "centroids": 0, "local": 0}
        for layer in self.moe_layers():
            for name in totals:
                totals[name] += int(layer.last_stats.get(name, 0))
        kept = max(totals["kept"], 1)
        return {**totals, "compression_rate": totals["centroids"] / kept, "local_share": totals["local"] / kept,
                "drop_rate": 1.0 - totals["kept"] / max(totals["routed"], 1)}
