"""Launch parameters of the fused LSH hash kernel, measured on the GPU (CUDA events, best of 20).

    python benchmarks/tune_lsh_kernels.py [--tokens 8192 32768] [--d-model 4096] [--out OUT.json]

For each token count: every (BLOCK_M, BLOCK_K, num_warps, num_stages) of a small grid, its time and
its ratio to the HBM roofline (the tokens read once at the copy bandwidth measured in the same run),
and that the ids equal those of the default launch. The best parameters go into
`lshsim.dispatch.lsh_fast.HASH_LAUNCH` by hand, with the table in benchmarks/HISTORY.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cuda_timing import best_s  # noqa: E402
from lshsim.dispatch import lsh_fast  # noqa: E402
from lshsim.dispatch.lsh import LSHConfig, clustered_tokens, make_projection  # noqa: E402

GRID = [dict(block_m=m, block_k=k, num_warps=w, num_stages=s)
        for m, k, w, s in itertools.product((16, 32, 64, 128), (64, 128), (4, 8), (3,))]
GRID += [dict(block_m=m, block_k=64, num_warps=4, num_stages=s) for m in (32, 64) for s in (2, 4)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    config = LSHConfig(num_hashes=6, proj_dim=16, seed=0)
    projection = make_projection(args.d_model, config, device=device, dtype=torch.bfloat16)
    src = torch.empty(1 << 29, device=device, dtype=torch.bfloat16)
    copy_Bps = 2 * src.numel() * 2 / best_s(lambda: torch.empty_like(src).copy_(src), 5)
    del src
    rows_out = []
    for tokens in args.tokens:
        x = clustered_tokens(tokens, args.d_model, 256, 0.1, seed=0).to(device, torch.bfloat16)
        roof_s = x.numel() * 2 / copy_Bps
        reference = lsh_fast._hash_launch(x, config, projection)
        results = []
        for params in GRID:
            try:
                ids = lsh_fast._hash_launch(x, config, projection, **params)
                seconds = best_s(lambda: lsh_fast._hash_launch(x, config, projection, **params))
            except Exception as error:  # a launch the compiler refuses (shared memory): reported
                results.append({**params, "error": str(error).splitlines()[0][:80]})
                continue
            results.append({**params, "s": seconds, "roofline_ratio": roof_s / seconds,
                            "same_ids": bool(torch.equal(ids, reference))})
        results.sort(key=lambda r: r.get("s", float("inf")))
        print(f"tokens {tokens} x {args.d_model} bf16, L 6, d' 16: roofline {roof_s * 1e6:.1f} us "
              f"(copy {copy_Bps / 1e12:.2f} TB/s)")
        for r in results[:8] + [r for r in results if "error" in r][:3]:
            print("  " + json.dumps(r))
        rows_out.append({"tokens": tokens, "d_model": args.d_model, "roofline_s": roof_s, "results": results})
    if args.out:
        Path(args.out).write_text(json.dumps({"copy_Bps": copy_Bps, "shapes": rows_out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
