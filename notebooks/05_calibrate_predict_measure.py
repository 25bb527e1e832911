# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Calibrate, predict, measure: the phase model on two H200 GPUs
#
# A simulator is only worth its calibration. This notebook walks through the loop that turns GPU
# measurements into predictions, then checks those predictions against measurements the fit
# never saw:
#
# 1. **Calibrate.** On the GPUs, `executor calibrate --phases all` times all-to-alls, the expert
#    FFN and whole MoE layers and writes a raw JSON. On any machine, `lshsim calibrate` fits a
#    *phase model* to that JSON and writes a calibrated topology YAML.
# 2. **Predict.** Load the topology. The flow-level simulator gives an all-to-all's device time,
#    and the phase model converts it into the time you would measure.
# 3. **Measure and compare.** Held-out MoE layers were run on the same GPUs over three NCCL
#    transports: NVLink, host shared memory and sockets. `lshsim.sim.validate` predicts every
#    phase of every trace, and we compare.
#
# Everything here reads committed files from `data/measured/h200/run-m/` (2 x H200, NVSwitch;
# see `data/measured/h200/README.md`), so it runs on a laptop CPU without a GPU or a network.
# Every number below is computed by the code, none is typed in by hand.

# %%
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from lshsim.calibration.phase_model import CONVENTIONS, ExpertTable, fit_conventions, fit_phase_model
from lshsim.sim.collectives import simulate_all_to_all
from lshsim.sim.validate import validate_trace_file
from lshsim.topology import load_topology

notebook_start = time.perf_counter()
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "data/measured/h200/run-m").is_dir())
RUN = ROOT / "data/measured/h200/run-m"
TOPOLOGIES = ROOT / "data/topologies/calibrated"
TRANSPORTS = ("nvlink", "shm", "socket")
pd.set_option("display.width", 140)


def read_json(name):
    """A committed JSON file: a name relative to RUN, or an absolute Path."""
    return json.loads((RUN / name).read_text())


def raw_phases(name):
    """The phase measurements, results["phases"], of a raw calibration JSON of the run."""
    return read_json(name)["results"]["phases"]


raw = read_json("cal-nvlink-raw.json")
phases = raw["results"]["phases"]
print("measured on:", raw["provenance"]["count"], "x", raw["provenance"]["gpu"], "| NCCL", raw["provenance"]["nccl"],
      "|", raw["provenance"]["date"])
print("command:", raw["provenance"]["command"])
print("records per part:", {part: len(phases[part]) for part in phases["parts"]})

# %% [markdown]
# ## 1. What the calibration measured
#
# ### 1a. One all-to-all, three ways of timing it
#
# The same all-to-all takes different amounts of time depending on how you time it.
# `results["phases"]["a2a"]` records three *conventions* at each size:
#
# * **device**: GPU events around the collective alone, with the ranks aligned first. This is
#   what the link model (the simulator) predicts.
# * **as_run**: events around one call on an idle GPU, issued by the host the way a training
#   step issues it. The host's launch work (torch's split handling, NCCL's group launch) shows
#   up in full.
# * **back_to_back**: the average of many calls queued without waiting, as nccl-tests reports
#   it. Each launch overlaps the previous call, so the launch cost only shows when it is longer
#   than the GPU time.
#
# Every size is also timed *unaligned*: each per-peer chunk is 2 bytes longer than a whole
# number of 4 KiB rows. NCCL copies in 16-byte vectors, and chunks that are not a multiple of
# 16 bytes fall back to narrower, slower accesses.

# %%
a2a = pd.DataFrame(phases["a2a"]).drop(columns=["splits"])
world = int(a2a.world_size.iloc[0])
aligned = a2a[a2a.aligned].set_index("bytes_per_rank")
unaligned = a2a[~a2a.aligned].assign(base=lambda df: df.bytes_per_rank - 2 * world).set_index("base")
table = (aligned[list(CONVENTIONS)] * 1e6).round(1).add_suffix(" (us)")
table["unaligned device (us)"] = (unaligned.device * 1e6).round(1)
table.iloc[::4]

