"""The calibrated link model: what a measured all-to-all tells the simulator, and how it is fitted.

Importing this package imports numpy only (no torch, no simulator); the fits that simulate
import `lshsim.sim` when they run.

The model (one place; the simulator, the topology schema and `executor calibrate` point here)
---------------------------------------------------------------------------------------------
Every link class of a topology ("nvlink", "nic", "pcie", or an edge kind a builder adds) has a
`LinkModel`: its nominal per-direction bandwidth B_nom (what its edges are built with: the
NVLink bandwidth per GPU, one NIC's, one GPU's PCIe link, another kind's largest edge; see
`lshsim.topology.spec`), the per-message start-up latency alpha_s of a collective, and
optionally, from the topology's `calibration.links.CLASS` block (for NVLink also the top-level
keys `calibration.a2a_busbw_curve`, `a2a_link_headroom`, `a2a_link_max_Bps`):

1. a size-dependent bus bandwidth curve B(M) (`busbw_curve`): NCCL's all-to-all reaches a bus
   bandwidth that grows with the size, which one link bandwidth cannot follow. Each all-to-all
   first takes its size M = max_r max(S_r, R_r) W / (W - 1) (S_r, R_r: the
   bytes rank r sends to / receives from the others; equal splits give nccl-tests' bytes per rank;
   `a2a_bytes_per_rank`), reads B(M) off the curve (`curve_busbw_Bps`: linear in log M between
   the points, the end values outside them), and runs with every edge of the class at
   B(M) / B_nom times its nominal bandwidth. One direct all-to-all of equal splits of a measured
   size then takes alpha_s + S / B(M); a curve measured as bus bandwidth holds the fixed costs, so
   it goes with alpha_s 0. Hierarchical algorithms and the MoE step's chunks use the size of the
   traffic they pass in.

2. a duplex-engine headroom h >= 1 (`headroom`, only with a curve; one class at most): NCCL's
   p2p kernels move a GPU's sends and receives together, so the pair is bound by one capacity,
   while each direction of its links alone can go faster than a uniform all-to-all's
   per-direction rate. Each GPU gets an engine of capacity 2 B(M_dup),
   M_dup = max_r (S_r + R_r) / 2 * W / (W - 1) (`a2a_duplex_bytes_per_rank`), shared by its sends
   and receives (`FlowNetwork(gpu_engine_Bps=...)`), and each link direction of the class runs at
   min(h B(M), B_max). A direct all-to-all then takes at least

       t >= max_r max((S_r + R_r) / (2 B(M_dup)), max(S_r, R_r) / min(h B(M), B_max)).

   Uniform traffic (S_r = R_r) has M_dup = M and is engine-bound: t = S / B(M), as with the curve
   alone. The simulation meets the bound when a rank's flows end together and is slower
   otherwise (max-min fairness shares an engine equally, not in favour of the longest flow), so h
   is fitted with the simulation, not the closed form.

3. the links' cap B_max (`link_max_Bps`, only with a headroom): the most one link
   direction carries; absent, the curve's largest bus bandwidth. Fitted between that and the
   fastest point-to-point send measured.

4. NCCL's per-peer channel term (`nccl_channels`; top level `a2a_nccl_channels`; only with a
   curve, one node; `ChannelTerm`): NCCL cuts a send over p2p channels whose number doubles at
   size thresholds (NVIDIA/nccl src/enqueue.cc), so chunks on both sides of one load some channels
   more. A direct all-to-all takes at least t_channel = L_send(T) / c(M), the busiest send channel
   over a channel's throughput c(M) = h L_send(equal chunks of M / W) / (S / B(M)), h >= 1 fitted
   on the skewed all-to-alls. Cause, rule and model: `lshsim.sim.nccl`. Absent (every calibration
   written before it): off, and the predictions are as before.

`LinkModels` holds one topology's classes, parsed once from its `calibration:` block when the
topology is built (`LinkModels.from_calibration`; G.graph["link_models"]); the simulator asks it
one question per collective, `rates(traffic)` -> `CollectiveRates` (per-class bandwidth scale,
engine capacity, start-up latency, and the sizes and rates used, reported in
`CollectiveResult.options`). Nothing writes into a graph after it is built: a fit that tries
candidate values builds new models (`LinkModels.replace`) and passes them to
`simulate_all_to_all(..., links=...)`.

Fits (`lshsim.calibration.fits`, pure functions, typed results)
----------------------------------------------------------------
- alpha-beta (`fit_alpha_beta`): t = alpha + S / B by least squares on the relative error, the
  start-up latency and the flat bandwidth (calibration.alpha_s, nvlink_Bps);
- the curve (`fit_busbw_curve`): one point per distinct size M, bus bandwidth S / t, the median
  over the all-to-alls of that size, from uniform all-to-alls only, leaving out the sizes whose
  mean chunk lies within `THRESHOLD_WINDOW` (4%) of a channel threshold;
- headroom and cap (`fit_link_headroom_and_cap`): on skewed all-to-alls, simulating their
  measured traffic on the curve topology for h in [1, 3] (grid 0.02, then 0.001 around the best)
  and B_max from the curve's top to the fastest p2p send; the smallest median |relative error|
  wins. Without skewed measurements no headroom is fitted.
- the channel term's headroom (`fit_channel_headroom`): on the same skewed all-to-alls, each
  simulated with the term for h in [1, 2]; the smallest mean |relative error| wins.
- `fit_calibration` runs them as `executor calibrate` does; `CalibrationFit.topology_spec` is the
  topology spec that carries the result (`lshsim.topology.write_topology_yaml` writes it).

Sources (`lshsim.calibration.sources`, registry `SOURCES`)
---------------------------------------------------------
Each turns measured files into one `CalibrationInput` (points, cases, p2p sends, compute rates,
provenance): the executor's microbenchmark JSON, the executor's traces, nccl-tests logs. A new
source is one function `read(paths, **options) -> CalibrationInput` and one registry entry;
`read_source(name, paths, options)` runs one (`lshsim calibrate --source NAME FILE...`).

>>> import numpy as np
>>> links = LinkModels.from_calibration({"a2a_busbw_curve": [[1e6, 50e9], [1e9, 300e9]], "a2a_link_headroom": 1.2},
...                                     nominal_Bps={"nvlink": 300e9}, alpha_s=0.0)
>>> rates = links.rates(np.full((4, 4), 25e6))                # 100 MB per rank
>>> round(rates.info["a2a_busbw_Bps"] / 1e9, 3), round(rates.info["a2a_link_Bps"] / 1e9, 3)
(216.667, 260.0)
"""
from lshsim.calibration.fits import (AlphaBetaFit, BusbwCurveFit, CalibrationFit, HeadroomFit, a2a_errors,
                                     calibrated_topology_spec, curve_residuals, fit_alpha_beta, fit_busbw_curve,
                                     fit_calibration, fit_link_headroom, fit_link_headroom_and_cap, gpu_key,
                                     check_gpu_name, CALIBRATED_GPUS)
