"""Workload files: what one executor run does, as a validated frozen dataclass.

A workload is a YAML mapping (see `data/workloads/*.yaml`). Every field has a default except the
sizes; an unknown or badly typed field is a `ValueError` that names it (`workload field
'router.k': ...`). Example::

    name: uniform-d1024-t4k
    role: null                  # calibration (a calibration may be fitted on its traces) | held-out (never)
    tokens_per_rank: 4096       # T, tokens on every rank
    d_model: 1024               # d
    d_ffn: 4096                 # hidden size of every expert FFN
    num_experts: 8              # E, spread over the ranks by `placement`
    placement: contiguous       # contiguous | round_robin
    gpus_per_node: null         # ranks per node (null: all ranks on one node)
    router: {name: topk, k: 2, capacity_factor: 1.25, drop_policy: position, locality_bonus: 1.0}
                                # (+ options: {...}, the parameters of a registered plugin router)
    skew: 0.0                   # expert popularity: logits += skew * log(Dirichlet(1,...,1))
    seed: 0
    inputs: synthetic           # or a .pt / .npy file with (W*T, d) hidden states
    input_clusters: null        # synthetic only: K cluster centres (unit norm, shared by all ranks);
    input_noise: 0.0            #   token = centre + noise * N(0, I/d) (lshsim.dispatch.lsh.clustered_tokens)
    dtype: auto                 # auto (bf16 on GPU, float32 on CPU) | float32 | bfloat16
    alltoall: direct            # direct | groupwise (LocMoE: intra-node first, then inter-node) |
                                #   node_dedup (DeepEP-like: a token crosses the network once per node,
                                #   then is forwarded inside the node; the combine sums on the way back):
                                #   an algorithm of lshsim.algorithms that the executor implements
    dispatch_format: native     # native (the tokens' dtype) | fp8: the dispatch all-to-all sends
                                #   float8_e4m3fn values + one float32 scale per 128 (DeepEP's count);
                                #   combine and the backward stay in the tokens' dtype
    lsh: null                   # or a mapping of lshsim.dispatch.lsh.LSHConfig fields
    backward: true
    warmup: 2
    iterations: 5
    sync_phases: true           # align ranks (tiny all-reduce, untimed) before each all-to-all
    world_size: null            # if set, a run on another number of ranks is refused
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from lshsim import bounds
from lshsim.algorithms import canonical_algorithm
from lshsim.checks import FILE_NAME_PATTERN, FILE_NAME_RULE, finite_number, non_negative_int, positive_int
from lshsim.dispatch import ROUTERS, RouterConfig
from lshsim.dispatch.routers import effective_k
from lshsim.readers import load_yaml

__all__ = ["WorkloadConfig", "load_workload", "DTYPES", "PLACEMENT_NAMES", "ROLES", "NAME_PATTERN", "LIMITS"]

DTYPES = ("auto", "float32", "bfloat16")
PLACEMENT_NAMES = ("contiguous", "round_robin")
ROLES = ("calibration", "held-out")
_ROUTER_FIELDS = ("name", "k", "capacity_factor", "drop_policy", "locality_bonus", "options")


#: a workload's name names its trace file (NAME.json under --out-dir): letters, digits, '.', '_',
#: '+' and '-', starting with a letter or a digit, at most 128 characters, no '..'; so no path
#: separator, no leading dot and no way out of the output folder.
NAME_PATTERN = FILE_NAME_PATTERN     # the name becomes the trace's file name
#: plausible ranges of the sizes, from the one table `lshsim.bounds` (larger values are typos or unit
#: errors; whether the machine holds the run is the commands' check): tokens per rank <= 2^24,
#: d_model and d_ffn <= 2^20, experts <= 2^16, ranks <= 2^20, ranks per node <= 1024, warmup and
#: iterations <= 2^20; skew and input_noise <= 100 (`_checked` below).
LIMITS = {name: int(bounds.maximum(bounds.kind_of(name)))
          for name in ("tokens_per_rank", "d_model", "d_ffn", "num_experts", "iterations", "warmup", "world_size",
                       "gpus_per_node", "input_clusters")}


#: the most hash functions an LSH workload may concatenate (the paper uses 6; the bucket count grows
#: as (2 d')^L)
LSH_MAX_HASHES = int(bounds.maximum("lsh_hashes"))


def _field_error(name: str, message: str) -> ValueError:
    return ValueError(f"workload field {name!r}: {message}")


def _checked(check, name: str, value: object, **limits):
    """`check(name, value, **limits)` of `lshsim.checks`, its error naming the workload field."""
    try:
        return check(name, value, **limits)
    except ValueError as error:
        raise _field_error(name, str(error)) from None


def _plausible(name: str, value: object, kind: str) -> None:
    """Refuse a value above the plausibility limit of its kind (`lshsim.bounds`), naming the field."""
    text = bounds.describe(kind, value)
    if text is not None:
        raise _field_error(name, text)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _field_error(name, f"{value!r} must be one of {list(allowed)}")
    return value


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _field_error(name, f"{value!r} must be true or false")
    return value


@dataclass(frozen=True)
class WorkloadConfig:
    """One executor workload; validated on construction (errors name the field)."""

    tokens_per_rank: int
    d_model: int
    d_ffn: int
    num_experts: int
    name: str = "workload"
    role: str | None = None
    placement: str = "contiguous"
    gpus_per_node: int | None = None
    router: RouterConfig = field(default_factory=RouterConfig)
    skew: float = 0.0
    seed: int = 0
    inputs: str = "synthetic"
    input_clusters: int | None = None
    input_noise: float = 0.0
    dtype: str = "auto"
    alltoall: str = "direct"
    dispatch_format: str = "native"
    lsh: dict | None = None
    backward: bool = True
    warmup: int = 2
    iterations: int = 5
    sync_phases: bool = True
    world_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name) or ".." in self.name:
            raise _field_error("name", f"{self.name!r} must be {FILE_NAME_RULE}")
        for name in ("tokens_per_rank", "d_model", "d_ffn", "num_experts", "iterations"):
            _checked(positive_int, name, getattr(self, name))
        _checked(non_negative_int, "warmup", self.warmup)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -2 ** 63 <= self.seed < 2 ** 63:
            raise _field_error("seed", f"{self.seed!r} must be an integer in [-2^63, 2^63)")
        for name in ("gpus_per_node", "world_size"):
            if getattr(self, name) is not None:
                _checked(positive_int, name, getattr(self, name))
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if value is not None and _is_int(value) and value > limit:
                raise _field_error(name, bounds.describe(bounds.kind_of(name), value))
        if self.role is not None:
            _choice("role", self.role, ROLES)
        _choice("placement", self.placement, PLACEMENT_NAMES)
        _choice("dtype", self.dtype, DTYPES)
        # an algorithm of lshsim.algorithms that the executor implements, stored by its canonical name
        _choice("dispatch_format", self.dispatch_format, ("native", "fp8"))
        object.__setattr__(self, "alltoall", _checked(lambda _, value: canonical_algorithm(value, side="executor"),
                                                      "alltoall", self.alltoall))
        if not isinstance(self.router, RouterConfig):
            raise _field_error("router", f"{self.router!r} must be a RouterConfig")
        if self.router.k > self.num_experts:    # a RuntimeError of torch.topk in the run before
            raise _field_error("router.k", f"{self.router.k} must be <= num_experts={self.num_experts} (choices "
                                           f"per token among the experts)")
        _checked(finite_number, "skew", self.skew, minimum=0.0)
        _plausible("skew", self.skew, "skew")          # the popularity is degenerate above (lshsim.bounds)
        if not isinstance(self.inputs, str) or not self.inputs:
            raise _field_error("inputs", f"{self.inputs!r} must be 'synthetic' or a file path")
        if self.inputs != "synthetic" and Path(self.inputs).suffix not in (".pt", ".npy"):
            raise _field_error("inputs", f"{self.inputs!r} must be 'synthetic' or a .pt / .npy file")
        if self.input_clusters is not None:
            _checked(positive_int, "input_clusters", self.input_clusters)
            if self.inputs != "synthetic":
                raise _field_error("input_clusters", "applies to synthetic inputs only (inputs: synthetic)")
        _checked(finite_number, "input_noise", self.input_noise, minimum=0.0)
        _plausible("input_noise", self.input_noise, "noise")      # the centres are lost in the noise above
        if self.lsh is not None and not isinstance(self.lsh, dict):
            raise _field_error("lsh", f"{self.lsh!r} must be a mapping of LSHConfig fields or null")
        lsh = self.lsh_config()       # the LSH fields are checked now, not when the run reaches them
        if lsh is not None:
            # the projection is a (d_model, num_hashes * proj_dim) matrix: 1e12 hashes or dimensions
            # were an allocation error (a traceback), 1e6 an hour of hashing
            if lsh.num_hashes > LSH_MAX_HASHES:
                raise _field_error("lsh.num_hashes", bounds.describe("lsh_hashes", lsh.num_hashes))
            if lsh.proj_dim is not None and lsh.proj_dim > lsh.padded_dim(self.d_model):
                raise _field_error("lsh.proj_dim", f"{lsh.proj_dim} exceeds d_model={self.d_model} (the "
                                                   f"dimension each hash projects from)")
        if self.alltoall == "node_dedup" and self.lsh is not None:
            raise _field_error("alltoall", "node_dedup sends tokens once per node; with lsh the rows are "
                                           "centroids of one expert each, so there is nothing to deduplicate "
                                           "(use direct or groupwise with lsh)")
        for name in ("backward", "sync_phases"):
            _boolean(name, getattr(self, name))
        if self.router.name == "locmoe" and self.d_model % self.num_experts != 0:
            raise _field_error("d_model", f"{self.d_model} must be divisible by num_experts={self.num_experts} "
                                          "for the LocMoE GrAP gate")
        if self.world_size is not None and self.num_experts % self.world_size != 0:
            raise _field_error("num_experts", f"{self.num_experts} is not divisible by world_size={self.world_size}")

    # ---- derived -----------------------------------------------------------------------------
    def check_world(self, world_size: int) -> None:
        """Refuse a run on `world_size` ranks that this workload cannot use."""
        if self.world_size is not None and self.world_size != world_size:
            raise _field_error("world_size", f"the workload asks for {self.world_size} ranks, the run has {world_size}")
        if self.num_experts % world_size != 0:
            raise _field_error("num_experts", f"{self.num_experts} is not divisible by the {world_size} ranks")
        per_node = self.ranks_per_node(world_size)
        if world_size % per_node != 0:
            raise _field_error("gpus_per_node", f"{per_node} does not divide the {world_size} ranks")

    def ranks_per_node(self, world_size: int) -> int:
        return world_size if self.gpus_per_node is None else min(self.gpus_per_node, world_size)

    def lsh_config(self):
        """The `lshsim.dispatch.lsh.LSHConfig` of the LSH path, or None without LSH."""
        if self.lsh is None:
            return None
        from lshsim.dispatch.lsh import LSHConfig

        known = {f.name for f in fields(LSHConfig)}
        unknown = sorted(set(self.lsh) - known)
        if unknown:
            raise _field_error(f"lsh.{unknown[0]}", f"unknown LSHConfig field; known: {sorted(known)}")
        try:
            return LSHConfig(**self.lsh)
        except (TypeError, ValueError) as error:
            raise _field_error("lsh", str(error)) from None

    def to_dict(self) -> dict:
        """Plain data (YAML/JSON-ready); `from_dict(to_dict())` is the identity."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["router"] = {name: getattr(self.router, name) for name in _ROUTER_FIELDS if name != "options"}
        if self.router.options:  # a router's own parameters (a plugin's), only when it has any
            out["router"]["options"] = dict(self.router.options)
        out["lsh"] = None if self.lsh is None else dict(self.lsh)
        return out

    @staticmethod
    def from_dict(data: object) -> "WorkloadConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a workload must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(WorkloadConfig)}
        for key in data:
            if key not in known:
                raise _field_error(str(key), f"unknown field (given {data[key]!r}); known: {sorted(known)}")
        for key in ("tokens_per_rank", "d_model", "d_ffn", "num_experts"):
            if key not in data:
                raise _field_error(key, "missing (required)")
        values = dict(data)
        router = values.get("router", {})
        if router is None:
            router = {}
        if not isinstance(router, dict):
            raise _field_error("router", f"{router!r} must be a mapping")
        for key in router:
            if key not in _ROUTER_FIELDS:
                raise _field_error(f"router.{key}", f"unknown field (given {router[key]!r}); known: {list(_ROUTER_FIELDS)}")
        if "name" in router and not isinstance(router["name"], str):
            raise _field_error("router.name", f"{router['name']!r} must be the name of a router; known: "
                                              f"{', '.join(sorted(ROUTERS))}")
        if router.get("options") is not None and not isinstance(router["options"], dict):
            raise _field_error("router.options", f"{router['options']!r} must be a mapping")
        if "drop_policy" in router and not isinstance(router["drop_policy"], str):
            raise _field_error("router.drop_policy", f"{router['drop_policy']!r} must be text")
        router_values = dict(router)
        if router_values.get("options") is None:
            router_values.pop("options", None)
        if "k" not in router_values and router_values.get("name") in ROUTERS:
            router_values["k"] = effective_k(router_values["name"])  # a router's fixed k (hash: 1)
        try:
            values["router"] = RouterConfig(**router_values)
        except ValueError as error:
            text = str(error)
            bad = next((key for key in _ROUTER_FIELDS if text.startswith(f"{key}=")), None)
            if bad is None and text.startswith("option"):
                bad = "options"
            if bad is None and "router" in text:
                bad = "name"
            raise _field_error(f"router.{bad or 'name'}", text) from None
        for key in ("skew", "input_noise"):
            if isinstance(values.get(key), int) and not isinstance(values.get(key), bool):
                values[key] = float(values[key])
        return WorkloadConfig(**values)


def load_workload(path: str | Path) -> WorkloadConfig:
    """Read and validate a workload YAML file."""
    path = Path(path)
    data = load_yaml(path, what="workload file")     # missing file, folder, syntax, duplicate keys: refused
    try:
        return WorkloadConfig.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