# %% [markdown]
# The fit (`fit_conventions`) does not need the absolute times. It needs the *excess* of each
# convention over the device time, as a function of size, smoothed by a running median because
# the host's launch cost jitters from one size to the next. It also needs the *unaligned factor*,
# the unaligned device time divided by the aligned one. The three panels show the raw points and
# the fitted curves.

# %%
fitted = fit_conventions(phases["a2a"])
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for convention, marker in zip(CONVENTIONS, "os^"):
    axes[0].loglog(aligned.index, aligned[convention] * 1e6, marker=marker, ms=4, label=convention)
axes[0].set(xlabel="bytes per rank", ylabel="time (us)", title="aligned all-to-all, three conventions")
for convention, color in (("as_run", "tab:orange"), ("back_to_back", "tab:green")):
    axes[1].scatter(aligned.index, (aligned[convention] - aligned.device) * 1e6, color=color, s=12, alpha=0.6)
    curve = np.asarray(fitted[convention])
    axes[1].plot(curve[:, 0], curve[:, 1] * 1e6, color=color, label=f"{convention}: fitted excess")
axes[1].set(xscale="log", xlabel="bytes per rank", ylabel="convention - device (us)", title="excess over device time")
ratio = unaligned.device / aligned.device.reindex(unaligned.index)
axes[2].scatter(ratio.index, ratio, s=12, color="tab:red", alpha=0.6, label="measured")
curve = np.asarray(fitted["unaligned"])
axes[2].plot(curve[:, 0], curve[:, 1], color="tab:red", label="fitted factor")
axes[2].axhline(1.0, color="grey", lw=1, ls="--")
axes[2].set(xscale="log", xlabel="bytes per rank", ylabel="unaligned / aligned device time",
            title="chunks not a multiple of 16 bytes")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
small = aligned.device < 1e-3
print(f"device time below 1 ms ({small.sum()} sizes): as-run excess median "
      f"{1e6 * np.median(aligned.as_run[small] - aligned.device[small]):.0f} us, back-to-back excess median "
      f"{1e6 * np.median(aligned.back_to_back[small] - aligned.device[small]):.0f} us")
print(f"unaligned factor: {ratio.min():.2f} to {ratio.max():.2f} "
      f"(largest at {ratio.idxmax() / 2**20:.0f} MiB per rank)")

# %% [markdown]
# What to read from the panels:
#
# * Small all-to-alls take a roughly constant device time (latency), and large ones grow with
#   size (bandwidth).
# * *as_run* carries a launch cost of tens of microseconds at every size. For small messages it
#   is several times the device time itself.
# * *back_to_back* hides most of that launch cost once the GPU time is longer than the launch.
# * Unaligned chunks cost nothing below about a megabyte per rank. Above that the factor grows
#   with size, up to the largest value printed above.
#
# ### 1b. The expert grid
#
# The expert phase (each rank's local expert FFNs on the rows they received) is timed on a full
# grid of (local experts E, rows per expert, d_model, d_ffn), forward and backward, in device
# time. The model interpolates this table in log space (`ExpertTable`) instead of using a
# roofline formula. The thin black line in each panel is that interpolation for d_ffn 4096,
# forward, from below the grid's smallest row count to above its largest.

# %%
expert = pd.DataFrame(phases["expert"])
print({axis: sorted(expert[axis].unique().tolist()) for axis in ("experts", "rows_per_expert", "d_model", "d_ffn")})
grid = ExpertTable.from_points(phases["expert"])
d_model = 4096
fig, axes = plt.subplots(1, expert.experts.nunique(), figsize=(14, 3.8), sharey=True)
for ax, (experts, group) in zip(axes, expert[expert.d_model == d_model].groupby("experts")):
    for (d_ffn, points), color in zip(group.groupby("d_ffn"), ("tab:blue", "tab:orange", "tab:green")):
        ax.loglog(points.rows_per_expert, points.forward_s * 1e3, marker="o", color=color, label=f"d_ffn {d_ffn} fwd")
        ax.loglog(points.rows_per_expert, points.backward_s * 1e3, marker="s", ls="--", color=color,
                  label=f"d_ffn {d_ffn} bwd")
    span = np.geomspace(16, 65536, 60)
    ax.loglog(span, [1e3 * grid.device_s(experts, r, d_model, 4096) for r in span], color="black", lw=1)
    ax.set(title=f"E = {experts} local experts, d_model {d_model}", xlabel="rows per expert")
