"""The calibrated link model: `LinkModel` per link class, `LinkModels` per topology (model: see
`lshsim.calibration`, the package docstring).

A `LinkModels` is parsed once, when a topology is built (`lshsim.topology.build_topology` calls
`LinkModels.from_calibration` and keeps the result as G.graph["link_models"]); the simulator
reads it (`LinkModels.from_topology(G)`) or takes one explicitly
(`simulate_all_to_all(..., links=...)`). Nothing changes a graph after it is built: a fit that
tries candidate parameters builds new models (`LinkModels.replace`) and passes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from lshsim import bounds
from lshsim.checks import finite_number

__all__ = ["LinkModel", "LinkModels", "LinkRates", "CollectiveRates", "ChannelTerm", "curve_busbw_Bps",
           "a2a_bytes_per_rank", "a2a_duplex_bytes_per_rank", "parse_busbw_curve", "parse_channel_term",
           "CURVE_KEYS", "LINK_KEYS", "CHANNEL_KEYS"]

#: The keys of one class's block `calibration.links.CLASS` (its curve, headroom, cap and NCCL channel term).
LINK_KEYS = ("busbw_curve", "headroom", "link_max_Bps", "nccl_channels")
#: The top-level keys of a topology's `calibration:` block that mean `links.nvlink`'s LINK_KEYS, in
#: that order; `LinkModels.from_calibration` reads them and `links`, the other keys are the builder's.
CURVE_KEYS = ("a2a_busbw_curve", "a2a_link_headroom", "a2a_link_max_Bps", "a2a_nccl_channels")
#: The fields of a channel term block (`calibration.a2a_nccl_channels`; `ChannelTerm`): NCCL's p2p
#: layout (`lshsim.sim.nccl.NcclP2pConfig`), the fitted headroom, and the curve fit's window.
CHANNEL_KEYS = ("p2p_channels", "channels_per_peer", "chunk_bytes", "headroom", "threshold_window")


def curve_busbw_Bps(curve, bytes_per_rank: float) -> float:
    """Bus bandwidth of a measured curve [(bytes_per_rank, busbw_Bps), ...] at `bytes_per_rank`:
    linear in log(bytes) between neighbouring points, B(M) = B_i + (B_{i+1} - B_i)
    (ln M - ln M_i) / (ln M_{i+1} - ln M_i); clamped to the first / last value outside the curve.

    >>> curve = [(1e6, 100e9), (1e8, 300e9)]
    >>> curve_busbw_Bps(curve, 1e7) / 1e9           # halfway in log size
    200.0
    >>> curve_busbw_Bps(curve, 1e3) / 1e9, curve_busbw_Bps(curve, 1e10) / 1e9   # clamped
    (100.0, 300.0)
    """
    points = np.asarray(curve, dtype=float)                                           # (n, 2)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
        raise ValueError(f"curve must be a list of [bytes_per_rank, busbw_Bps] pairs, got shape {points.shape}")
    if not np.all(np.isfinite(points)) or points.min() <= 0 or np.any(np.diff(points[:, 0]) <= 0):
        raise ValueError("curve points must be finite and > 0, with strictly increasing bytes_per_rank")
    if not np.isfinite(bytes_per_rank) or bytes_per_rank <= 0:
        raise ValueError(f"bytes_per_rank={bytes_per_rank} must be a finite number > 0")
    return float(np.interp(np.log(bytes_per_rank), np.log(points[:, 0]), points[:, 1]))


def _off_diagonal(traffic_bytes) -> np.ndarray | None:
    traffic = np.asarray(traffic_bytes, dtype=float)                                  # (W, W)
    if traffic.shape[0] < 2:
        return None
    return traffic - np.diag(np.diag(traffic))                                         # (W, W)


def a2a_bytes_per_rank(traffic_bytes) -> float:
    """The size of an all-to-all as the curve is keyed: M = max_r max(S_r, R_r) W / (W - 1), S_r / R_r
    the bytes rank r sends to / receives from the others (diagonal excluded). Equal splits of M
    bytes per rank (M / W to every rank) give back M; uneven ones the busiest rank's load.

    >>> a2a_bytes_per_rank(np.full((4, 4), 100.0))     # 400 bytes per rank, 100 to each
    400.0
    """
    off = _off_diagonal(traffic_bytes)
    if off is None:
        return 0.0
    world = off.shape[0]
    return float(max(off.sum(axis=1).max(), off.sum(axis=0).max()) * world / (world - 1))


def a2a_duplex_bytes_per_rank(traffic_bytes) -> float:
    """The size that sets a GPU engine's capacity: M_dup = max_r (S_r + R_r) / 2 * W / (W - 1),
    S_r / R_r the bytes rank r sends to / receives from the others. Equal to
    `a2a_bytes_per_rank` for uniform traffic; smaller for skewed traffic.

    >>> a2a_duplex_bytes_per_rank(np.full((4, 4), 100.0))
    400.0
    >>> skewed = np.array([[0.0, 0.0, 0.0], [300.0, 0.0, 0.0], [300.0, 0.0, 0.0]])   # ranks 1, 2 -> rank 0
    >>> a2a_duplex_bytes_per_rank(skewed), a2a_bytes_per_rank(skewed)   # (0 + 600) / 2 * 3 / 2; 600 * 3 / 2
    (450.0, 900.0)
    """
    off = _off_diagonal(traffic_bytes)
    if off is None:
        return 0.0
    world = off.shape[0]
    return float((off.sum(axis=1) + off.sum(axis=0)).max() / 2 * world / (world - 1))


# ---- validation of the calibration block ------------------------------------------------------
def _fail(source: str, name: str, value, why: str) -> ValueError:
    return ValueError(f"{source}: {name}={value!r} {why}")


def _yaml_number(source: str, name: str, value, *, minimum: float, exclusive: bool) -> float:
    """A finite number within bounds (not a bool, not text: `lshsim.readers.load_yaml` reads a plain 2e9
    as a number, a quoted '2e9' is text and refused)."""
    if isinstance(value, str):
        raise _fail(source, name, value, "must be a finite number, not text (write it unquoted)")
    try:
        number = finite_number(name, value, minimum=minimum, exclusive=exclusive)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    bounds.check_field(name, value, source)          # a headroom, a link cap: lshsim.bounds
    return number


def parse_busbw_curve(value, *, field_name: str = "calibration.a2a_busbw_curve",
                      source: str = "<dict>") -> tuple[tuple[float, float], ...]:
    """A bus bandwidth curve: >= 2 [bytes_per_rank, bus_bandwidth_Bps] pairs, both finite and > 0,
    bytes strictly increasing; returned as a tuple of float pairs. Errors name source, field, value.

    >>> parse_busbw_curve([[1e6, 5e10], [1e9, 3e11]])
    ((1000000.0, 50000000000.0), (1000000000.0, 300000000000.0))
    >>> parse_busbw_curve([[1e6, 5e10]], source="x.yaml")
    Traceback (most recent call last):
    ...
    ValueError: x.yaml: calibration.a2a_busbw_curve=[[1000000.0, 50000000000.0]] must be a list of at least 2 [bytes_per_rank, bus_bandwidth_Bps] pairs
    """
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise _fail(source, field_name, value, "must be a list of at least 2 [bytes_per_rank, bus_bandwidth_Bps] pairs")
    curve: list[tuple[float, float]] = []
    for i, point in enumerate(value):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise _fail(source, f"{field_name}[{i}]", point, "must be a pair [bytes_per_rank, bus_bandwidth_Bps]")
        pair = []
        for j, item in enumerate(point):
            number = item
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or number <= 0:
                raise _fail(source, f"{field_name}[{i}][{j}]", item, "must be a finite number > 0")
            bounds.check(("bytes", "rate_Bps")[j], f"{field_name}[{i}][{j}]", number, source)
            pair.append(float(number))
        if curve and pair[0] <= curve[-1][0]:
            raise _fail(source, f"{field_name}[{i}][0]", point[0],
                        f"must be larger than the previous size {curve[-1][0]:g}")
        curve.append((pair[0], pair[1]))
    return tuple(curve)


@dataclass(frozen=True)
class ChannelTerm:
    """NCCL's per-peer channel term of one link class (model and cause: `lshsim.sim.nccl`).

    config:           NCCL's p2p layout the rule runs with (`NcclP2pConfig`)
    headroom:         h >= 1: a channel's throughput over its share in the equal all-to-all of the
                      same size (fitted on skewed calibration all-to-alls)
    threshold_window: the relative window around each threshold that the curve's fit left out
                      (recorded, not used to predict); None where not recorded
    """

    config: object
    headroom: float
    threshold_window: float | None = None

    def __post_init__(self) -> None:
        from lshsim.sim.nccl import NcclP2pConfig

        if not isinstance(self.config, NcclP2pConfig):
            raise ValueError(f"config must be an NcclP2pConfig, got {type(self.config).__name__}")
        object.__setattr__(self, "headroom", finite_number("headroom", self.headroom, minimum=1.0))
        if self.threshold_window is not None:
            object.__setattr__(self, "threshold_window",
                               finite_number("threshold_window", self.threshold_window, minimum=0.0))

    def to_dict(self) -> dict:
        """The calibration block (`CHANNEL_KEYS`) of this term."""
        out = {"p2p_channels": self.config.p2p_channels, "channels_per_peer": self.config.channels_per_peer,
               "chunk_bytes": self.config.chunk_bytes, "headroom": float(self.headroom)}
        if self.threshold_window is not None:
            out["threshold_window"] = float(self.threshold_window)
        return out

    def floor_s(self, traffic_bytes, curve) -> tuple[float, dict]:
        """(t_channel, info) of one all-to-all: L_send(T) / c(M), c(M) = h L_send(equal) / t_curve(M)
        (`lshsim.sim.nccl`, module docstring); 0 when no bytes leave any rank."""
        from lshsim.sim.nccl import channel_send_ratio

        traffic = np.asarray(traffic_bytes, dtype=float)
        world = traffic.shape[0]
        size = a2a_bytes_per_rank(traffic)
        if world < 2 or size <= 0:
            return 0.0, {}
        ratio = channel_send_ratio(traffic, self.config)
        curve_s = size * (world - 1) / world / curve_busbw_Bps(curve, size)
        floor = curve_s * ratio / self.headroom
        return floor, {"a2a_channel_ratio": ratio, "a2a_channel_headroom": self.headroom, "a2a_channel_floor_s": floor}


def parse_channel_term(value, *, field_name: str = "calibration.a2a_nccl_channels",
                       source: str = "<dict>") -> ChannelTerm:
    """A channel term block {p2p_channels, channels_per_peer, chunk_bytes, headroom[, threshold_window]}.

    >>> parse_channel_term({"p2p_channels": 32, "channels_per_peer": 32, "chunk_bytes": 524288, "headroom": 1.1}).headroom
    1.1
    >>> parse_channel_term({"headroom": 1.1}, source="x.yaml")
    Traceback (most recent call last):
    ...
    ValueError: x.yaml: calibration.a2a_nccl_channels={'headroom': 1.1} lacks p2p_channels, channels_per_peer, chunk_bytes
    """
    from lshsim.sim.nccl import NcclP2pConfig

    if not isinstance(value, dict):
        raise _fail(source, field_name, value, "must be a mapping with " + ", ".join(CHANNEL_KEYS))
    for key in value:
        if key not in CHANNEL_KEYS:
            raise _fail(source, f"{field_name}.{key}", value[key], "is not a known field; known: " + ", ".join(CHANNEL_KEYS))
    missing = [k for k in CHANNEL_KEYS[:4] if value.get(k) is None]
    if missing:
        raise _fail(source, field_name, value, "lacks " + ", ".join(missing))
    ints = {}
    for key in CHANNEL_KEYS[:3]:
        item = value[key]
        if isinstance(item, bool) or not isinstance(item, int):
            raise _fail(source, f"{field_name}.{key}", item, "must be a positive integer")
        bounds.check_field(f"{field_name}.{key}", item, source)     # channels, chunk_bytes: lshsim.bounds
        ints[key] = item
    try:
        config = NcclP2pConfig(**ints)
    except ValueError as error:
        raise ValueError(f"{source}: {field_name}: {error}") from None
    headroom = _yaml_number(source, f"{field_name}.headroom", value["headroom"], minimum=1.0, exclusive=False)
    window = value.get("threshold_window")
    if window is not None:
        window = _yaml_number(source, f"{field_name}.threshold_window", window, minimum=0.0, exclusive=False)
    return ChannelTerm(config, headroom, window)


def _parse_link_block(values: dict, names: dict, source: str, nominal_Bps: float) -> tuple:
    """(curve, headroom, link_max_Bps, channels) of one class's calibration fields ({key of LINK_KEYS:
    value}; `names`: {key: the field's name in messages}), each None where absent."""
    curve = headroom = link_max = channels = None
    if values.get("busbw_curve") is not None:
        curve = parse_busbw_curve(values["busbw_curve"], field_name=names["busbw_curve"], source=source)
        if not nominal_Bps > 0:
            raise _fail(source, names["busbw_curve"], values["busbw_curve"],
                        "is given but the topology has no NVLink to scale")
    if values.get("headroom") is not None:
        headroom = _yaml_number(source, names["headroom"], values["headroom"], minimum=1.0, exclusive=False)
        if curve is None:
            raise _fail(source, names["headroom"], values["headroom"],
                        f"is only allowed together with {names['busbw_curve']}")
    if values.get("link_max_Bps") is not None:
        link_max = _yaml_number(source, names["link_max_Bps"], values["link_max_Bps"], minimum=0.0, exclusive=True)
        if headroom is None:
            raise _fail(source, names["link_max_Bps"], values["link_max_Bps"],
                        f"is only allowed together with {names['headroom']}")
    if values.get("nccl_channels") is not None:
        channels = parse_channel_term(values["nccl_channels"], field_name=names["nccl_channels"], source=source)
        if curve is None:
            raise _fail(source, names["nccl_channels"], values["nccl_channels"],
                        f"is only allowed together with {names['busbw_curve']}")
    return curve, headroom, link_max, channels


# ---- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkRates:
    """What one link class gives one collective (`LinkModel.rates`).

    scale:      factor on the nominal bandwidth of every edge of the class (link_Bps / nominal_Bps)
    link_Bps:   the per-direction rate of one GPU's links of the class for this collective
    engine_Bps: the capacity of each GPU's duplex engine, None without a headroom
    info:       the sizes and rates used, as `CollectiveResult.options` reports them
    """

    scale: float
    link_Bps: float
    engine_Bps: float | None
    info: dict = field(default_factory=dict)
    channel_floor_s: float = 0.0


@dataclass(frozen=True)
class CollectiveRates:
    """What the simulator's network takes for one collective (`LinkModels.rates`).

    alpha_s:                 per-message start-up latency
    bandwidth_scale_by_kind: {edge kind: factor} for `FlowNetwork` (None: nominal bandwidths)
    gpu_engine_Bps:          capacity of each GPU's duplex engine for `FlowNetwork` (None: no engines)
    info:                    sizes and rates used, merged into `CollectiveResult.options`
    channel_floor_s:         NCCL's per-peer channel term: a direct all-to-all on one node takes
                             at least alpha_s + this (0: no term; `ChannelTerm`, `lshsim.sim.nccl`)
    """

    alpha_s: float
    bandwidth_scale_by_kind: dict | None
    gpu_engine_Bps: float | None
    info: dict = field(default_factory=dict)
    channel_floor_s: float = 0.0


@dataclass(frozen=True)
class LinkModel:
    """The calibrated model of one link class (model: `lshsim.calibration`).

    link_class:   the edge kind whose edges it sets ("nvlink", "nic", "pcie", or any kind a
                  topology builder gives its edges)
    nominal_Bps:  the per-GPU (NVLink), per-NIC or per-link bandwidth per direction the edges
                  of the class are built with; a curve point B(M) replaces it for one collective
    alpha_s:      the per-message start-up latency of a collective over the class (s, >= 0)
    busbw_curve:  None, or ((bytes_per_rank, bus_bandwidth_Bps), ...): >= 2 points, sizes
                  strictly increasing
    headroom:     None, or h >= 1 (needs a curve): duplex engines of 2 B(M_dup) per GPU and
                  links at min(h B(M), link_max_Bps)
    link_max_Bps: None (the curve's largest bus bandwidth), or B_max > 0 (needs a headroom)
    channels:     None (no channel term: the older calibrations), or a `ChannelTerm` (needs a curve):
                  a direct all-to-all takes at least its t_channel (`lshsim.sim.nccl`)

    >>> nvlink = LinkModel("nvlink", 300e9, 0.0, ((1e6, 50e9), (1e9, 300e9)))
    >>> r = nvlink.rates(np.full((4, 4), 25e6))          # 100 MB per rank, 25 MB to each
    >>> round(r.link_Bps / 1e9, 3), r.engine_Bps          # B(1e8) = 50 + 250 * 2/3 GB/s
    (216.667, None)
    >>> LinkModel("nvlink", 300e9, 0.0, headroom=1.2)
    Traceback (most recent call last):
    ...
    ValueError: headroom=1.2 needs a busbw_curve
    """

    link_class: str
    nominal_Bps: float
    alpha_s: float = 0.0
    busbw_curve: tuple | None = None
    headroom: float | None = None
    link_max_Bps: float | None = None
    channels: ChannelTerm | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.link_class, str) or not self.link_class:
            raise ValueError(f"link_class={self.link_class!r} must be a non-empty string")
        object.__setattr__(self, "nominal_Bps", finite_number("nominal_Bps", self.nominal_Bps, minimum=0.0))
        object.__setattr__(self, "alpha_s", finite_number("alpha_s", self.alpha_s, minimum=0.0))
        if self.busbw_curve is not None:
            curve = parse_busbw_curve(self.busbw_curve, field_name="busbw_curve", source=self.link_class)
            object.__setattr__(self, "busbw_curve", curve)
            if self.nominal_Bps <= 0:
                raise ValueError(f"link class {self.link_class!r} has a busbw_curve but no nominal bandwidth "
                                 f"(nominal_Bps={self.nominal_Bps}) to scale")
        if self.headroom is not None:
            object.__setattr__(self, "headroom", finite_number("headroom", self.headroom, minimum=1.0))
            if self.busbw_curve is None:
                raise ValueError(f"headroom={self.headroom} needs a busbw_curve")
        if self.link_max_Bps is not None:
            object.__setattr__(self, "link_max_Bps",
                               finite_number("link_max_Bps", self.link_max_Bps, minimum=0.0, exclusive=True))
            if self.headroom is None:
                raise ValueError(f"link_max_Bps={self.link_max_Bps} needs a headroom")
        if self.channels is not None:
            if not isinstance(self.channels, ChannelTerm):
                raise ValueError(f"channels must be a ChannelTerm, got {type(self.channels).__name__}")
            if self.busbw_curve is None:
                raise ValueError("a channel term needs a busbw_curve")

    def rates(self, traffic_bytes) -> LinkRates | None:
        """The rates of this class for one collective of `traffic_bytes` (W, W); None when the
        class keeps its nominal bandwidth (no curve, or no bytes leave any rank)."""
        curve = self.busbw_curve
        if not curve:
            return None
        size = a2a_bytes_per_rank(traffic_bytes)
        if size <= 0:
            return None
        busbw = curve_busbw_Bps(curve, size)
        info = {"a2a_bytes_per_rank": size, "a2a_busbw_Bps": busbw}
        floor = 0.0
        if self.channels is not None:
            floor, channel_info = self.channels.floor_s(traffic_bytes, curve)
            info.update(channel_info)
        if self.headroom is None:
            return LinkRates(scale=busbw / self.nominal_Bps, link_Bps=busbw, engine_Bps=None, info=info,
                             channel_floor_s=floor)
        dup_size = a2a_duplex_bytes_per_rank(traffic_bytes)
        dup_busbw = curve_busbw_Bps(curve, dup_size)
        link_max_Bps = self.link_max_Bps or max(point_Bps for _, point_Bps in curve)
        link_Bps = min(self.headroom * busbw, float(link_max_Bps))
        engine_Bps = 2.0 * dup_busbw
        info.update(a2a_dup_bytes_per_rank=dup_size, a2a_dup_busbw_Bps=dup_busbw, a2a_link_headroom=self.headroom,
                    gpu_engine_Bps=engine_Bps, a2a_link_Bps=link_Bps)
        return LinkRates(scale=link_Bps / self.nominal_Bps, link_Bps=link_Bps, engine_Bps=engine_Bps, info=info,
                         channel_floor_s=floor)


