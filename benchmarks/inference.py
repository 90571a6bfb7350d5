"""Collaborative Transformer inference on the emulated testbed: the planner's choice against even
(Megatron-style) tensor parallelism, a layer pipeline and the fastest single device, measured in one run.

Testbed: 4 devices whose relative speeds are 1.0, 0.85, 0.7 and 0.55 (cgroup CPU quotas in that ratio,
scaled to fit this host's cores; one torch thread each), every pair linked at 1 Gbps, then at 100 Mbps (tc
htb; latency is not emulated). Cases: BERT-base forward at sequence 128 and 512, and one GPT-2 decode step
after a 128-token prompt. Before planning, the cost model is calibrated with one BERT-base layer timed on
one thread of this host, so the simulator's figures are for the emulated devices, and for each link setting a
short probe on the testbed itself (`runtime.probes.comm`) measures what the collectives cost there (fixed
all-reduce and message latencies, CPU per message and per byte); the planner and the simulator use those
constants. The simulator's error is reported per measurement. A baseline whose plan is the planner's own
(same stages, shares and tiles) is measured once and reported for both. Without root (no testbed) the workers run as plain local processes, which the output says.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import replace

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
        for _ in range(5):
            start = time.process_time()  # CPU time: what a device with a whole core would take
            layer(x)
            times.append(time.process_time() - start)
    return flops / statistics.median(times)  # the median, like the measured latencies it predicts


def _hidden(model: str) -> int:
    from edgepool.models import build_model

    return build_model(model, meta=True).hf_model.config.hidden_size


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


def _plans(profile, cluster, shape, comm):
    from edgepool.inference.planner import plan_inference
    from edgepool.inference.simulate import simulate_inference

    chosen = {
        "planner": plan_inference(profile, cluster, shape, strategy="auto", comm=comm),
        "even_tp": plan_inference(profile, cluster, shape, strategy="even-tp", comm=comm),
        "pipeline": plan_inference(profile, cluster, shape, strategy="pipeline", comm=comm),
        "best_single": plan_inference(profile, cluster, shape, strategy="single", comm=comm),
    }
    simulated = {k: simulate_inference(p, profile, cluster, shape=shape, comm=comm).latency_s
                 for k, p in chosen.items()}
    return chosen, simulated


def _same_plan(a, b) -> bool:
    """Same stages, devices, shares, modes and tiles: the same computation."""
    return a.feasible and b.feasible and a.notes.get("tiles") == b.notes.get("tiles") and [
        (s.layers, s.devices, s.shares, s.parallel if len(s.devices) > 1 else "single") for s in a.stages] == [
        (s.layers, s.devices, s.shares, s.parallel if len(s.devices) > 1 else "single") for s in b.stages]


def _calibrate(cases) -> tuple[dict[str, float], dict[tuple, object]]:
    """One core rate per case (a layer of that model at that length: seq-128 and one-token layers run at other
    fractions of peak than seq-512 ones, so each case's simulation is calibrated to its own work), and each
    case's model profile."""
    from edgepool.models import build_model
    from edgepool.profile import profile_model

    case_flops = {case: _calibrate_core_flops(model, seq if phase == "prefill" else 1)
                  for case, model, phase, seq in cases}
    profiles = {}
    for _, model, phase, seq in cases:
        key = (model, phase, seq)
        profiles[key] = profile_model(build_model(model, meta=True), 1, seq if phase == "prefill" else 1)
    return case_flops, profiles


def _shape(phase: str, seq: int):
    from edgepool.inference.simulate import RequestShape

    return RequestShape(1, seq if phase == "prefill" else 1, phase, seq if phase == "decode" else 0)


def _plan_cases(cases, profiles, case_flops, cores, bandwidth: float, comm) -> dict:
    """Per case: the four plans, their simulated latencies, the model, and which earlier plan each one repeats."""
    meta = {}
    for case, model, phase, seq in cases:
        case_cluster = _cluster(bandwidth, case_flops[case], cores)
        chosen, simulated = _plans(profiles[(model, phase, seq)], case_cluster, _shape(phase, seq),
                                   replace(comm, core_flops=case_flops[case]))
        same = {name: next((o for o in PLANS[:PLANS.index(name)] if _same_plan(chosen[o], chosen[name])), None)
                for name in PLANS}
        meta[case] = (chosen, simulated, model, same)
    return meta


def _run_specs(cases, meta, rounds: int) -> list:
    """Every distinct feasible plan of every case, candidate and baselines interleaved, round after round."""
    from edgepool.inference.runner import RunSpec

    runs = []
    for r in range(rounds):
        for case, model, phase, seq in cases:
            chosen, _, _, same = meta[case]
            for name in PLANS:
                plan = chosen[name]
                if not plan.feasible or same[name]:
                    continue
                runs.append(RunSpec(name=f"{case}|{name}|{r}", model=model, plan=plan,
                                    task="forward" if phase == "prefill" else "decode", seq=seq,
                                    tiles=int(plan.notes.get("tiles", 1)), repeats=1 if phase == "prefill" else 0,
                                    warmup=1 if r == 0 else 0, max_new_tokens=DECODE_STEPS + 1))
    return runs


def _measure_link(link_name: str, bandwidth: float, cases, profiles, case_flops, core_flops, cores, quick: bool,
                  rounds: int) -> tuple[dict, dict, dict, dict]:
    """On a testbed with every link at `bandwidth`: probe the collectives, plan every case with what they cost
    there, run the plans. Returns (launcher description, comm costs, per-case plans, measurements)."""
    from edgepool.inference.runner import run_job
    from edgepool.runtime.harness import describe_launcher
    from edgepool.runtime.probes.comm import probe_comm
    from edgepool.testbed.launcher import make_launcher

    cluster = _cluster(bandwidth, core_flops, cores)
    with make_launcher("testbed", cluster, devices=list(cluster.devices)) as launcher:
        described = describe_launcher(launcher)
        width = max(_hidden(m) for _, m, _, _ in cases)
        comm, raw = probe_comm(launcher, list(cluster.devices), hidden=width, rows=max(s for *_, s in cases),
                               core_flops=core_flops, repeats=8 if quick else 24,
                               source=f"measured by runtime.probes.comm on this testbed ({link_name})")
        meta = _plan_cases(cases, profiles, case_flops, cores, bandwidth, comm)
        measured = run_job(_run_specs(cases, meta, rounds), launcher, timeout_s=1500)
    return described, {"fitted": comm.to_dict(), "per_rank": raw}, meta, measured


def _plan_row(plan, measured_as, simulated_s: float, latencies: list[float], cpu: dict[str, float],
              cores: dict[str, float]) -> dict:
    """One plan of one case: what it is, its measured and simulated latency, and the simulator's error."""
    bound = max(cpu[d] / cores[d] for d in cpu) if cpu else None
    median = statistics.median(latencies) if latencies else None
    return {
        "planner": plan.planner, "candidate": plan.notes.get("candidate"),
        "devices": plan.devices, "stages": [[list(s.layers), s.devices, [round(x, 3) for x in s.shares], s.parallel]
                                            for s in plan.stages],
        "tiles": plan.notes.get("tiles"), "measured_as": measured_as,
        "measured_latency_s": median, "measured_rounds_s": latencies, "simulated_latency_s": simulated_s,
        "cpu_s_per_device": cpu, "quota_bound_latency_s": bound,
        "simulator_error_vs_quota_bound": abs(simulated_s - bound) / bound if cpu else None,
        "simulator_error": abs(simulated_s - median) / median if latencies else None}


def _case_row(case: str, model: str, phase: str, seq: int, meta, measured: dict, rounds: int,
              cores: dict[str, float]) -> dict:
    """A case's four plans (a plan that repeats an earlier one reports that one's measurements) and the
    baselines' latencies over the planner's."""
    chosen, simulated, _, same = meta[case]
    row = {"model": model, "phase": phase, "seq": seq, "plans": {}}
    for name in PLANS:
        source = same[name] or name
        keys = [f"{case}|{source}|{r}" for r in range(rounds) if f"{case}|{source}|{r}" in measured]
        latencies = [measured[k]["latency_s"] for k in keys]
        cpu = {d: statistics.median([measured[k]["cpu_s"][d] for k in keys])
               for d in (measured[keys[0]]["cpu_s"] if keys and phase == "prefill" else {})}
        row["plans"][name] = _plan_row(chosen[name], same[name], simulated[name], latencies, cpu, cores)
    p = row["plans"]
    base = p["planner"]["measured_latency_s"]
    row["ratios"] = {f"{k}_over_planner": p[k]["measured_latency_s"] / base
                     for k in PLANS if k != "planner" and p[k]["measured_latency_s"]}
    return row


def _metrics(results: dict) -> dict:
    """The headline figures: speed-ups over the baselines and the simulator's error."""
    quota = {k: r["plans"]["best_single"]["quota_bound_latency_s"] / r["plans"]["planner"]["quota_bound_latency_s"]
             for k, r in results.items() if r["plans"]["planner"].get("quota_bound_latency_s")
             and r["plans"]["best_single"].get("quota_bound_latency_s")}
    ratios_even = [r["ratios"]["even_tp_over_planner"] for r in results.values()
                   if "even_tp_over_planner" in r["ratios"]]
    errors = [p["simulator_error"] for r in results.values() for p in r["plans"].values()
              if p["simulator_error"] is not None]
    return {
        "speedup_over_best_single_bert512_1gbps": results["bert512_1gbps"]["ratios"]["best_single_over_planner"],
        "min_ratio_even_tp_over_plan": min(ratios_even),
        "speedup_over_best_single_bert512_100mbps": results.get("bert512_100mbps", {}).get("ratios", {}).get(
            "best_single_over_planner"),
        "median_simulator_error": statistics.median(errors),
        # derived, not wall clock: CPU seconds each device used / its quota (see quota_bound_latency_s)
        "quota_bound_speedup_bert512_1gbps": quota.get("bert512_1gbps"),
        "max_simulator_error": max(errors),
    }


def run(quick: bool = False, progress: bool = True) -> dict:
    """Calibrate, then per link setting probe, plan and measure every case; the JSON the results page reads."""
    from rich.progress import Progress

    cases = CASES_QUICK if quick else CASES_FULL
    links = LINKS_QUICK if quick else LINKS_FULL
    rounds = 1 if quick else 3
    started = time.time()
    load_before = os.getloadavg()
    cores = _testbed_cores()
    case_flops, profiles = _calibrate(cases)
    core_flops = case_flops[cases[0][0]]
    results: dict = {}
    launcher_info: dict = {}
    comm_info: dict = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("inference benchmark", total=len(links))
        for link_name, bandwidth in links.items():
            launcher_info[link_name], comm_info[link_name], meta, measured = _measure_link(
                link_name, bandwidth, cases, profiles, case_flops, core_flops, cores, quick, rounds)
            for case, model, phase, seq in cases:
                results[f"{case}_{link_name}"] = _case_row(case, model, phase, seq, meta, measured, rounds, cores)
            bar.advance(task)
    fallback = next((i.get("fallback_reason") for i in launcher_info.values() if i.get("fallback_reason")), None)
    return {
        "benchmark": "inference", "quick": quick, "metrics": _metrics(results), "cases": results,
        "launcher": "local (testbed unavailable: " + fallback + "; devices NOT emulated: no CPU quotas, no shaping)"
        if fallback else "testbed",
        "testbed": launcher_info, "comm_costs": comm_info, "testbed_cpu_cores": cores,
        "calibrated_flops_per_thread": core_flops,
        "calibrated_flops_per_thread_by_case": case_flops,
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