axes[0].set_ylabel("device time (ms)")
axes[-1].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# At few rows per expert the time is nearly flat: kernel launches and reading the weights
# dominate. Once there is enough work (more rows, more experts or a wider FFN), time grows in
# proportion to the rows, a slope of one on these axes, because the matrix multiplies are
# compute-bound. The black line shows the model's two edge rules: above the grid's largest
# value on an axis time grows linearly with the slope of the grid's last interval (a fixed cost
# plus a marginal one), and below the smallest it clamps (flat).
#
# ### 1c. The calibration layers
#
# Finally, whole MoE layers with known shapes are timed phase by phase (gate, dispatch
# all-to-all, expert, combine all-to-all, the split-size exchange "other", LSH when enabled),
# plus the whole layer *as run*. The one-GPU calibration `cal-x1-raw.json` adds the same layers
# on a single rank. The gap between a layer and the sum of its timed phases is the **glue**: the
# final weighted combine, the gate's backward, allocator and launch gaps.

# %%
x1_phases = raw_phases("cal-x1-raw.json")


def layer_rows(records, gpus):
    for record in records:
        w, layer = record["workload"], record["layer_s"]
        yield {"layer": w["name"], "GPUs": gpus, "lsh": bool(w.get("lsh")),
               "forward (ms)": 1e3 * layer["forward"], "backward (ms)": 1e3 * layer["backward"],
               "total (ms)": 1e3 * layer["total"],
               "glue fwd (ms)": 1e3 * (layer["forward"] - sum(record["phases_s"]["forward"].values()))}


cal_layers = pd.DataFrame([*layer_rows(phases["layers"], 2), *layer_rows(x1_phases["layers"], 1)])
print(f"{len(cal_layers)} calibration layers: {(cal_layers.GPUs == 2).sum()} on 2 GPUs, "
      f"{(cal_layers.GPUs == 1).sum()} on 1")
cal_layers.round(3).head(8)

# %% [markdown]
# ## 2. Fitting the model, without a GPU
#
# ### 2a. With the command line
#
# `lshsim calibrate --source microbenchmarks RAW.json` refits a calibrated topology from a raw
# JSON. It fits the link model (the all-to-all bus-bandwidth curve) and the phase model.
# `--phase-base` adds the compute parts of another calibration, here the one-GPU layers. We
# run it into a temporary folder and print the phase-model part of its report.

# %%
workdir = Path(tempfile.mkdtemp(prefix="lshsim-nb05-"))
command = [sys.executable, "-m", "lshsim.cli", "calibrate", "--source", "microbenchmarks",
           "data/measured/h200/run-m/cal-nvlink-raw.json", "--phase-base", "data/measured/h200/run-m/cal-x1-raw.json",
           "--out", str(workdir / "t.yaml")]
report = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
start = next(i for i, line in enumerate(report) if "phase model" in line)
print("\n".join(line[:160] for line in report[start:]))

# %% [markdown]
# The repository's calibrated topology `data/topologies/calibrated/h200-x2-phases-nvlink.yaml`
# was made by exactly this command. The refit in the temporary folder should match it except
# for the topology's name:

# %%
refit = yaml.safe_load((workdir / "t.yaml").read_text())
committed = yaml.safe_load((TOPOLOGIES / "h200-x2-phases-nvlink.yaml").read_text())
for key in ("a2a_busbw_curve", "phase_model"):
    same = refit["calibration"][key] == committed["calibration"][key]
    print(f"calibration.{key} identical to the committed topology: {same}")
print("names:", refit["name"], "(refit) vs", committed["name"], "(committed)")