@dataclass(frozen=True)
class LinkModels:
    """The link models of one topology: one `LinkModel` per link class (model: `lshsim.calibration`).

    models: the classes, in order; at most one of them has a headroom (a GPU has one duplex
    engine). `rates(traffic)` is what the simulator asks for each collective.

    >>> links = LinkModels((LinkModel("nvlink", 300e9, 1e-5, ((1e6, 50e9), (1e9, 300e9)), 1.2),
    ...                     LinkModel("pcie", 50e9, 1e-5)))
    >>> links.classes, links["nvlink"].headroom
    (('nvlink', 'pcie'), 1.2)
    >>> r = links.rates(np.full((4, 4), 25e6))
    >>> round(r.bandwidth_scale_by_kind["nvlink"], 4), round(r.gpu_engine_Bps / 1e9, 3)   # 1.2 B(M) / 300; 2 B(M)
    (0.8667, 433.333)
    """

    models: tuple = ()

    def __post_init__(self) -> None:
        models = tuple(self.models)
        for model in models:
            if not isinstance(model, LinkModel):
                raise ValueError(f"models must be LinkModel instances, got {type(model).__name__}")
        classes = [m.link_class for m in models]
        if len(set(classes)) != len(classes):
            raise ValueError(f"link classes must be distinct, got {classes}")
        engines = [m.link_class for m in models if m.headroom is not None]
        if len(engines) > 1:
            raise ValueError(f"at most one link class may have a headroom (one duplex engine per GPU), got {engines}")
        object.__setattr__(self, "models", models)

    # ---- access ----------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(m.link_class for m in self.models)

    def __contains__(self, link_class: str) -> bool:
        return link_class in self.classes

    def __getitem__(self, link_class: str) -> LinkModel:
        for model in self.models:
            if model.link_class == link_class:
                return model
        raise KeyError(f"no link class {link_class!r}; known: {', '.join(self.classes) or 'none'}")

    def get(self, link_class: str, default=None):
        return self[link_class] if link_class in self else default

    @property
    def alpha_s(self) -> float:
        """A collective's start-up latency: the largest of its classes' (0 without classes). The
        topology schema has one alpha_s, so every class of a loaded topology has the same."""
        return max((m.alpha_s for m in self.models), default=0.0)

    def replace(self, link_class: str, **changes) -> "LinkModels":
        """A copy with the class's fields changed (dataclasses.replace, validated again); a class
        not in the set is added (then `changes` must hold its nominal_Bps)."""
        if link_class in self:
            models = tuple(replace(m, **changes) if m.link_class == link_class else m for m in self.models)
        else:
            models = self.models + (LinkModel(link_class, **{"alpha_s": self.alpha_s, **changes}),)
        return LinkModels(models)

    # ---- the one question the simulator asks ----------------------------------------------------
    def rates(self, traffic_bytes) -> CollectiveRates:
        """The rates for one collective of `traffic_bytes` (W, W): every class's scale (only the
        classes with a curve change), the duplex engines, and the info the result reports (the
        NVLink class's keys as they are, another class's prefixed "<class>_")."""
        scale: dict = {}
        engine_Bps = None
        info: dict = {}
        floor = 0.0
        for model in self.models:
            rates = model.rates(traffic_bytes)
            if rates is None:
                continue
            floor = max(floor, rates.channel_floor_s)
            scale[model.link_class] = rates.scale
            if rates.engine_Bps is not None:
                engine_Bps = rates.engine_Bps
            prefix = "" if model.link_class == "nvlink" else f"{model.link_class}_"
            info.update({prefix + key: value for key, value in rates.info.items()})
        return CollectiveRates(alpha_s=self.alpha_s, bandwidth_scale_by_kind=scale or None,
                               gpu_engine_Bps=engine_Bps, info=info, channel_floor_s=floor)

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_calibration(cls, calibration: dict | None, *, nominal_Bps: dict, alpha_s: float,
                         source: str = "<dict>", nodes: int = 1) -> "LinkModels":
        """Parse the link part of a topology's `calibration:` block into models: one per class of
        `nominal_Bps` ({class: nominal per-direction bandwidth}, every link class (edge kind) the
        topology has; a class with 0 has no edges to scale), all with start-up latency `alpha_s`.

        A class's curve, headroom and cap come from `calibration.links.CLASS` (keys `LINK_KEYS`:
        busbw_curve, headroom, link_max_Bps) or, for the NVLink class, from the top-level keys
        `CURVE_KEYS` (a2a_busbw_curve, a2a_link_headroom, a2a_link_max_Bps), which mean
        links.nvlink; giving both is refused. A channel term (`nccl_channels`, top level
        `a2a_nccl_channels`) is NCCL's rule on one node: refused when `nodes` > 1. Without one (every
        calibration written before it) the term is off and the predictions are as before. Errors
        name the source, the field and the value:
        "h200.yaml: calibration.a2a_link_headroom=0.9 must be >= 1",
        "f.yaml: calibration.links.nic.headroom=0.9 must be >= 1".

        >>> links = LinkModels.from_calibration({"links": {"nic": {"busbw_curve": [[1e6, 5e9], [1e9, 45e9]]}}},
        ...                                     nominal_Bps={"nvlink": 450e9, "nic": 50e9}, alpha_s=0.0)
        >>> links.classes, links["nic"].busbw_curve[-1], links["nvlink"].busbw_curve
        (('nvlink', 'nic'), (1000000000.0, 45000000000.0), None)
        >>> LinkModels.from_calibration({"links": {"trunk": {"busbw_curve": [[1e6, 5e9], [1e9, 45e9]]}}},
        ...                             nominal_Bps={"nvlink": 450e9}, alpha_s=0.0, source="x.yaml")
        Traceback (most recent call last):
        ...
        ValueError: x.yaml: calibration.links.trunk={'busbw_curve': [[1000000.0, 5000000000.0], [1000000000.0, 45000000000.0]]} names a link class the topology has no edges of; its classes: nvlink
        """
        calibration = calibration or {}
        present = [c for c, nominal in nominal_Bps.items() if nominal > 0]
        blocks: dict = {}               # class -> ({key: value}, {key: field name in messages})
        legacy = {key: calibration.get(old) for key, old in zip(LINK_KEYS, CURVE_KEYS)
                  if calibration.get(old) is not None}
        if legacy:
            blocks["nvlink"] = (legacy, {key: f"calibration.{old}" for key, old in zip(LINK_KEYS, CURVE_KEYS)})
        links = calibration.get("links")
        if links is not None:
            if not isinstance(links, dict):
                raise _fail(source, "calibration.links", links,
                            "must be a mapping {link class: {busbw_curve, headroom, link_max_Bps, nccl_channels}}")
            for link_class, block in links.items():
                pre = f"calibration.links.{link_class}"
                if link_class not in present:
                    raise _fail(source, pre, block, "names a link class the topology has no edges of; its classes: "
                                + (", ".join(present) or "none"))
                if link_class in blocks:
                    given = ", ".join(f"calibration.{CURVE_KEYS[LINK_KEYS.index(k)]}" for k in legacy)
                    raise _fail(source, pre, block, f"gives the NVLink class, which {given} already give; "
                                "use one of the two (the top-level keys mean calibration.links.nvlink)")
                if not isinstance(block, dict):
                    raise _fail(source, pre, block, "must be a mapping with " + ", ".join(LINK_KEYS))
                for key, value in block.items():
                    if key not in LINK_KEYS:
                        raise _fail(source, f"{pre}.{key}", value,
                                    "is not a known field; known: " + ", ".join(LINK_KEYS))
                blocks[link_class] = ({k: v for k, v in block.items() if v is not None},
                                      {key: f"{pre}.{key}" for key in LINK_KEYS})
        parsed = {link_class: _parse_link_block(values, names, source, nominal_Bps.get(link_class, 0.0))
                  for link_class, (values, names) in blocks.items()}
        models = []
        for link_class, nominal in nominal_Bps.items():
            curve, headroom, link_max, channels = parsed.get(link_class, (None, None, None, None))
            if channels is not None and nodes > 1:
                raise _fail(source, blocks[link_class][1]["nccl_channels"], channels.to_dict(),
                            f"is NCCL's per-peer channel rule on one node; this topology has {nodes} nodes")
            if nominal > 0:
                models.append(LinkModel(link_class, nominal, alpha_s, curve, headroom, link_max, channels))
        try:
            return cls(tuple(models))
        except ValueError as error:
            raise ValueError(f"{source}: calibration: {error}") from None

    @classmethod
    def from_topology(cls, G) -> "LinkModels":
        """The models of a built topology (G.graph["link_models"], parsed when it was built). A graph
        assembled by hand, without one, gets plain models (no curve) of its edge kinds, at their
        largest edge bandwidth, with the start-up latency G.graph["alpha_s"] (else 0)."""
        links = G.graph.get("link_models")
        if isinstance(links, cls):
            return links
        if links is not None:
            raise ValueError(f"G.graph['link_models'] must be a LinkModels, got {type(links).__name__}")
        alpha_s = float(G.graph.get("alpha_s", 0.0) or 0.0)
        nominal: dict = {}
        for _, _, data in G.edges(data=True):
            kind = data.get("kind")
            if kind:
                nominal[kind] = max(nominal.get(kind, 0.0), float(data.get("bandwidth_Bps", 0.0)))
        return cls(tuple(LinkModel(kind, bw, alpha_s) for kind, bw in nominal.items() if bw > 0))
