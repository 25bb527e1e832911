"""Packing the send rows: the gate's gather against a scatter, at the layer's shapes (issue 11).

The gate graph packs the T k send rows in send order (sorted by destination expert) as a GATHER,
x.index_select(0, token_of_row) (`executor.moe_ops.gather_choices`): every row reads its token, so each token is
read k times. A SCATTER reads each token once and writes its k rows at inv[t k + j] (inv = the inverse of the send
order): the same rows, bit for bit, with T d instead of T k d bytes read. This script measures both (and the scatter
as k torch `index_copy_` calls) against a device-to-device copy of the same bytes measured in the same run; nothing
in the layer uses the scatter yet.

    python benchmarks/bench_pack_rows.py [--device cuda] [--json OUT]    # cpu: small shapes, no Triton

Prints, per shape: the bytes each method must move (written + read once), its median time, its GB/s and its
ratio to the copy's GB/s, and whether every method's rows equal the gather's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cuda_timing import times_s  # noqa: E402
from executor.moe_ops import inverse_permutation  # noqa: E402

#: (name, tokens, d_model, k, experts): the layer benchmark's shapes without LSH (bench_moe_layer.py)
SHAPES = [("gpu-uniform-d1024-t32k", 32768, 1024, 2, 8), ("gpu-uniform-d4096-t16k", 16384, 4096, 2, 8),
          ("gpu-uniform-d8192-t32k", 32768, 8192, 2, 8), ("deepseek-v3-like", 4096, 7168, 8, 256)]
CPU_SHAPES = [("cpu-small", 2048, 256, 2, 8), ("cpu-k8", 512, 512, 8, 64)]


def send_order(tokens: int, k: int, experts: int, generator: torch.Generator, device) -> torch.Tensor:
    """The (token, choice) pairs sorted by expert (stable: by token within an expert), as the gate sorts them;
    k distinct uniform experts per token."""
    scores = torch.rand(tokens, experts, generator=generator)
    expert = scores.topk(k, dim=1).indices.reshape(-1)                     # (T*k,)
    return torch.sort(expert, stable=True).indices.to(device)


def gather(x, token_of_row):
    """The layer's packing: row i is token token_of_row[i] = order[i] // k (the gate graph has it)."""
    return x.index_select(0, token_of_row)


def scatter_torch(x, inv, k):
    out = torch.empty((x.shape[0] * k, x.shape[1]), dtype=x.dtype, device=x.device)
    inv_tk = inv.view(x.shape[0], k)
    for j in range(k):
        out.index_copy_(0, inv_tk[:, j], x)
    return out


def _triton_scatter():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, inv_ptr, out_ptr, d, K: tl.constexpr, BLOCK: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < d
        row = tl.load(x_ptr + t * d + offs, mask=mask)
        for j in tl.static_range(K):
            dst = tl.load(inv_ptr + t * K + j).to(tl.int64)
            tl.store(out_ptr + dst * d + offs, row, mask=mask)

    def scatter(x, inv, k, block=1024):
        out = torch.empty((x.shape[0] * k, x.shape[1]), dtype=x.dtype, device=x.device)
        grid = (x.shape[0], triton.cdiv(x.shape[1], block))
        kernel[grid](x, inv, out, x.shape[1], K=k, BLOCK=block)
        return out

    return scatter


def timed(fn, device, repeats: int) -> float:
    """Median seconds of fn() (CUDA events on a GPU, perf_counter on a CPU) after 3 warm-up calls."""
    if device.type == "cuda":
        return statistics.median(times_s(fn, repeats, 3))
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be >= 1")
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if name not in ("cuda", "cpu"):
        parser.error(f"--device {args.device!r}: one of auto, cuda, cpu")
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    device = torch.device(name)
    methods = {"gather (the layer's)": lambda x, token_of_row, inv, k: gather(x, token_of_row),
               "scatter, k index_copy_": lambda x, token_of_row, inv, k: scatter_torch(x, inv, k)}
    if device.type == "cuda":
        try:
            triton_scatter = _triton_scatter()
            methods["scatter, Triton"] = lambda x, token_of_row, inv, k: triton_scatter(x, inv, k)
        except ImportError as error:
            print(f"# no Triton ({error}): the Triton scatter is not measured")
    dtype = torch.bfloat16
    generator = torch.Generator().manual_seed(0)
    results = []
    print(f"# device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f", torch {torch.__version__}, bf16, medians of {args.repeats}")
    print(f"{'shape':26s} {'method':24s} {'MB moved':>9s} {'us':>9s} {'GB/s':>7s} {'/copy':>6s} equal")
    for shape, tokens, d_model, k, experts in (SHAPES if device.type == "cuda" else CPU_SHAPES):
        x = torch.randn(tokens, d_model, generator=generator).to(device=device, dtype=dtype)
        order = send_order(tokens, k, experts, generator, device)
        inv = inverse_permutation(order)
        token_of_row = torch.div(order, k, rounding_mode="floor")
        reference = gather(x, token_of_row)
        written = reference.numel() * reference.element_size()
        src = torch.empty_like(reference)
        dst = torch.empty_like(reference)
        copy_s = timed(lambda: dst.copy_(src), device, args.repeats)     # read + write of the written bytes
        copy_Bps = 2 * written / copy_s
        print(f"{shape:26s} {'copy (the roofline)':24s} {2 * written / 1e6:9.1f} {copy_s * 1e6:9.1f} "
              f"{copy_Bps / 1e9:7.0f} {1.0:6.2f}")
        for method, fn in methods.items():
            out = fn(x, token_of_row, inv, k)
            equal = bool(torch.equal(out, reference))
            seconds = timed(lambda: fn(x, token_of_row, inv, k), device, args.repeats)
            read = written if method.startswith("gather") else x.numel() * x.element_size()
            moved = written + read
            print(f"{shape:26s} {method:24s} {moved / 1e6:9.1f} {seconds * 1e6:9.1f} {moved / seconds / 1e9:7.0f} "
                  f"{moved / seconds / copy_Bps:6.2f} {'yes' if equal else 'NO'}")
            results.append(dict(shape=shape, tokens=tokens, d_model=d_model, k=k, experts=experts, method=method,
                                seconds=seconds, bytes_moved=moved, copy_seconds=copy_s, equal=equal))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=str(device), torch=torch.__version__, results=results),
                                              indent=1))
    return 0 if all(r["equal"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
