"""NCCL's per-peer p2p channel counts, and when an all-to-all spreads unevenly over the channels.

NCCL runs an all-to-all of variable splits (torch's `all_to_all_single`) as grouped
ncclSend/ncclRecv, one per peer. Each send and each receive is cut over a number of p2p channels
(CUDA blocks) that grows with its bytes (NVIDIA/nccl src/enqueue.cc, `scheduleP2pTasksToPlan` and
`addP2pToPlan`):

    n_min = channels_per_peer;  while n_min * W > p2p_channels and n_min > 1: n_min /= 2
    min_part = chunk / 8;  max_part = 32 * chunk          (one node; chunk = NCCL_P2P_NVL_CHUNKSIZE)
    n = min(n_min, ceil(bytes / min_part));  part = max(min_part, ceil(bytes / n))
    while part > max_part and n <= channels_per_peer / 2:  n *= 2;  part = ceil(bytes / n)

so on 4 ranks with NCCL 2.28.9's defaults on H200 (32 p2p channels, 32 per peer, 512 KiB chunks:
`NCCL_DEBUG=INFO` prints "32 p2p channels, 32 p2p channels per peer" and "P2P Chunksize set to
524288") a peer gets 8 channels up to 2^27 bytes, 16 up to 2^28 and 32 above. The peer of
round k (send to r + k, receive from r - k) starts at channel bit-reverse(k) (5 bits for 32
channels) and takes n consecutive channels (mod p2p_channels).

With equal splits every channel carries the same bytes. When a rank's chunks fall on both sides
of a threshold, some channels carry more than others (`channel_load_imbalance` > 1), and NCCL is
slower than with the same bytes on one side (benchmarks/a2a_chunk_sweep.py measures it; results
in benchmarks/RESULTS.md); a smaller `NCCL_P2P_NVL_CHUNKSIZE` halves the thresholds and moves
the slowdown with them.

The channel term (what the simulator charges; `channel_send_ratio`, applied by
`lshsim.calibration.model.LinkModel` when a topology's calibration has `a2a_nccl_channels`).
Cause: each channel is one CUDA block, and a send's bytes go over its channels in equal parts
(above), so when a rank's chunks fall on both sides of a threshold, the channels that carry the
parts of the chunks below it carry more bytes than the others. The measured data locate the
binding side: it is the sender's busiest channel. The Dirichlet-skewed calibration workload
cal-skewed-d6144-t16384 on 4 H200 (data/measured/h200/run-g) moves a matrix T whose busiest send
channel is 1.29x that of equal chunks of the same size and its transpose, whose busiest receive
channel is 1.28x; T ran 24-26% slower than predicted without the term, T^T 3-5%. The rank's own
chunk is a local copy and crosses no link: it is left out. So the term is

    t_channel = L_send(T) / c(M),   c(M) = h * L_send(equal chunks of M / W) / t_curve(M)

L_send: the bytes of the busiest send channel of any rank (`send_channel_loads`, own chunk left
out); M: the all-to-all's size (`lshsim.calibration.model.a2a_bytes_per_rank`); t_curve(M) = S / B(M)
the time the bus bandwidth curve gives an all-to-all of equal chunks of that size. So a channel's
throughput is derived from the curve at a size where the rule gives the channel count (the equal
all-to-all of the same size), times a headroom h >= 1 (how much faster a channel can go than in
that all-to-all), fitted on the skewed calibration all-to-alls (`lshsim.calibration.fits.
fit_channel_headroom`). The predicted time is max(simulated time, t_channel): the link share or the
busiest channel, whichever binds. Equal chunks give L_send(T) = L_send(equal), t_channel =
t_curve / h: never binding. On 2 ranks a rank has one peer: the ratio is 1 unless the two ranks'
sends lie on both sides of 2^28 bytes (the smaller then runs on half the channels).

The bus bandwidth curve is fitted on sizes away from the thresholds (`near_threshold`: mean chunk
within a stated window of one of `channel_thresholds`), because near-equal chunks there straddle
it and measure this effect, not the links.

What the term does not capture: the exact mix. On the chunk sweeps of 4 H200 the ratio orders
the slowdowns but errs by up to 10% (benchmarks/RESULTS.md, "NCCL's channel thresholds as a model
term"). Not modelled: the receive side (a LocMoE workload with 256 KiB chunks whose receive side
alone is uneven ran 24% slower than predicted, against 3-5% for the skewed workload above), NCCL's
static split of a block's warps over the works of a batch (src/device/sendrecv.h) and the round
order. The reference L_send(equal) jumps at a threshold (on 4 ranks the busiest channel of equal
16-channel chunks carries 4/3 of the 32-channel one), so c(M) jumps there too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NcclP2pConfig", "p2p_channels", "channel_loads", "channel_load_imbalance", "channel_thresholds",
           "near_threshold", "send_channel_loads", "channel_send_ratio"]


@dataclass(frozen=True)
class NcclP2pConfig:
    """NCCL's p2p layout on one node (defaults: NCCL 2.28.9 on 2-8 NVSwitch-linked H100/H200).

    p2p_channels: comm->p2pnChannels (power of two); channels_per_peer: comm->p2pnChannelsPerPeer;
    chunk_bytes: NCCL_P2P_NVL_CHUNKSIZE.
    """

    p2p_channels: int = 32
    channels_per_peer: int = 32
    chunk_bytes: int = 512 * 1024

    def __post_init__(self) -> None:
        for name in ("p2p_channels", "channels_per_peer", "chunk_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.p2p_channels & (self.p2p_channels - 1):
            raise ValueError(f"p2p_channels={self.p2p_channels} must be a power of two (NCCL rounds it so)")
        if self.channels_per_peer > self.p2p_channels:
            raise ValueError(f"channels_per_peer={self.channels_per_peer} must be <= p2p_channels={self.p2p_channels}")


def p2p_channels(size_bytes: float, world_size: int, config: NcclP2pConfig = NcclP2pConfig()) -> int:
    """Channels NCCL gives one send (or receive) of `size_bytes` among `world_size` ranks.

    >>> [p2p_channels(b, 4) for b in (2**20, 2**27, 2**27 + 1, 2**28, 2**28 + 1, 2**30)]
    [8, 8, 16, 16, 32, 32]
    >>> [p2p_channels(b, 2) for b in (2**27, 2**28, 2**28 + 1)]
    [16, 16, 32]
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be a positive integer")
    if not np.isfinite(size_bytes) or size_bytes < 0:
        raise ValueError(f"size_bytes={size_bytes} must be a finite number >= 0")
    n_min = config.channels_per_peer
    while n_min * world_size > config.p2p_channels and n_min > 1:
        n_min //= 2
    min_part, max_part = config.chunk_bytes // 8, config.chunk_bytes * 32
    size = int(size_bytes)
    n = min(n_min, max(1, -(-size // min_part)))
    part = max(min_part, -(-size // n))
    while part > max_part and n <= config.channels_per_peer // 2:
        n *= 2
        part = -(-size // n)
    return n


def _bit_reverse(value: int, bits: int) -> int:
    return int(format(value, f"0{bits}b")[::-1], 2) if bits else 0


def _channel_setup(traffic_bytes, config: NcclP2pConfig):
    """The checked (W, W) traffic, W, the p2p channel count C, its bit width and zero (W, C) loads."""
    traffic = np.asarray(traffic_bytes, dtype=float)                                   # (W, W)
    if traffic.ndim != 2 or traffic.shape[0] != traffic.shape[1] or traffic.shape[0] < 1:
        raise ValueError(f"traffic_bytes must be a square (W, W) matrix, got shape {traffic.shape}")
    if not np.all(np.isfinite(traffic)) or traffic.min() < 0:
        raise ValueError("traffic_bytes must be finite and >= 0")
    world, channels = traffic.shape[0], config.p2p_channels
    return traffic, world, channels, channels.bit_length() - 1, np.zeros((world, channels))


def channel_loads(traffic_bytes, config: NcclP2pConfig = NcclP2pConfig()) -> np.ndarray:
    """(W, C) bytes that each rank's sends and receives put on each of its C p2p channels.

    Round k of rank r sends traffic[r, r + k] and receives traffic[r - k, r] (k = 0 is the rank's
    own chunk), each over p2p_channels(bytes) channels from bit-reverse(k) on, in equal parts.

    >>> loads = channel_loads(np.full((4, 4), 2.0 ** 28))   # 16 channels per chunk: all even
    >>> float(loads.max() / loads.mean())
    1.0
    """
    traffic, world, channels, bits, loads = _channel_setup(traffic_bytes, config)
    for rank in range(world):
        for k in range(world):
            base = _bit_reverse(k % channels, bits)
            for size in (traffic[rank, (rank + k) % world], traffic[(rank - k) % world, rank]):
                if size <= 0:
                    continue
                count = p2p_channels(size, world, config)
                loads[rank, (base + np.arange(count)) % channels] += size / count
    return loads


def channel_load_imbalance(traffic_bytes, config: NcclP2pConfig = NcclP2pConfig()) -> float:
    """max over ranks of (its busiest channel's bytes / its mean channel bytes); 1.0 = even.

    >>> chunks = [16300, 16450, 16300, 16450]                 # rows of 16 KiB around 2^28 bytes
    >>> straddle = [[chunks[(d - r) % 4] * 16384 for d in range(4)] for r in range(4)]
    >>> round(channel_load_imbalance(straddle), 3)
    1.498
    >>> channel_load_imbalance(np.full((4, 4), 3e8))
    1.0
    """
    loads = channel_loads(traffic_bytes, config)                                       # (W, C)
    mean = loads.mean(axis=1)                                                          # (W,)
    active = mean > 0
    if not active.any():
        return 1.0
    return float((loads[active].max(axis=1) / mean[active]).max())


def channel_thresholds(world_size: int, config: NcclP2pConfig = NcclP2pConfig()) -> tuple[int, ...]:
    """The chunk sizes (bytes) above which NCCL doubles a send's channels: n_min * max_part * 2^i
    while the count can still double (`p2p_channels`; n_min = channels per peer halved while
    n_min * W > p2p_channels). Below n_min * min_part the count grows by one per min_part bytes
    (small steps, not listed here).

    >>> [t // 2 ** 20 for t in channel_thresholds(4)], [t // 2 ** 20 for t in channel_thresholds(2)]
    ([128, 256], [256])
    >>> [t // 2 ** 20 for t in channel_thresholds(4, NcclP2pConfig(chunk_bytes=262144))]
    [64, 128]
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be a positive integer")
    n = config.channels_per_peer
    while n * world_size > config.p2p_channels and n > 1:
        n //= 2
    max_part = config.chunk_bytes * 32
    out = []
    while n <= config.channels_per_peer // 2:
        out.append(n * max_part)
        n *= 2
    return tuple(out)


def near_threshold(chunk_bytes: float, world_size: int, window: float,
                   config: NcclP2pConfig = NcclP2pConfig()) -> bool:
    """True when `chunk_bytes` lies within a relative `window` of a threshold of
    `channel_thresholds`: |chunk / threshold - 1| <= window.

    >>> near_threshold(2 ** 27 * 1.01, 4, 0.04), near_threshold(2 ** 27 * 0.95, 4, 0.04)
    (True, False)
    """
    if not np.isfinite(window) or window < 0:
        raise ValueError(f"window={window} must be a finite number >= 0")
    return any(abs(chunk_bytes / t - 1.0) <= window for t in channel_thresholds(world_size, config))


def send_channel_loads(traffic_bytes, config: NcclP2pConfig = NcclP2pConfig(), *,
                       include_self: bool = False) -> np.ndarray:
    """(W, C) bytes that each rank's sends put on each of its p2p channels: round k sends
    traffic[r, r + k] over p2p_channels(bytes) channels from bit-reverse(k) on, in equal parts;
    the rank's own chunk (k = 0, a local copy) only with `include_self`.

    >>> loads = send_channel_loads(np.full((4, 4), 2.0 ** 20))    # 8 channels a peer, from 16, 8, 24
    >>> [int(x) for x in loads[0, ::8] // 2 ** 17]                # channels 0, 8, 16, 24: 1 MiB / 8 each
    [0, 1, 1, 1]
    """
    traffic, world, channels, bits, loads = _channel_setup(traffic_bytes, config)
    for rank in range(world):
        for k in range(0 if include_self else 1, world):
            size = traffic[rank, (rank + k) % world]
            if size <= 0:
                continue
            count = p2p_channels(size, world, config)
            loads[rank, (_bit_reverse(k % channels, bits) + np.arange(count)) % channels] += size / count
    return loads


def channel_send_ratio(traffic_bytes, config: NcclP2pConfig = NcclP2pConfig()) -> float:
    """L_send(T) / L_send(equal): the busiest send channel of any rank (own chunk left out,
    `send_channel_loads`) over that of equal chunks of the same size M / W, M =
    max_r max(S_r, R_r) W / (W - 1) (S_r, R_r: what rank r sends to / receives from the others).
    1.0 for equal chunks; 0.0 when no bytes leave any rank. The channel term's ratio (module
    docstring).

    >>> round(channel_send_ratio(np.full((4, 4), 3e8)), 6)
    1.0
    >>> rows = [16300, 16450, 16300, 16450]              # 16 KiB rows: below, above, below, above 2^28
    >>> straddle = [[rows[(d - r) % 4] * 16384 for d in range(4)] for r in range(4)]
    >>> round(channel_send_ratio(straddle), 3)           # by hand in tests/test_nccl_channel_term.py
    1.331
    """
    traffic = np.asarray(traffic_bytes, dtype=float)                                   # (W, W)
    loads = send_channel_loads(traffic, config)
    world = traffic.shape[0]
    if world < 2:
        return 0.0
    off = traffic - np.diag(np.diag(traffic))
    size = max(off.sum(axis=1).max(), off.sum(axis=0).max()) * world / (world - 1)    # M
    if size <= 0:
        return 0.0
    equal = send_channel_loads(np.full((world, world), size / world), config)
    return float(loads.max() / equal.max())
