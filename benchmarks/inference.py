"""Collaborative Transformer inference on the emulated testbed: the planner's choice against even
(Megatron-style) tensor parallelism, a layer pipeline and the fastest single device, measured in one run.

Testbed: 4 devices whose relative speeds are 1.0, 0.85, 0.7 and 0.55 (cgroup CPU quotas in that ratio,
scaled to fit this host's cores; one torch thread each), every pair linked at 1 Gbps, then at 100 Mbps (tc
htb; latency is not emulated). Cases: BERT-base forward at sequence 128 and 512, and one GPT-2 decode step
after a 128-token prompt. Before planning, the cost model is calibrated with one BERT-base layer timed on
one thread of this host, so the simulator's figures are for the emulated devices; its error is reported per
measurement. Without root (no testbed) the workers run as plain local processes, which the output says.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

CASES_FULL = [("bert512", "bert-base", "prefill", 512), ("bert128", "bert-base", "prefill", 128),
              ("gpt2decode", "gpt2", "decode", 128)]
CASES_QUICK = [("bert512", "bert-tiny", "prefill", 64), ("gpt2decode", "gpt2-tiny", "decode", 16)]
LINKS_FULL = {"1gbps": 1e9 / 8, "100mbps": 100e6 / 8}
LINKS_QUICK = {"1gbps": 1e9 / 8}
RELATIVE_SPEED = {"dev-a": 1.0, "dev-b": 0.85, "dev-c": 0.7, "dev-d": 0.55}
PLANS = ("planner", "even_tp", "pipeline", "best_single")
DECODE_STEPS = 6


def _calibrate_core_flops(model: str, seq: int) -> float:
    """FLOP per CPU second of one transformer layer's forward on one thread here (CPU time, so other jobs on the
    host do not lower it): one core's rate, which the testbed quotas scale."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgepool.models import build_model

    torch.set_num_threads(1)
    bundle = build_model(model, meta=False)
    x = torch.randn(1, seq, bundle.hf_model.config.hidden_size)
    layer = bundle.blocks[1]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    flops = counter.get_total_flops()
    times = []
    with torch.no_grad():
        layer(x)
        for _ in range(3):
            start = time.process_time()  # CPU time: what a device with a whole core would take
            layer(x)
            times.append(time.process_time() - start)
    return flops / min(times)


def _cluster(bandwidth: float, core_flops: float, cores: dict[str, float]):
    from edgepool.cluster import Cluster
    from edgepool.device import Device

    devices = [Device(name=n, kind="cpu", peak_flops={"fp32": core_flops * cores[n]}, memory_bytes=4 * 2**30,
                      memory_bandwidth=10e9 * cores[n], cpu_cores=1, efficiency=1.0,
                      sources={"peak_flops": "calibrated: this host's per-thread rate x the testbed CPU quota"})
               for n in RELATIVE_SPEED]
    return Cluster.uniform(devices, bandwidth=bandwidth, latency_s=0.0, name=f"testbed-4dev")


def _testbed_cores() -> dict[str, float]:
    """CPU quota the testbed gives each device (device_limits with the relative speeds)."""
    from edgepool.cluster import Cluster
    from edgepool.device import Device
    from edgepool.testbed.testbed import device_limits

    probe = Cluster.uniform([Device(name=n, peak_flops={"fp32": s * 1e9}, memory_bytes=2**30, memory_bandwidth=1e9,
                                    cpu_cores=1, efficiency=1.0) for n, s in RELATIVE_SPEED.items()], bandwidth=1e9)
    return {n: l.cpu_cores for n, l in device_limits(probe, list(RELATIVE_SPEED)).items()}


def _plans(profile, cluster, shape):
    from edgepool.inference.planner import plan_inference
    from edgepool.inference.simulate import simulate_inference

    chosen = {
        "planner": plan_inference(profile, cluster, shape, strategy="auto"),
        "even_tp": plan_inference(profile, cluster, shape, strategy="even-tp"),
        "pipeline": plan_inference(profile, cluster, shape, strategy="pipeline"),
        "best_single": plan_inference(profile, cluster, shape, strategy="single"),
    }
    simulated = {k: simulate_inference(p, profile, cluster, shape=shape).latency_s for k, p in chosen.items()}
    return chosen, simulated