# %% [markdown]
# ### 2b. With the Python API
#
# The same fit from Python, in `lshsim.calibration.phase_model` (its module docstring describes
# the model in full):
#
# * **all-to-all**: the link model gives the aligned device time t_dev(M). Then
#   t_as_run = t_dev + excess_as_run(M) and t_back_to_back = t_dev + excess_b2b(M), with the
#   excess curves fitted above, interpolated log-linearly in size. Any unaligned chunk
#   multiplies t_dev by the unaligned factor.
# * **expert**: the grid interpolated at each rank's mean rows per local expert, and never less
#   than an in-layer *floor* fitted on the calibration layers (a small phase waits on the host
#   queueing its kernels).
# * **gate, LSH compress and restore, glue**: small non-negative linear models over workload
#   features such as T*E*d or T*k*d*bytes, fitted by non-negative least squares on relative
#   error (`fit_linear`).
# * **other** (the split-size exchange): a fixed host cost plus one small as-run all-to-all.
#
# `fit_phase_model` takes the `results["phases"]` dictionary. It also takes a function for the
# device time of a small all-to-all (the exchange's), which we take from the committed
# topology's link model.

# %%
G = load_topology(TOPOLOGIES / "h200-x2-phases-nvlink.yaml")
pm = G.graph["phase_model"]          # the committed model, parsed from the YAML


def small_a2a_s(traffic):
    return float(simulate_all_to_all(G, traffic).time_s)


model = fit_phase_model(phases, transport="nvlink", small_a2a_s=small_a2a_s,
                        base={"expert": None, "layers": x1_phases["layers"]})
same = all(np.allclose(model.kernels[key].coef, pm.kernels[key].coef) for key in pm.kernels)
print(f"kernel coefficients equal to the committed ones: {same}; expert floor (fwd, bwd) "
      f"{tuple(round(1e3 * f, 3) for f in model.expert.floor_s)} ms; exchange {1e6 * model.exchange_s:.1f} us")
pd.DataFrame([{"phase": p, "direction": d, "terms": " + ".join(fit.terms), "layers": fit.points,
               "median |err| %": 100 * fit.median_rel_error, "worst %": 100 * fit.max_rel_error,
               "leave-one-out median %": 100 * (fit.loo_median_rel_error or np.nan)}
              for (p, d), fit in sorted(model.kernels.items())]).round(1)

# %% [markdown]
# The last column matters most. A fit's error on its own points flatters it, while leave-one-out
# (each layer predicted by a fit made without it) estimates the error on a new workload.
#
# ## 3. Predicting one all-to-all
#
# Take the dispatch all-to-all of a held-out layer, `ho3-p5-t10k-d3072-e8-nolsh` on NVLink. Its
# trace records the (2, 2) bytes each rank sent to each rank. The simulator moves those bytes
# over the calibrated links (`simulate_all_to_all`). Each rank's own chunk (the diagonal) stays
# on the GPU and is copied in HBM while the network traffic flies. The phase model then gives
# the time in each convention.

# %%
trace = read_json("traces-nvlink-x2/ho3-p5-t10k-d3072-e8-nolsh.json")["meta"]["measured"]
traffic = np.asarray(trace["traffic_bytes"], dtype=float)
result = simulate_all_to_all(G, traffic)
print("bytes (row = sender):\n", traffic.astype(int))
print(f"network {1e6 * result.network_time_s:.1f} us, local copy {1e6 * result.local_copy_s.max():.1f} us "
      f"-> device time {1e6 * result.time_s:.1f} us")
for convention in CONVENTIONS:
    print(f"  predicted {convention:13s} {1e6 * pm.a2a_s(result.time_s, traffic, convention):8.1f} us")
print(f"  measured in the layer (device) {1e6 * trace['phases_s']['forward']['dispatch_a2a']:.1f} us")

# %% [markdown]
# The same three conventions for equal splits across sizes, aligned and with unaligned chunks
# (2 bytes more per chunk):