from lshsim.calibration.inputs import A2ACase, A2APoint, CalibrationInput, P2PPoint, merge_inputs
from lshsim.calibration.model import (CollectiveRates, LinkModel, LinkModels, LinkRates, a2a_bytes_per_rank,
                                      a2a_duplex_bytes_per_rank, curve_busbw_Bps, parse_busbw_curve)
from lshsim.calibration.sources import (SOURCES, NcclTestsRun, TraceA2APhase, parse_nccl_tests, read_microbenchmarks,
                                        read_nccl_tests, read_source, read_traces, microbenchmark_input,
                                        trace_a2a_phases, trace_algorithm, trace_skew)

__all__ = ["LinkModel", "LinkModels", "LinkRates", "CollectiveRates", "curve_busbw_Bps", "a2a_bytes_per_rank",
           "a2a_duplex_bytes_per_rank", "parse_busbw_curve",
           "A2APoint", "A2ACase", "P2PPoint", "CalibrationInput", "merge_inputs",
           "AlphaBetaFit", "fit_alpha_beta", "BusbwCurveFit", "fit_busbw_curve", "curve_residuals", "HeadroomFit",
           "a2a_errors", "fit_link_headroom", "fit_link_headroom_and_cap", "CalibrationFit", "fit_calibration",
           "calibrated_topology_spec", "gpu_key", "check_gpu_name", "CALIBRATED_GPUS",
           "SOURCES", "read_source", "TraceA2APhase", "trace_a2a_phases", "trace_skew", "trace_algorithm",
           "read_traces", "read_microbenchmarks", "microbenchmark_input", "read_nccl_tests", "parse_nccl_tests", "NcclTestsRun"]
