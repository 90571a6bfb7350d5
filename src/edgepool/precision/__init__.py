"""Per-layer placement between a device's CPU (fp32) and its low-precision accelerator (FLEX, MLMP).

tasks (real models on real data, as ordered units) -> emulate (run any unit in a low precision, for real,
on this CPU) -> sensitivity (what each unit's precision costs in accuracy, cached) -> placement (which
side and precision runs each unit) -> cost (time and energy of a placement on a device: simulated) ->
policies (all-CPU, all-accelerator, MLMP, ours, oracle; rl and input_dependent beside them) ->
experiment (every policy at a floor, accuracy measured on held-out data).
"""