# %%
rows = []
for size in (2**16, 2**20, 2**24, 2**28):
    for pad in (0, 2):
        matrix = np.full((2, 2), float(size // 2 + pad))
        device_s = simulate_all_to_all(G, matrix).time_s
        rows.append({"MiB per rank": size / 2**20, "aligned": pad == 0,
                     **{f"{c} (us)": 1e6 * pm.a2a_s(device_s, matrix, c) for c in CONVENTIONS}})
pd.DataFrame(rows).round(1)

# %% [markdown]
# ## 4. Measuring: the held-out layers
#
# Held-out set 3 (`data/workloads/heldout-step-3/`, `data/heldout/step-fidelity/`) was written
# before the run that measured it, and no fit ever saw it. The layers ran on the same two GPUs
# over NVLink, then with `NCCL_P2P_DISABLE=1` (host shared memory), then also with
# `NCCL_SHM_DISABLE=1` (sockets). Each transport has its own calibrated topology.
# `validate_trace_file` predicts every phase of a trace from what the trace recorded (its
# traffic matrices, the rows each expert received, the workload). It also predicts the whole
# layer (rows "layer": forward, backward and total, in the as-run convention).

# %%
validations = {}
for transport in TRANSPORTS:
    topology = TOPOLOGIES / f"h200-x2-phases-{transport}.yaml"
    for path in sorted((RUN / f"traces-{transport}-x2").glob("*.json")):
        validations[(transport, path.stem)] = validate_trace_file(path, topology)
results = pd.DataFrame([{"transport": t, "workload": name.removeprefix("ho3-"), "phase": row.phase,
                         "direction": row.direction, "measured (ms)": 1e3 * row.measured_s,
                         "predicted (ms)": None if row.predicted_s is None else 1e3 * row.predicted_s,
                         "error %": None if row.rel_error is None else 100 * row.rel_error}
                        for (t, name), v in validations.items() for row in v.rows])
print(f"{len(validations)} traces, {len(results)} rows; one trace in full:")
results[(results.transport == "nvlink") & (results.workload == "p5-t10k-d3072-e8-nolsh")].round(3)

# %% [markdown]
# Over all traces: the median and worst |error| of every phase, then of the whole layer per
# transport.

# %%
summary = (results.dropna(subset=["error %"]).assign(abs_error=lambda df: df["error %"].abs())
           .groupby(["phase", "direction"]).abs_error.agg(traces="count", median="median", worst="max").round(1))
summary

# %%
layer = results[results.phase == "layer"].pivot_table(index=["transport", "workload"], columns="direction",
                                                      values=["measured (ms)", "predicted (ms)", "error %"])
print("whole layer (total, as run), |error| by transport:")
print(layer["error %"]["total"].abs().groupby("transport").agg(["count", "median", "max"]).round(1).to_string())
layer.round(2)

# %% [markdown]
# Look at the signs as well as the sizes of the errors. A model can have a small total error
# because the forward and backward errors partly cancel:

# %%
for direction in ("forward", "backward", "total"):
    errors = results[(results.phase == "layer") & (results.direction == direction)]["error %"]
    print(f"layer {direction:8s}: median signed error {errors.median():+5.1f}%, "
          f"under-predicted in {(errors < 0).sum()} of {len(errors)} traces")

# %% [markdown]
# The all-to-alls and the expert phases carry most of the layer's time, and their medians in
# the phase table are small. The small phases (gate, LSH compress and restore, the split-size
# exchange "other") have much larger relative errors, but they are a small share of the layer.
# The forward layer time is under-predicted more often than not. Compare the signed medians
# above.

# %% [markdown]
# Predicted against measured, every phase of every trace. Points on the line are exact, and the
# grey band is +-15%. (`lshsim validate --plot` draws the same kind of figure with
# `lshsim.sim.validate.plot_validations`. Here we draw it ourselves to colour by transport.)

# %%
markers = {"dispatch_a2a": "o", "combine_a2a": "s", "expert": "^", "gate": "v", "lsh_compress": "<",
           "lsh_restore": ">", "other": "d", "layer": "*"}
colors = dict(zip(TRANSPORTS, ("tab:blue", "tab:orange", "tab:green")))
predicted = results.dropna(subset=["predicted (ms)"])
fig, ax = plt.subplots(figsize=(6.5, 6))
for (phase, transport), group in predicted.groupby(["phase", "transport"]):
    ax.scatter(group["measured (ms)"], group["predicted (ms)"], marker=markers.get(phase, "x"),
               color=colors[transport], alpha=0.7, s=60 if phase == "layer" else 25)
line = np.geomspace(predicted[["measured (ms)", "predicted (ms)"]].min().min() / 1.5,
                    predicted[["measured (ms)", "predicted (ms)"]].max().max() * 1.5, 50)
ax.plot(line, line, color="black", lw=1)
ax.fill_between(line, 0.85 * line, 1.15 * line, color="grey", alpha=0.15)
for phase, marker in markers.items():
    ax.scatter([], [], marker=marker, color="black", label=phase)
for transport, color in colors.items():
    ax.scatter([], [], marker="o", color=color, label=transport)
ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)",
       title="held-out set 3 on 2 x H200: every phase")
