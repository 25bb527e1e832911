"""`lshsim catalog`: the shipped models and clusters, with their sizes, so that a user can pick
`--model` and `--cluster` values without reading the YAML files.

Models: layers, MoE layers, routed (+ shared) experts, top-k, d, the expert FFN width, all and
active parameters (as `lshsim.models.ModelConfig` counts them; staged models such as Swin have no
active count), the published routing and whether it is dropless. Clusters: GPUs (nodes x GPUs per
node), the GPU, the link inside a node, the network between nodes (its kind, NICs per node x Gb/s,
oversubscription) and the description. Clusters in sub-folders (`published/...`, the topologies of
`validate --published`, and `calibrated/...`, the executor's calibrated ones) are listed with `--all`.
`lshsim catalog NAME` shows one model or cluster: its sizes and its whole file (sources, assumptions).
"""
from __future__ import annotations

__all__ = ["add_parser", "run", "model_rows", "cluster_rows", "entry"]


def add_parser(subparsers):
    p = subparsers.add_parser(
        "catalog", help="list the shipped models and clusters with their sizes",
        description="List the shipped models (models/configs) and clusters (data/topologies) that `plan`, "
                    "`sweep` and `simulate` take by name, with their sizes. Both by default.")
    p.add_argument("name", nargs="?", default=None,
                   help="one model or cluster to show: its sizes and its whole file (sources and assumptions)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--models", action="store_true", help="the models only")
    which.add_argument("--clusters", action="store_true", help="the clusters only")
    p.add_argument("--all", action="store_true",
                   help="also the clusters in sub-folders (published/...: the topologies of validate --published; "
                        "calibrated/...: the executor's calibrated ones)")
    p.add_argument("--json", action="store_true", help="print JSON ({\"models\": [...], \"clusters\": [...]})")
    return p


def model_rows() -> list[dict]:
    """One dict per catalog model: name, num_layers, moe_layers, experts, shared_experts, top_k, d_model, d_ffn,
    parameters, active_parameters (None for staged models), router, dropless."""
    from lshsim.models import list_models, load_model

    rows = []
    for name in list_models():
        m = load_model(name)
        try:
            active = m.active_parameters()
        except ValueError:                      # staged (Swin): not counted
            active = None
        rows.append({"name": name, "num_layers": m.num_layers, "moe_layers": m.num_moe_layers,
                     "experts": m.num_experts, "shared_experts": m.num_shared_experts, "top_k": m.top_k,
                     "d_model": m.d_model, "d_ffn": m.d_ffn, "parameters": m.num_parameters,
                     "active_parameters": active, "router": m.router, "dropless": m.dropless})
    return rows


def cluster_rows(include_subfolders: bool = False) -> list[dict]:
    """One dict per shipped topology (top-level files; with `include_subfolders` those in sub-folders too): name,
    gpus, nodes, gpus_per_node, gpu (a catalog name; "NAME (edited)" where the file changes its figures), intra (the link kind inside a node), inter (between nodes: kind, nics_per_node,
    nic_gbps, oversubscription; None for one node), description. Read from the spec files, not built."""
    from lshsim.topology.spec import list_topologies, read_spec

    rows = []
    for name in list_topologies():
        if "/" in name and not include_subfolders:
            continue
        spec, _ = read_spec(name)
        inter = spec.get("inter")
        nodes, per_node = int(spec.get("nodes", 1)), int(spec.get("gpus_per_node", 0))
        rows.append({"name": name, "gpus": nodes * per_node, "nodes": nodes, "gpus_per_node": per_node,
                     "gpu": _gpu(spec.get("gpu")), "intra": (spec.get("intra") or {}).get("kind"),
                     "inter": None if not isinstance(inter, dict) else
                     {key: inter.get(key) for key in ("kind", "nics_per_node", "nic_gbps", "oversubscription")},
                     "description": " ".join(str(spec.get("description", "")).split())})
    return rows


def entry(name: str) -> list[dict]:
    """The catalog entries named `name` (a model, a cluster, or both where the names agree): each {"kind": "model" or
    "cluster", "name", "file" (its path), "sizes" (the row of `model_rows` / `cluster_rows`),
    "text" (the file as shipped)}. An unknown name is a ValueError listing the known ones."""
    from lshsim.models import list_models
    from lshsim.models.catalog import _config_files
    from lshsim.topology.spec import list_topologies, topology_dir

    found = []
    if name in list_models():
        sizes = next(r for r in model_rows() if r["name"] == name)
        found.append({"kind": "model", "name": name, "file": str(_config_files()[name]), "sizes": sizes,
                      "text": _config_files()[name].read_text()})
    if name in list_topologies():
        sizes = next(r for r in cluster_rows(include_subfolders=True) if r["name"] == name)
        path = topology_dir() / f"{name}.yaml"
        found.append({"kind": "cluster", "name": name, "file": str(path), "sizes": sizes, "text": path.read_text()})
    if not found:
        raise ValueError(f"catalog {name!r}: no model or cluster of that name; models: {', '.join(list_models())}; "
                         f"clusters: {', '.join(t for t in list_topologies() if '/' not in t)} (and the sub-folders' "
                         f"of `lshsim catalog --clusters --all`)")
    return found