def run(quick: bool = False, progress: bool = True) -> dict:
    from rich.progress import Progress

    from edgepool.inference.runner import RunSpec, describe_launcher, run_job
    from edgepool.inference.simulate import RequestShape
    from edgepool.models import build_model
    from edgepool.profile import profile_model
    from edgepool.testbed.launcher import make_launcher

    cases = CASES_QUICK if quick else CASES_FULL
    links = LINKS_QUICK if quick else LINKS_FULL
    rounds = 1 if quick else 2
    started = time.time()
    load_before = os.getloadavg()
    cores = _testbed_cores()
    core_flops = _calibrate_core_flops(cases[0][1], cases[0][3])
    profiles = {}
    for _, model, phase, seq in cases:
        key = (model, phase, seq)
        profiles[key] = profile_model(build_model(model, meta=True), 1, seq if phase == "prefill" else 1)
    results: dict = {}
    launcher_info: dict = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("inference benchmark", total=len(links))
        for link_name, bandwidth in links.items():
            cluster = _cluster(bandwidth, core_flops, cores)
            runs, meta = [], {}
            for case, model, phase, seq in cases:
                shape = RequestShape(1, seq if phase == "prefill" else 1, phase, seq if phase == "decode" else 0)
                chosen, simulated = _plans(profiles[(model, phase, seq)], cluster, shape)
                meta[case] = (chosen, simulated, model)
            for r in range(rounds):  # candidate and baselines interleaved, round after round
                for case, model, phase, seq in cases:
                    chosen = meta[case][0]
                    for name in PLANS:
                        plan = chosen[name]
                        if not plan.feasible:
                            continue
                        runs.append(RunSpec(name=f"{case}|{name}|{r}", model=model, plan=plan,
                                            task="forward" if phase == "prefill" else "decode", seq=seq,
                                            tiles=int(plan.notes.get("tiles", 1)), repeats=1 if phase == "prefill" else 0,
                                            warmup=1 if r == 0 else 0, max_new_tokens=DECODE_STEPS + 1))
            with make_launcher("testbed", cluster, devices=list(cluster.devices)) as launcher:
                launcher_info[link_name] = describe_launcher(launcher)
                measured = run_job(runs, launcher, timeout_s=1500)
            for case, model, phase, seq in cases:
                chosen, simulated, _ = meta[case]
                row = {"model": model, "phase": phase, "seq": seq, "plans": {}}
                for name in PLANS:
                    keys = [f"{case}|{name}|{r}" for r in range(rounds) if f"{case}|{name}|{r}" in measured]
                    lat = [measured[k]["latency_s"] for k in keys]
                    cpu = {d: statistics.median([measured[k]["cpu_s"][d] for k in keys])
                           for d in (measured[keys[0]]["cpu_s"] if keys and phase == "prefill" else {})}
                    plan = chosen[name]
                    row["plans"][name] = {
                        "planner": plan.planner, "candidate": plan.notes.get("candidate"),
                        "devices": plan.devices, "stages": [[list(s.layers), s.devices, [round(x, 3) for x in s.shares],
                                                             s.parallel] for s in plan.stages],
                        "tiles": plan.notes.get("tiles"), "measured_latency_s": statistics.median(lat) if lat else None,
                        "measured_rounds_s": lat, "simulated_latency_s": simulated[name],
                        "cpu_s_per_device": cpu,
                        "quota_bound_latency_s": max(cpu[d] / cores[d] for d in cpu) if cpu else None,
                        "simulator_error_vs_quota_bound": abs(simulated[name] - max(cpu[d] / cores[d] for d in cpu))
                        / max(cpu[d] / cores[d] for d in cpu) if cpu else None,
                        "simulator_error": abs(simulated[name] - statistics.median(lat)) / statistics.median(lat)
                        if lat else None}
                p = row["plans"]
                base = p["planner"]["measured_latency_s"]
                row["ratios"] = {f"{k}_over_planner": p[k]["measured_latency_s"] / base
                                 for k in PLANS if k != "planner" and p[k]["measured_latency_s"]}
                results[f"{case}_{link_name}"] = row
            bar.advance(task)
    quota = {k: r["plans"]["best_single"]["quota_bound_latency_s"] / r["plans"]["planner"]["quota_bound_latency_s"]
             for k, r in results.items() if r["plans"]["planner"].get("quota_bound_latency_s")
             and r["plans"]["best_single"].get("quota_bound_latency_s")}
    ratios_even = [r["ratios"]["even_tp_over_planner"] for r in results.values() if "even_tp_over_planner" in r["ratios"]]
    errors = [p["simulator_error"] for r in results.values() for p in r["plans"].values() if p["simulator_error"] is not None]
    fallback = next((i.get("fallback_reason") for i in launcher_info.values() if i.get("fallback_reason")), None)
    metrics = {
        "speedup_over_best_single_bert512_1gbps": results["bert512_1gbps"]["ratios"]["best_single_over_planner"],
        "min_ratio_even_tp_over_plan": min(ratios_even),
        "speedup_over_best_single_bert512_100mbps": results.get("bert512_100mbps", {}).get("ratios", {}).get(
            "best_single_over_planner"),
        "median_simulator_error": statistics.median(errors),
        # derived, not wall clock: CPU seconds each device used / its quota (see quota_bound_latency_s)
        "quota_bound_speedup_bert512_1gbps": quota.get("bert512_1gbps"),
        "max_simulator_error": max(errors),
    }
    return {
        "benchmark": "inference", "quick": quick, "metrics": metrics, "cases": results,
        "launcher": "local (testbed unavailable: " + fallback + "; devices NOT emulated: no CPU quotas, no shaping)"
        if fallback else "testbed",
        "testbed": launcher_info, "testbed_cpu_cores": cores, "calibrated_flops_per_thread": core_flops,
        "bound_sum_over_fastest_quota": sum(cores.values()) / max(cores.values()),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores; shared with other jobs)",
        "command": "edgepool bench inference" + (" --quick" if quick else "") + " --json",
        "wall_s": time.time() - started,
        "host_load_average": {"before": load_before, "after": os.getloadavg()},
        "notes": "quota_bound_latency_s is derived, not measured wall clock: max over devices of the CPU seconds "
                 "the device used for the forward pass divided by its testbed CPU quota, i.e. the latency if every "
                 "device got its whole quota and communication were hidden. On a host busier than its cores, "
                 "devices do not get their quotas and wall-clock ratios mix emulation with contention.",
    }


def render(result: dict) -> str:
    lines = [f"inference benchmark ({result['launcher']}; {result['machine']})"]
    for case, row in result["cases"].items():
        lines.append(f"{case}: " + ", ".join(
            f"{k} {v['measured_latency_s'] * 1e3:.0f} ms (sim {v['simulated_latency_s'] * 1e3:.0f})"
            for k, v in row["plans"].items() if v["measured_latency_s"]))
    lines.append("metrics: " + ", ".join(f"{k}={v:.3g}" for k, v in result["metrics"].items() if v is not None))
    return "\n".join(lines)