ax.legend(fontsize=7, loc="upper left")
plt.show()

# %% [markdown]
# ### The question the simulator is for: does LSH-MoE pay off?
#
# LSH-MoE compresses the tokens before the all-to-alls, which makes the communication cheaper
# and adds hashing work. Its benefit is the layer time without LSH over the layer time with it.
# For every pair `pN-...-nolsh` / `pN-...-lsh-*` on each transport, we compare the measured
# ratio with the predicted one.

# %%
totals = results[(results.phase == "layer") & (results.direction == "total")].set_index(["transport", "workload"])
pairs = []
for (transport, name), row in totals.iterrows():
    if "-lsh-" in name:
        base = totals.loc[(transport, name.split("-lsh-")[0] + "-nolsh")]
        measured = base["measured (ms)"] / row["measured (ms)"]
        predicted = base["predicted (ms)"] / row["predicted (ms)"]
        pairs.append({"transport": transport, "LSH workload": name, "measured speedup": measured,
                      "predicted speedup": predicted, "error %": 100 * (predicted / measured - 1)})
speedups = pd.DataFrame(pairs)
errors = speedups["error %"].abs()
print(f"speedup |error|: median {errors.median():.1f}%, worst {errors.max():.1f}%")
speedups.round(3)

# %%
fig, ax = plt.subplots(figsize=(10, 3.8))
x = np.arange(len(speedups))
ax.bar(x - 0.2, speedups["measured speedup"], 0.4, label="measured")
ax.bar(x + 0.2, speedups["predicted speedup"], 0.4, label="predicted")
ax.set_xticks(x, [f"{t}\n{w.split('-lsh-')[0][:2]} {w.split('-lsh-')[1]}" for t, w in
                  zip(speedups.transport, speedups["LSH workload"])], fontsize=8)
ax.axhline(1.0, color="grey", lw=1)
ax.set(yscale="log", ylabel="layer time without / with LSH", title="LSH-MoE speedup by transport")
ax.legend()
plt.show()

# %% [markdown]
# The slower the transport, the more compression pays. On NVLink the all-to-alls are a small
# part of the layer and LSH's extra kernels eat much of the gain. Over sockets the all-to-alls
# dominate and the speedup is large. The model predicts this ordering, and the table above gives
# the size of its errors.
#
# ## 5. Where the model is weak
#
# The numbers above are good on average. Three things are not, and a careful user should know
# them.
#
# ### 5a. The as-run time of small all-to-alls
#
# Below about a megabyte, an as-run all-to-all is mostly host launch cost. That cost is not a
# property of the GPUs: it changes between processes and between minutes on the same machine.
# The held-out all-to-all cases (`a2a-TRANSPORT.json`) were timed in a later session than the
# calibration. Here are the errors of each convention on them:

# %%
a2a_rows = []
for transport in TRANSPORTS:
    topology = load_topology(TOPOLOGIES / f"h200-x2-phases-{transport}.yaml")
    held_out = read_json(f"a2a-{transport}.json")
    for record in held_out["records"]:
        matrix = np.asarray(record["rows"], dtype=float)
        device_s = simulate_all_to_all(topology, matrix).time_s
        for convention in CONVENTIONS:
            predicted_s = topology.graph["phase_model"].a2a_s(device_s, matrix, convention)
            a2a_rows.append({"transport": transport, "case": record["name"], "bytes_per_rank": record["bytes_per_rank"],
                             "convention": convention, "measured (us)": 1e6 * record[convention],
                             "predicted (us)": 1e6 * predicted_s,
                             "error %": 100 * (predicted_s / record[convention] - 1)})
