"""Expert placement: experts -> ranks -> nodes.

A `Placement` says on which rank (GPU) every expert lives and on which node (server) every rank
lives. Two builders cover the usual layouts:

* `contiguous_placement`: rank r holds experts [r*E/W, (r+1)*E/W) (DeepSpeed, Tutel, Megatron);
* `round_robin_placement`: expert e lives on rank e mod W.

Ranks are grouped into nodes contiguously: rank r is on node r // gpus_per_node.
An explicit mapping (`Placement.from_lists`) covers anything else, including expert counts that do
not divide evenly across ranks.

Expert-parallel groups (`GroupedPlacement`, `expert_parallel_placement`): with EP x DP = W ranks,
the ranks form DP groups of EP consecutive ranks (group g = ranks [g EP, (g + 1) EP), Megatron's and
DeepSpeed's layout, so a group of <= gpus_per_node ranks stays on one node); every group holds all E
experts (E / EP per rank, contiguous within the group: `Placement` of the group, over its local
ranks 0..EP-1 and its own nodes renumbered 0..), and a token's experts are those of its rank's group.
`strided_expert_parallel_placement` builds MindSpore's layout under model parallelism instead: the
groups take one rank of every `stride` (the ranks of one model-parallel index), so they span nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lshsim.checks import positive_int

__all__ = ["Placement", "contiguous_placement", "round_robin_placement", "PLACEMENTS", "make_placement",
           "GroupedPlacement", "expert_parallel_placement", "strided_expert_parallel_placement"]


@dataclass(frozen=True)
class Placement:
    """Where experts and ranks live.

    Fields:
        expert_to_rank: (E,) int64, rank that holds expert e.
        rank_to_node:   (W,) int64, node (server) index of rank r.
    """

    expert_to_rank: torch.Tensor  # (E,) int64
    rank_to_node: torch.Tensor  # (W,) int64

    def __post_init__(self) -> None:
        e2r, r2n = self.expert_to_rank, self.rank_to_node
        if e2r.ndim != 1 or e2r.numel() == 0:
            raise ValueError(f"expert_to_rank must be a non-empty 1-D tensor, got shape {tuple(e2r.shape)}")
        if r2n.ndim != 1 or r2n.numel() == 0:
            raise ValueError(f"rank_to_node must be a non-empty 1-D tensor, got shape {tuple(r2n.shape)}")
        if e2r.dtype != torch.int64 or r2n.dtype != torch.int64:
            raise ValueError(f"placement tensors must be int64, got {e2r.dtype} and {r2n.dtype}")
        world_size = r2n.numel()
        if int(e2r.min()) < 0 or int(e2r.max()) >= world_size:
            bad = int(e2r.max()) if int(e2r.max()) >= world_size else int(e2r.min())
            raise ValueError(f"expert_to_rank holds rank {bad}, outside [0, world_size={world_size})")
        if int(r2n.min()) < 0:
            raise ValueError(f"rank_to_node holds negative node {int(r2n.min())}")
        # read once here: the routers ask for it on every call, and on a GPU a read-back is a
        # host synchronisation
        object.__setattr__(self, "_num_nodes", int(r2n.max()) + 1)

    @property
    def num_experts(self) -> int:
        return self.expert_to_rank.numel()

    @property
    def world_size(self) -> int:
        return self.rank_to_node.numel()

    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @property
    def expert_to_node(self) -> torch.Tensor:
        """(E,) int64 node of every expert."""
        return self.rank_to_node[self.expert_to_rank]

    def experts_on_rank(self, rank: int) -> torch.Tensor:
        """Sorted expert ids held by `rank`, (E_r,) int64."""
        return torch.nonzero(self.expert_to_rank == rank).flatten()

    @staticmethod
    def from_lists(expert_to_rank: list[int], rank_to_node: list[int]) -> "Placement":
        """An explicit placement, e.g. 6 experts on 4 ranks: from_lists([0, 0, 1, 1, 2, 3], [0, 0, 1, 1])."""
        return Placement(torch.as_tensor(expert_to_rank, dtype=torch.int64),
                         torch.as_tensor(rank_to_node, dtype=torch.int64))


def _check_counts(num_experts: int, world_size: int, gpus_per_node: int) -> None:
    for name, value in (("num_experts", num_experts), ("world_size", world_size), ("gpus_per_node", gpus_per_node)):
        positive_int(name, value)
    if world_size % gpus_per_node != 0:
        raise ValueError(f"world_size={world_size} is not a multiple of gpus_per_node={gpus_per_node}")
    if num_experts % world_size != 0:
        raise ValueError(
            f"num_experts={num_experts} is not divisible across world_size={world_size} ranks; "
            "pass an explicit Placement.from_lists(...) that says which rank holds which expert")


def _rank_to_node(world_size: int, gpus_per_node: int) -> torch.Tensor:
    return torch.arange(world_size, dtype=torch.int64) // gpus_per_node  # (W,)


def contiguous_placement(num_experts: int, world_size: int, gpus_per_node: int = 8) -> Placement:
    """Rank r holds experts [r*E/W, (r+1)*E/W).

    >>> contiguous_placement(8, 4, 2).expert_to_rank.tolist()
    [0, 0, 1, 1, 2, 2, 3, 3]
    """
    _check_counts(num_experts, world_size, gpus_per_node)
    experts_per_rank = num_experts // world_size
    expert_to_rank = torch.arange(num_experts, dtype=torch.int64) // experts_per_rank  # (E,)
    return Placement(expert_to_rank, _rank_to_node(world_size, gpus_per_node))


def round_robin_placement(num_experts: int, world_size: int, gpus_per_node: int = 8) -> Placement:
    """Expert e lives on rank e mod W.

    >>> round_robin_placement(8, 4, 2).expert_to_rank.tolist()
    [0, 1, 2, 3, 0, 1, 2, 3]
    """
    _check_counts(num_experts, world_size, gpus_per_node)
    expert_to_rank = torch.arange(num_experts, dtype=torch.int64) % world_size  # (E,)
    return Placement(expert_to_rank, _rank_to_node(world_size, gpus_per_node))


PLACEMENTS = {"contiguous": contiguous_placement, "round_robin": round_robin_placement}


def make_placement(name: str, num_experts: int, world_size: int, gpus_per_node: int = 8) -> Placement:
    """Build a placement by registry name ('contiguous' or 'round_robin')."""
    if name not in PLACEMENTS:
        raise ValueError(f"unknown placement {name!r}; known: {sorted(PLACEMENTS)}")
    return PLACEMENTS[name](num_experts, world_size, gpus_per_node)


@dataclass(frozen=True)
class GroupedPlacement:
    """Expert parallelism in DP groups of EP ranks (module docstring).

    Fields:
        ep:           ranks per expert-parallel group (EP), a divisor of the world size.
        groups:       (DP, EP) int64, the global ranks of each group (row g = ranks g EP .. g EP + EP - 1).
        placements:   one `Placement` per group over its local ranks (expert e on local rank
                      e // (E / EP)) and its nodes renumbered 0.. in order.
        rank_to_node: (W,) int64, node of every global rank.
    """

    ep: int
    groups: torch.Tensor
    placements: tuple
    rank_to_node: torch.Tensor

    @property
    def world_size(self) -> int:
        return self.rank_to_node.numel()

    @property
    def num_groups(self) -> int:
        return self.groups.shape[0]

    @property
    def num_experts(self) -> int:
        return self.placements[0].num_experts

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.ep


def expert_parallel_placement(num_experts: int, rank_to_node: torch.Tensor, ep: int) -> GroupedPlacement:
    """DP = W / EP groups of EP consecutive ranks, each holding all experts contiguously.

    Refuses (ValueError naming the numbers) an EP that does not divide the world size or the experts.

    >>> p = expert_parallel_placement(4, torch.tensor([0, 0, 1, 1]), ep=2)
    >>> p.groups.tolist(), p.placements[1].expert_to_rank.tolist(), p.placements[1].rank_to_node.tolist()
    ([[0, 1], [2, 3]], [0, 0, 1, 1], [0, 0])
    """
    world_size = int(rank_to_node.numel())
    positive_int("ep", ep)
    if ep > world_size or world_size % ep != 0:
        raise ValueError(f"ep={ep}: the expert-parallel group size must divide the world size {world_size} "
                         f"(EP x DP = W)")
    groups = torch.arange(world_size, dtype=torch.int64).reshape(world_size // ep, ep)      # (DP, EP)
    return _grouped_placement(num_experts, rank_to_node, groups)


def _grouped_placement(num_experts: int, rank_to_node: torch.Tensor, groups: torch.Tensor) -> GroupedPlacement:
    """Every group of `groups` ((G, EP) global ranks) holds all experts, E / EP per rank contiguously,
    over its local ranks and its nodes renumbered 0..; ValueError when EP does not divide E."""
    ep = int(groups.shape[1])
    if num_experts % ep != 0:
        raise ValueError(f"ep={ep}: num_experts={num_experts} is not a multiple of the group size "
                         f"({num_experts} % {ep} = {num_experts % ep}); every rank of a group holds E / EP experts")
    expert_to_rank = torch.arange(num_experts, dtype=torch.int64) // (num_experts // ep)    # (E,) local ranks
    placements = []
    for ranks in groups:
        _, local_nodes = torch.unique(rank_to_node[ranks], sorted=True, return_inverse=True)
        placements.append(Placement(expert_to_rank, local_nodes.to(torch.int64)))
    return GroupedPlacement(ep=ep, groups=groups, placements=tuple(placements), rank_to_node=rank_to_node)


def strided_expert_parallel_placement(num_experts: int, rank_to_node: torch.Tensor, ep: int,
                                      stride: int) -> GroupedPlacement:
    """Expert-parallel groups of EP ranks taken `stride` apart: MindSpore's layout under model parallelism.

    With model parallel MP (= stride) innermost (rank r = replica x MP + m, MindSpore's device matrix
    (data parallel, model parallel)), the W / MP data-parallel replicas are cut into blocks of EP, and
    the ranks of one model-parallel index m in block b form a group: ranks (b EP + i) MP + m, i < EP.
    Every group holds all experts (E / EP per rank); a token's experts are those of its rank's group.
    MindSpore requires EP to divide the data-parallel degree W / MP (`_check_moe_config`: data_parallel %
    expert_parallel == 0); a ValueError names the numbers otherwise.

    >>> p = strided_expert_parallel_placement(2, torch.tensor([0, 0, 1, 1]), ep=2, stride=2)
    >>> p.groups.tolist(), p.placements[0].rank_to_node.tolist()
    ([[0, 2], [1, 3]], [0, 1])
    """
    world_size = int(rank_to_node.numel())
    positive_int("ep", ep)
    positive_int("stride", stride)
    if world_size % stride != 0:
        raise ValueError(f"stride={stride}: the model-parallel degree must divide the world size {world_size}")
    replicas = world_size // stride
    if ep > replicas or replicas % ep != 0:
        raise ValueError(f"ep={ep}: with model parallel {stride} the expert-parallel degree must divide the "
                         f"data-parallel degree {world_size} / {stride} = {replicas} (MindSpore: data_parallel % "
                         f"expert_parallel == 0)")
    ranks = torch.arange(world_size, dtype=torch.int64).reshape(replicas // ep, ep, stride)   # (blocks, EP, MP)
    groups = ranks.permute(0, 2, 1).reshape(-1, ep)                                            # (W / EP, EP)
    return _grouped_placement(num_experts, rank_to_node, groups)
