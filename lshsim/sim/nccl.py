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

What this module does not do: predict the slowdown. The imbalance separates the slowed cases
from the others, but its value does not order them, and skewed MoE traffic is routinely uneven
over the channels while the simulator predicts it well without any channel term. So the
simulator does not charge it; use `p2p_channels` / `channel_load_imbalance` to check whether
near-equal split sizes straddle a threshold (then expect NCCL to be slower than predicted, or set
NCCL_P2P_NVL_CHUNKSIZE so that they do not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NcclP2pConfig", "p2p_channels", "channel_loads", "channel_load_imbalance"]


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


def channel_loads(traffic_bytes, config: NcclP2pConfig = NcclP2pConfig()) -> np.ndarray:
    """(W, C) bytes that each rank's sends and receives put on each of its C p2p channels.

    Round k of rank r sends traffic[r, r + k] and receives traffic[r - k, r] (k = 0 is the rank's
    own chunk), each over p2p_channels(bytes) channels from bit-reverse(k) on, in equal parts.

    >>> loads = channel_loads(np.full((4, 4), 2.0 ** 28))   # 16 channels per chunk: all even
    >>> float(loads.max() / loads.mean())
    1.0
    """
    traffic = np.asarray(traffic_bytes, dtype=float)                                   # (W, W)
    if traffic.ndim != 2 or traffic.shape[0] != traffic.shape[1] or traffic.shape[0] < 1:
        raise ValueError(f"traffic_bytes must be a square (W, W) matrix, got shape {traffic.shape}")
    if not np.all(np.isfinite(traffic)) or traffic.min() < 0:
        raise ValueError("traffic_bytes must be finite and >= 0")
    world, channels = traffic.shape[0], config.p2p_channels
    bits = channels.bit_length() - 1
    loads = np.zeros((world, channels))                                                # (W, C)
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