a2a_cases = pd.DataFrame(a2a_rows)
(a2a_cases.assign(abs_error=lambda df: df["error %"].abs()).groupby(["transport", "convention"])
 .abs_error.agg(cases="count", median="median", worst="max").round(1))

# %% [markdown]
# On NVLink the device time is predicted closely while *as_run* is far off. The cause is drift.
# The same as-run excess, timed in four sessions of the same run on the same two GPUs (the
# calibration, the calibration again under torchrun, the held-out session's own calibration
# sizes, and the held-out cases themselves), does not agree with itself:

# %%
sessions = {
    "calibration": phases["a2a"],
    "calibration under torchrun": raw_phases("cal-nvlink-torchrun-raw.json")["a2a"],
    "held-out session, calibration sizes": read_json("a2a-nvlink.json")["session_calibration"],
    "held-out cases": read_json("a2a-nvlink.json")["records"],
}
fig, ax = plt.subplots(figsize=(8, 4))
for label, records in sessions.items():
    points = sorted((r["bytes_per_rank"], 1e6 * (r["as_run"] - r["device"])) for r in records
                    if r.get("aligned", True) and r["device"] < 1e-3)
    sizes, excess = np.array(points).T
    ax.plot(sizes, excess, marker="o", ms=4, lw=1, label=f"{label}: median {np.median(excess):.0f} us")
