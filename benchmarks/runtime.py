"""Runtime benchmark: hybrid vs gpipe vs dp plans of one model, measured on the emulated testbed.

A home cluster squeezed to 100 Mbps links between every pair, with four devices whose speeds (hence testbed
CPU quotas) differ by 4x. Each planner plans for the cluster as emulated here; each plan runs for real
(one process per device, gloo, CPU quota per device, tc-shaped links), interleaved round by round so slow
phases of this shared machine hit every plan alike; the simulator replays each plan on the same emulated
cluster for the error. Without root the runs fall back to unshaped local processes, and the result says so.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

from edgepool.cluster import cluster_from_dict
from edgepool.runtime.data import ModelSpec
from edgepool.runtime.experiment import Experiment

PLANNERS = ("hybrid", "gpipe", "dp")


def constrained_home_cluster():
    """Four home devices: sustained speeds 1 : 0.5 : 0.25 : 0.25 (catalog-like fp32 figures), 100 Mbps links."""
    def device(name, gflops, memory="8GiB"):
        return {"name": name, "spec": {"kind": "cpu", "peak_flops": {"fp32": gflops * 1e9}, "memory_bytes": memory,
                                      "memory_bandwidth": "20GB/s", "cpu_cores": 4, "efficiency": 0.5,
                                      "power_idle_w": 3.0, "power_max_w": 15.0}}
    return cluster_from_dict({
        "name": "home-100mbps",
        "description": "a home cluster with every link limited to 100 Mbps and CPU speeds differing 4x",
        "devices": [device("laptop", 400), device("jetson", 200), device("pi", 100), device("phone", 100)],
        "default_link": {"bandwidth": "100Mbps", "latency": "1ms"},
    }, source="benchmarks/runtime.py")


def small_transformer(quick: bool) -> tuple[ModelSpec, int, int]:
    """A GPT-2-style decoder small enough for 2 cores, big enough that compute beats per-call overhead."""
    config = dict(vocab_size=2048, n_positions=128, n_embd=192 if quick else 256, n_layer=4 if quick else 6,
                  n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1)
    return ModelSpec(name="gpt2", overrides=config, seed=0), (8 if quick else 16), (32 if quick else 64)


def run(quick: bool = False, progress: bool = True) -> dict:
    started = time.time()
    model, batch, seq = small_transformer(quick)
    steps, rounds = (2, 1) if quick else (4, 2)
    cluster = constrained_home_cluster()
    say = (lambda msg: print(f"[runtime bench] {msg}", flush=True)) if progress else (lambda msg: None)
    with Experiment(cluster, model, batch=batch, seq=seq, launcher_kind="testbed") as exp:
        say(f"host calibrated: {exp.host.to_dict()}")
        comparisons = {p: exp.compare(p) for p in PLANNERS}
        measured: dict[str, list[float]] = {p: [] for p in PLANNERS}
        for r in range(rounds):
            for p in PLANNERS:
                say(f"round {r + 1}/{rounds}: running {p} ({steps} steps)")
                exp.run(comparisons[p], steps=steps, command="edgepool bench runtime")
                measured[p].append(comparisons[p].measured.throughput)
        launcher = exp.describe_launcher()
        host = exp.host.to_dict() | {"quota_efficiency": exp.quota_efficiency}
    throughput = {p: statistics.median(v) for p, v in measured.items()}
    simulated = {p: comparisons[p].simulated.throughput for p in PLANNERS}
    error = {p: abs(simulated[p] - throughput[p]) / throughput[p] for p in PLANNERS}
    metrics = {
        "measured_ratio_hybrid_over_dp": throughput["hybrid"] / throughput["dp"],
        "measured_ratio_hybrid_over_gpipe": throughput["hybrid"] / throughput["gpipe"],
        "max_simulator_error": max(error.values()),
        **{f"measured_throughput_{p}": throughput[p] for p in PLANNERS},
        **{f"simulated_throughput_{p}": simulated[p] for p in PLANNERS},
        **{f"simulator_error_{p}": error[p] for p in PLANNERS},
    }
    return {
        "benchmark": "runtime", "metrics": metrics,
        "units": "throughput in samples/s; errors are |simulated - measured| / measured",
        "plans": {p: comparisons[p].summary() | {"measured_per_round": measured[p],
                                                 "pipelines": [[{"layers": list(s.layers), "devices": s.devices,
                                                                 "shares": s.shares} for s in pipe.stages]
                                                               for pipe in comparisons[p].plan.pipelines]}
                  for p in PLANNERS},
        "model": {"zoo": model.name, "overrides": model.overrides, "batch": batch, "seq": seq},
        "cluster": cluster.name, "steps_per_run": steps, "rounds": rounds, "launcher": launcher,
        "host_calibration": host, "quick": quick,
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.machine()}, shared with other jobs",
        "command": "edgepool bench runtime" + (" --quick" if quick else "") + " --json",
        "elapsed_s": time.time() - started,
    }


def render(result: dict) -> str:
    m = result["metrics"]
    lines = [f"runtime benchmark on {result['cluster']} ({result['launcher'].get('launcher')} launcher), "
             f"{result['machine']}"]
    for p, s in result["plans"].items():
        lines.append(f"  {p:7s} measured {s['measured_throughput']:.2f} samples/s, simulated "
                     f"{s['simulated_throughput']:.2f} (error {s['simulator_error']:.0%}), stages {s['stages']}, "
                     f"devices {s['devices']}")
    lines.append(f"  hybrid / dp = {m['measured_ratio_hybrid_over_dp']:.2f}x, hybrid / gpipe = "
                 f"{m['measured_ratio_hybrid_over_gpipe']:.2f}x, max simulator error {m['max_simulator_error']:.0%}")
    return "\n".join(lines)
