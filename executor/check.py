"""`executor check`: the distributed MoE layer against the dense single-process reference.

For each case (a router, a placement, direct or group-wise all-to-all, with or without LSH), on
every rank:

1. run the distributed forward and backward on this rank's tokens (loss = sum(y * g), g seeded
   per rank);
2. run the dense reference (`reference_moe`, or its LSH counterpart) on all ranks' tokens in this
   one process, with the same seeded expert and gate weights, and the same loss;
3. compare the rank's output rows, its input gradient, the gradients of the experts it holds and
   the gate gradient (summed over ranks, since every rank holds a replica of the gate);
4. compare the bytes the rank sent in the dispatch all-to-all with the plan's traffic matrix row
   (LSH: with `lsh.compressed_send_counts` of the global plan), and the bytes of every other
   all-to-all with theirs (combine = transpose; backward = the forward's reverse).

Errors are max |a - b| / max(1, max |b|) per quantity; the maximum over ranks is reported. The LSH
finest-resolution case (`exact`) must equal the uncompressed distributed result exactly (0.0).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from lshsim.executor.dedup import dedup_groups
from lshsim.executor.comm import CommStats, fake_fp8, fp8_row_bytes, node_process_group
from lshsim.executor.moe_layer import (DistributedMoE, GateParams, MoEContext, _route, expert_ffn, expert_weights,
                                gate_params, placement_for, rank_inputs, reference_moe)
from lshsim.executor.runtime import Runtime
from lshsim.executor.workload import WorkloadConfig
from lshsim.dispatch import RouterConfig
from lshsim.dispatch.lsh import compress, compressed_send_counts, residuals, restore

__all__ = ["default_cases", "select_cases", "CASE_NAMES", "run_checks", "reference_moe_lsh"]


def default_cases(world_size: int) -> list[WorkloadConfig]:
    """Small workloads covering every router, both placements, group-wise all-to-all and LSH."""
    base = dict(tokens_per_rank=24, d_model=16, d_ffn=24, num_experts=2 * world_size, dtype="float32",
                iterations=1, warmup=0, sync_phases=False, seed=3)
    two_nodes = max(1, world_size // 2)
    cases = [
        WorkloadConfig(name="topk-k1-drops", router=RouterConfig("topk", k=1, capacity_factor=1.0), **base),
        WorkloadConfig(name="topk-k2-skew", router=RouterConfig("topk", k=2, capacity_factor=1.25), skew=2.0,
                       placement="round_robin", **base),
        WorkloadConfig(name="hash", router=RouterConfig("hash", k=1, capacity_factor=None), **base),
        WorkloadConfig(name="expert-choice", router=RouterConfig("expert_choice", k=2, capacity_factor=1.0), **base),
        WorkloadConfig(name="locmoe-groupwise", router=RouterConfig("locmoe", k=1, capacity_factor=1.5),
                       gpus_per_node=two_nodes, alltoall="groupwise", **base),
        WorkloadConfig(name="topk-lsh", router=RouterConfig("topk", k=2, capacity_factor=None),
                       lsh={"family": "hyperplane", "num_hashes": 2, "seed": 5}, **base),
        WorkloadConfig(name="locmoe-lsh-groupwise", router=RouterConfig("locmoe", k=2, capacity_factor=None),
                       gpus_per_node=two_nodes, alltoall="groupwise",
                       lsh={"family": "cross_polytope", "num_hashes": 1, "proj_dim": 2, "seed": 1}, **base),
        # the fp8 dispatch (DeepEP's format): the reference rounds every dispatched row the same way
        # the node-deduplicated dispatch and reducing combine, on two emulated nodes
        WorkloadConfig(name="topk-k4-node-dedup", router=RouterConfig("topk", k=4, capacity_factor=1.0),
                       gpus_per_node=two_nodes, alltoall="node_dedup", skew=2.0,
                       **{**base, "num_experts": 4 * world_size}),
        WorkloadConfig(name="topk-k2-node-dedup-fp8", router=RouterConfig("topk", k=2, capacity_factor=None),
                       gpus_per_node=two_nodes, alltoall="node_dedup", dispatch_format="fp8", skew=1.0,
                       placement="round_robin", **base),
        WorkloadConfig(name="topk-k2-fp8", router=RouterConfig("topk", k=2, capacity_factor=1.25),
                       dispatch_format="fp8", **{**base, "d_model": 136}),
        WorkloadConfig(name="locmoe-lsh-groupwise-fp8", router=RouterConfig("locmoe", k=2, capacity_factor=None),
                       gpus_per_node=two_nodes, alltoall="groupwise", dispatch_format="fp8",
                       lsh={"family": "cross_polytope", "num_hashes": 1, "proj_dim": 2, "seed": 1}, **base),
    ]
    return cases


#: the names of `default_cases` (the same at every world size)
CASE_NAMES = tuple(case.name for case in default_cases(2))


def select_cases(world_size: int, names: list[str] | None = None, seeds: list[int] | None = None) -> list[WorkloadConfig]:
    """The default cases named (all when None), each once per seed (named case+seedS), or with its
    own seed when `seeds` is None."""
    cases = default_cases(world_size)
    if names is not None:
        unknown = sorted(set(names) - {case.name for case in cases})
        if unknown:
            raise ValueError(f"unknown check case {unknown[0]!r}; known: {', '.join(CASE_NAMES)}")
        cases = [case for case in cases if case.name in names]
    if seeds is None:
        return cases
    return [dataclasses.replace(case, name=f"{case.name}+seed{seed}", seed=seed) for seed in seeds for case in cases]


def reference_moe_lsh(workload: WorkloadConfig, world_size: int, x_all: torch.Tensor, token_ids_all: torch.Tensor,
                      gate: GateParams, experts, projection) -> torch.Tensor:
    """The LSH-MoE layer on one process: buckets per (source rank, expert), centroids through the
    experts, E(c) + (x - c) per token, gate-weighted sum. Returns y (W*T, d)."""
    placement = placement_for(workload, world_size, x_all.device)
    config = workload.lsh_config()
    num_experts = workload.num_experts
    token_rank = torch.arange(world_size, device=x_all.device).repeat_interleave(workload.tokens_per_rank)  # (W*T,)
    plan = _route(workload, placement, gate, x_all, token_ids_all, token_rank)
    token, choice = torch.nonzero(plan.kept, as_tuple=True)  # (N,)
    expert = plan.expert_index[token, choice]  # (N,)
    tokens = x_all[token]  # (N, d)
    compressed = compress(tokens, token_rank[token] * num_experts + expert, config, projection)
    centroid_expert = compressed.centroid_group % num_experts  # (B,)
    centroids = fake_fp8(compressed.centroids) if workload.dispatch_format == "fp8" else compressed.centroids
    out = torch.zeros_like(compressed.centroids)  # (B, d)
    for e in range(num_experts):
        rows = torch.nonzero(centroid_expert == e).flatten()
        if rows.numel():
            out = out.index_copy(0, rows, expert_ffn(centroids[rows], experts.w1[e], experts.w2[e]))
    per_choice = restore(out, compressed, residuals(tokens, compressed))  # (N, d)
    weight = plan.gate_weight[token, choice].unsqueeze(1)  # (N, 1)
    return torch.zeros_like(x_all).index_add(0, token, per_choice * weight)


def _dedup_rows(plan, placement, world: int, per_node: int, tokens_per_rank: int) -> torch.Tensor:
    """(W, W) rows each rank sends in a node_dedup dispatch, from the global plan: to the rail peer
    of every node, the distinct tokens with a kept choice there (the network stage), plus, as a
    forwarder, the copies for every rank of its node that come from the sources of its rail."""
    rows = torch.zeros(world, world, dtype=torch.long)
    expert_rank = placement.expert_to_rank.cpu()
    kept = plan.kept.cpu()
    experts = plan.expert_index.cpu()
    for t in range(kept.shape[0]):
        source = t // tokens_per_rank
        dests = [int(expert_rank[experts[t, j]]) for j in range(kept.shape[1]) if kept[t, j]]
        for node in {d // per_node for d in dests}:
            forwarder = node * per_node + source % per_node
            rows[source, forwarder] += 1  # the token once per node
            for d in dests:
                if d // per_node == node:
                    rows[forwarder, d] += 1  # one copy per choice, forwarded inside the node
    return rows


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return float((a - b).abs().max()) / scale if a.numel() else 0.0


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.cpu().tolist()


def _check_case(workload: WorkloadConfig, runtime: Runtime) -> dict:
    rank, world, device = runtime.rank, runtime.world_size, runtime.device
    dtype = torch.float32
    per_node = workload.ranks_per_node(world)
    groupwise = workload.alltoall == "groupwise"
    node_group, node_ranks = node_process_group(rank, world, per_node) if groupwise else (None, None)
    groups = dedup_groups(rank, world, per_node) if workload.alltoall == "node_dedup" else None
    stats = CommStats(world)
    ctx = MoEContext(rank=rank, world_size=world, device=device, node_group=node_group, node_ranks=node_ranks,
                     dedup=groups,
                     stats=stats)
    model = DistributedMoE(workload, ctx, dtype)
    x0, ids = rank_inputs(workload, rank, device, dtype)
    g = torch.randn(x0.shape, generator=torch.Generator(device=device).manual_seed(11 + rank), device=device)
    x = x0.clone().requires_grad_(True)
    out = model.forward(x, ids)
    (out.y * g).sum().backward()

    # the reference on every rank's tokens, with the same seeded weights
    parts = [rank_inputs(workload, r, device, dtype) for r in range(world)]
    x_all = torch.cat([p[0] for p in parts]).requires_grad_(True)  # (W*T, d)
    ids_all = torch.cat([p[1] for p in parts])
    g_all = torch.cat([torch.randn(x0.shape, generator=torch.Generator(device=device).manual_seed(11 + r),
                                   device=device) for r in range(world)])
    gate = gate_params(workload, device)
    experts = expert_weights(list(range(workload.num_experts)), workload.d_model, workload.d_ffn, workload.seed,
                             device, dtype)
    if workload.lsh is None:
        y_ref, plan_ref = reference_moe(workload, world, x_all, ids_all, gate, experts)
    else:
        y_ref = reference_moe_lsh(workload, world, x_all, ids_all, gate, experts, model.projection)
        plan_ref = None
    (y_ref * g_all).sum().backward()
    rows = slice(rank * workload.tokens_per_rank, (rank + 1) * workload.tokens_per_rank)
    local = model.experts.expert_ids
    errors = {
        "output": _rel(out.y.detach(), y_ref.detach()[rows]),
        "grad_input": _rel(x.grad, x_all.grad[rows]),
        "grad_w1": _rel(model.experts.w1.grad, experts.w1.grad[local]),
        "grad_w2": _rel(model.experts.w2.grad, experts.w2.grad[local]),
    }
    if model.gate.weight is not None:
        gate_grad = model.gate.weight.grad.clone()
        if world > 1:
            dist.all_reduce(gate_grad)
        errors["grad_gate"] = _rel(gate_grad, gate.weight.grad)
    # bytes sent against the plan (rows x bytes per row; the fp8 dispatch sends fp8_row_bytes a row)
    bytes_per_token = workload.d_model * 4
    dispatch_row = fp8_row_bytes(workload.d_model) if workload.dispatch_format == "fp8" else bytes_per_token
    if workload.lsh is None and workload.alltoall == "node_dedup":
        expected = _dedup_rows(plan_ref, placement_for(workload, world, device), world,
                               workload.ranks_per_node(world), workload.tokens_per_rank)
    elif workload.lsh is None:
        expected = plan_ref.traffic_matrix(1)  # (W, W) rows
    else:
        # the expected counts are computed on the CPU, as an independent reference of the device run
        cpu = torch.device("cpu")
        token_rank = torch.arange(world).repeat_interleave(workload.tokens_per_rank)
        cpu_gate = GateParams(None if gate.weight is None else gate.weight.detach().cpu(), gate.bias.cpu())
        x_cpu = x_all.detach().cpu()
        plan_global = _route(workload, placement_for(workload, world, cpu), cpu_gate, x_cpu, ids_all.cpu(), token_rank)
        expected = compressed_send_counts(x_cpu, plan_global, workload.lsh_config())  # rows
    expected = expected.cpu()
    sent = {key: torch.tensor(value) for key, value in stats.sent_bytes.items()}
    column = expected[:, rank]  # what rank receives = what it sends back
    mismatches = [
        int((sent[("dispatch_a2a", "forward")] != expected[rank] * dispatch_row).sum()),
        int((sent[("combine_a2a", "forward")] != column * bytes_per_token).sum()),
        int((sent[("combine_a2a", "backward")] != expected[rank] * bytes_per_token).sum()),
        int((sent[("dispatch_a2a", "backward")] != column * bytes_per_token).sum()),
    ]
    errors["bytes_mismatch"] = float(sum(mismatches))
    # LSH at its finest resolution equals the uncompressed layer exactly
    if workload.lsh is not None:
        exact = dataclasses.replace(workload, lsh={**workload.lsh, "exact": True})
        exact_model = DistributedMoE(exact, dataclasses.replace(ctx, stats=None), dtype)
        with torch.no_grad():
            y_exact = exact_model.forward(x0, ids).y
            y_plain = exact_model.forward(x0, ids, use_lsh=False).y
        errors["lsh_exact_vs_plain"] = float((y_exact - y_plain).abs().max())
    names = sorted(errors)
    worst = _max_over_ranks([errors[n] for n in names], device)
    return {"name": workload.name, "errors": dict(zip(names, worst)), "dropped": out.plan.num_dropped}


def run_checks(runtime: Runtime, cases: list[WorkloadConfig] | None = None, progress=None) -> list[dict]:
    """Every case on every rank (collective); each returns its worst errors over ranks.

    progress: an object with step(text) (`lshsim.executor.runtime.Progress`), told each case's name
    before it runs, so that a launcher watching the ranks can say which case a hung rank is in."""
    cases = cases or default_cases(runtime.world_size)
    results = []
    for index, case in enumerate(cases):
        if progress is not None:
            progress.step(f"check {index + 1}/{len(cases)}: {case.name}")
        results.append(_check_case(case, runtime))
    return results