ax.set(xscale="log", xlabel="bytes per rank", ylabel="as_run - device (us)",
       title="NVLink: the host's launch cost, four sessions (device time < 1 ms)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The medians differ by tens of microseconds between sessions, and single sizes scatter much
# further. No fit made in one session can predict the as-run time of a small all-to-all in
# another session better than this drift. When the GPU time is large (sizes of tens of MiB and
# up), the excess is a small fraction of the total and the as-run error shrinks with it.
# *back_to_back* carries what is left of the launch cost at small sizes, so it drifts there
# too, less so (see its worst case in the table). The *device* convention is the reliable one.
#
# ### 5b. The socket transport's bandwidth drifts
#
# Over sockets, even the *device* time is off (see the table in 5a). The reason again is drift,
# this time in bandwidth. We divide the device time of each repeat of the calibration sizes (the
# torchrun calibration and the held-out session) by the original calibration's time at the same
# size:

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for transport, color in zip(TRANSPORTS, ("tab:blue", "tab:orange", "tab:green")):
    reference = {r["bytes_per_rank"]: r["device"]
                 for r in raw_phases(f"cal-{transport}-raw.json")["a2a"] if r["aligned"]}
    repeats = {"torchrun": raw_phases(f"cal-{transport}-torchrun-raw.json")["a2a"],
               "held-out session": read_json(f"a2a-{transport}.json")["session_calibration"]}
    for (label, records), style in zip(repeats.items(), ("-", ":")):
        points = sorted((r["bytes_per_rank"], r["device"] / reference[r["bytes_per_rank"]]) for r in records
                        if r["aligned"] and r["bytes_per_rank"] in reference)
        sizes, ratios = np.array(points).T
        ax.plot(sizes, ratios, style, marker="o", ms=3, color=color,
                label=f"{transport}, {label}: {ratios.min():.2f} to {ratios.max():.2f}")
ax.axhline(1.0, color="grey", lw=1)
ax.set(xscale="log", xlabel="bytes per rank", ylabel="device time / calibration's",
       title="the same all-to-all timed again, later the same day")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# NVLink and shared memory repeat themselves within a few percent. Shared memory has one dip
# at the same size in both repeats, which means that point of the calibration itself was slow.
# Sockets do not repeat: the same all-to-all is faster or slower by tens of percent from one
# session to the next. The socket path runs through the host's TCP stack and CPUs, which is the
# likely reason. The socket topology's device errors cannot be smaller than this spread.
#
# ### 5c. The self-chunk of a mostly diagonal all-to-all
#
# In case `skewed3-2^27-row2048` of `data/heldout/step-fidelity/a2a-cases-x2-set3.json`, each
# rank keeps almost everything for itself: the matrix is nearly diagonal. The simulator copies
# the diagonal (read + write) concurrently with the little network traffic. It uses the
# phase model's self-copy rate (`calibration.phase_model.self_copy_Bps`) when the calibration
# measured one, and otherwise the GPU's calibrated HBM copy rate. Run-m's calibration did not
# measure it, so the committed run-m topologies copy at the HBM rate (the first line printed
# below). NCCL's copy to self turns out to be much slower:

# %%
cases = read_json(ROOT / "data/heldout/step-fidelity/a2a-cases-x2-set3.json")
case = next(m for m in cases["matrices"] if m["name"] == "skewed3-2^27-row2048")
matrix = np.asarray(case["rows"], dtype=float)
print("bytes (row = sender):\n", matrix.astype(int))
result = simulate_all_to_all(G, matrix)
own_chunk = np.diag(matrix).max()          # bytes a rank keeps for itself
used_Bps = 2 * own_chunk / result.local_copy_s.max()
print(f"copy rate the simulator used: {used_Bps / 1e9:.0f} GB/s read + write "
      f"(the GPU's calibrated HBM copy rate: {G.graph['gpu']['achieved_hbm_Bps'] / 1e9:.0f} GB/s)")
print(f"NVLink model: network {1e6 * result.network_time_s:.0f} us, "
      f"local copy {1e6 * result.local_copy_s.max():.0f} us")
self_case = a2a_cases[(a2a_cases.case == case["name"]) & (a2a_cases.convention == "device")]
rate = "2 x own chunk / measured (GB/s)"   # read + write, the unit of self_copy_Bps
self_case = self_case.assign(**{rate: 2 * own_chunk / self_case["measured (us)"] / 1e3})
self_case[["transport", "measured (us)", "predicted (us)", "error %", rate]].round(1)

# %% [markdown]
# Over NVLink the measured all-to-all is several times slower than the prediction: the own
# chunk moves far below the model's copy rate (last column, in the same read + write unit). Without P2P (shared memory,
# sockets) the own chunk moves slower still, because NCCL's copy to self then takes a slower
# path. On sockets the slow network part hides some of that gap. MoE dispatch is mostly
# diagonal when the router keeps tokens local (LocMoE, skewed load), so this case matters. The
# self-chunk copy needs its own calibration per transport. That is what `self_copy_Bps` is for:
# later calibrations (`executor calibrate --phases a2a`, run-n) time mostly-diagonal
# all-to-alls to fit it.
#
# ## Summary
#
# * A calibration is a raw JSON. The fit is a pure CPU step (`lshsim calibrate --source
#   microbenchmarks`, or `fit_phase_model`), so anyone can rerun and check it.
# * On held-out layers, the whole-layer and LSH-speedup predictions land within the errors
#   printed above, on all three transports.
# * Trust *device* times most. Treat the *as_run* (and, less so, *back_to_back*) times of small
#   all-to-alls, socket bandwidth, and nearly diagonal traffic with suspicion: section 5 shows
#   why.

# %%
print(f"notebook ran in {time.perf_counter() - notebook_start:.1f} s")

# %% [markdown]
# ## Exercises
#
# 1. In section 3, predict the dispatch all-to-all of another held-out layer of
#    `traces-nvlink-x2/` (list the folder) and compare each convention with the measured device time.
# 2. Refit the socket transport from its raw JSON (`cal-socket-raw.json`) with `fit_phase_model`
#    as in section 2b. Its raw JSON holds all-to-alls only: pass the NVLink and one-GPU
#    calibrations' phase results as `base` (their expert grid and layers, as `lshsim calibrate
#    --phase-base` does) and check that the kernel coefficients equal those of the committed
#    `h200-x2-phases-socket.yaml`. Which parts of the socket model differ from the NVLink one?
# 3. In the speedup table of section 4, which transport has the largest speedup error? Relate it
#    to the drift of section 5b.
# 4. In section 5c, set the copy rate the simulator used here, `G.graph["gpu"]["achieved_hbm_Bps"]`
#    (on a copy: `import copy; G2 = copy.deepcopy(G)`), to the rate measured over NVLink (the last column of the table) and
#    predict the case again. How much of the gap closes?