def _billions(count: int | None) -> str:
    """A parameter count: 0.154B, 671B, 1.03T (M below 1e8)."""
    if count is None:
        return "-"
    return f"{count / 1e12:.3g}T" if count >= 1e12 else f"{count / 1e9:.3g}B" if count >= 1e8 else f"{count / 1e6:.3g}M"


def _gpu(value) -> str:
    """The spec's gpu: a catalog name, or a mapping that edits one (its name if it gives one, else the base's)."""
    if isinstance(value, dict):
        name = value.get("name") or value.get("base")
        return f"{name} (edited)" if value.get("base") and not value.get("name") else str(name)
    return str(value)


def _network(inter: dict | None) -> str:
    if inter is None:
        return "- (one node)"
    text = str(inter.get("kind"))
    if inter.get("nics_per_node") and inter.get("nic_gbps"):
        text += f", {inter['nics_per_node']} x {inter['nic_gbps']:g} Gb/s"
    if inter.get("oversubscription") not in (None, 1, 1.0):
        text += f", oversubscribed {inter['oversubscription']:g}:1"
    return text


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A wide table (`_render.wide_console`), the name column never wrapped."""
    from rich.table import Table

    from lshsim.cli import _render

    out = Table(title=title)
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i in (0, len(columns) - 1) else "right", no_wrap=i == 0)
    for row in rows:
        out.add_row(*row)
    _render.wide_console().print(out)


def run(args) -> int:
    from lshsim.cli import _render

    if args.name is not None:
        if args.models or args.clusters or args.all:
            raise ValueError("--models, --clusters and --all list the catalog; with a NAME, catalog shows that entry")
        found = entry(args.name)
        if args.json:
            _render.print_json(found)
            return 0
        for item in found:
            r = item["sizes"]
            if item["kind"] == "model":
                shared = f" + {r['shared_experts']} shared" if r["shared_experts"] else ""
                what = (f"{r['num_layers']} layers ({r['moe_layers']} MoE), {r['experts']}{shared} experts, top-{r['top_k']}, "
                        f"d {r['d_model']}, expert FFN {r['d_ffn']}, {_billions(r['parameters'])} parameters "
                        f"({_billions(r['active_parameters'])} active), {r['router']}"
                        + (", dropless" if r["dropless"] else ""))
            else:
                what = (f"{r['gpus']} GPUs ({r['nodes']} x {r['gpus_per_node']}), {r['gpu']}, {r['intra']} inside a node, "
                        f"between nodes: {_network(r['inter'])}")
            print(f"{item['kind']} {item['name']}: {what}\n{item['file']}:\n{item['text'].rstrip()}\n")
        return 0
    out = {}
    if not args.clusters:
        out["models"] = model_rows()
    if not args.models:
        out["clusters"] = cluster_rows(args.all)
    if args.json:
        _render.print_json(out)
        return 0
    if "models" in out:
        _table("Models (--model NAME: models/configs/NAME.yaml)",
               ["name", "layers", "MoE layers", "experts", "top-k", "d", "expert FFN", "params", "active", "routing"],
               [[r["name"], str(r["num_layers"]), str(r["moe_layers"]),
                 str(r["experts"]) + (f" + {r['shared_experts']} shared" if r["shared_experts"] else ""),
                 str(r["top_k"]), str(r["d_model"]), str(r["d_ffn"]), _billions(r["parameters"]),
                 _billions(r["active_parameters"]), r["router"] + (", dropless" if r["dropless"] else "")]
                for r in out["models"]])
    if "clusters" in out:
        _table("Clusters (--cluster NAME: data/topologies/NAME.yaml; --json has each one's description)",
               ["name", "GPUs", "GPU", "inside a node", "between nodes"],
               [[r["name"], f"{r['gpus']} ({r['nodes']} x {r['gpus_per_node']})", r["gpu"], str(r["intra"]),
                 _network(r["inter"])] for r in out["clusters"]])
        if not args.all:
            print("--all adds the topologies in sub-folders (published/...: validate --published's; "
                  "calibrated/...: the executor's)")
    return 0
