"""`edgepool bench power`: PowerTrain transfer error on measured profiles, Fulcrum searches vs the optimum.

PowerTrain: profiles measured here (emulated modes: cores x torch threads x cgroup CPU quota) of a reference
workload pretrain the predictor; for each other workload, 10/25/50 profiled modes transfer it, and its time
MAPE on the held-out modes is compared with the same network trained from scratch on the same samples and
with linear scaling of the reference's times. Profiles are cached under benchmarks/results/power/ (set
EDGEPOOL_POWER_REFRESH=1 to measure again; `edgepool power profile` collects them too).

Fulcrum: GMD and ALS searches for the mode with the most training throughput under a power budget and an
inference latency goal, over (a) the measured local table and (b) the simulated AGX Orin grid (4,368 modes,
Pagoda rooflines + fitted power model); each is compared with exhaustive search and random search of the
same profiling budget. Power is modelled in both (this host has no energy counters).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from edgepool.power import fulcrum as fc
from edgepool.power import powertrain as pt
from edgepool.power.modes import local_mode_space, quick_local_mode_space
from edgepool.power.profiler import ProfileTable, profile_modes, times_array
from edgepool.power.workloads import INFERENCE, REFERENCE, TARGETS

def results_dir() -> Path:
    """Where measured profiles are cached: $EDGEPOOL_POWER_RESULTS or benchmarks/results/power (committed)."""
    default = Path(__file__).resolve().parent / "results" / "power"
    return Path(os.environ.get("EDGEPOOL_POWER_RESULTS", default))
SAMPLES = (10, 25, 50)
SPLITS = 5
PROFILE_FRACTION = 0.10  # searches may profile at most this share of the modes


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def load_or_collect(quick: bool, progress: bool) -> tuple[ProfileTable, str]:
    """The cached measured table, or a fresh one (quick: 36 modes, 1 pass; full: 132 modes, 3 passes)."""
    space = quick_local_mode_space() if quick else local_mode_space()
    path = results_dir() / ("profiles-quick.json" if quick else "profiles-full.json")
    if path.exists() and not os.environ.get("EDGEPOOL_POWER_REFRESH"):
        return ProfileTable.load(path), f"cached measurement {path} ({ProfileTable.load(path).meta.get('date')})"
    workloads = [REFERENCE, *TARGETS[1:3], *INFERENCE] if quick else [REFERENCE, *TARGETS, *INFERENCE]
    _log(progress, f"profiling {len(workloads)} workloads x {space.size} modes on this host ...")
    table = profile_modes(space, workloads, passes=1 if quick else 3, progress=progress,
                          log=lambda t: _log(progress, t))
    table.save(path)
    return table, f"measured in this run, saved to {path}"


# ----------------------------------------------------------------------------------------- PowerTrain
def powertrain_section(table: ProfileTable, space, splits: int = SPLITS) -> dict:
    modes = space.modes()
    ref_t = times_array(table, REFERENCE.name, modes)
    ref_p = np.array([table.series(REFERENCE.name, "power_w")[m] for m in modes])
    pretrained = pt.fit_predictor(space, modes, ref_t, ref_p)
    targets = [w for w in table.workloads() if w != REFERENCE.name and w.endswith("-train")]
    rows, summary = [], {}
    for k in SAMPLES:
        used = min(k, len(modes) - 10)
        errors = {"transfer": [], "scratch": [], "linear": [], "transfer_power": []}
        for w in targets:
            t = times_array(table, w, modes)
            p = np.array([table.series(w, "power_w")[m] for m in modes])
            for split in range(splits):
                rng = np.random.default_rng(1000 * k + split)
                idx = rng.choice(len(modes), used, replace=False)
                hold = np.setdiff1d(np.arange(len(modes)), idx)
                seen, unseen = [modes[i] for i in idx], [modes[i] for i in hold]
                moved = pt.transfer(pretrained, seen, t[idx], p[idx])
                pred_t, pred_p = moved.predict(unseen)
                scratch = pt.fit_predictor(space, seen, t[idx], p[idx], seed=split, how="scratch")
                linear = pt.linear_scaling(ref_t, idx, t[idx])
                errors["transfer"].append(pt.mape(pred_t, t[hold]))
                errors["transfer_power"].append(pt.mape(pred_p, p[hold]))
                errors["scratch"].append(pt.mape(scratch.predict(unseen)[0], t[hold]))
                errors["linear"].append(pt.mape(linear[hold], t[hold]))
                rows.append({"workload": w, "samples": used, "split": split,
                             **{key: round(v[-1], 2) for key, v in errors.items()}})
        summary[k] = {key: float(np.mean(v)) for key, v in errors.items()} | {"samples_used": used}
    return {"reference": REFERENCE.name, "targets": targets, "modes": len(modes), "splits": splits,
            "pretrain_mape_in_sample": pt.mape(pretrained.predict(modes)[0], ref_t),
            "summary": summary, "per_split": rows}, pretrained


# ----------------------------------------------------------------------------------------- Fulcrum
def _scenarios(space, table: dict, train_batch: int) -> list[fc.Scenario]:
    """Power budgets at the 30/50/80th percentile of mode powers x two latency goals, scaled to the workload."""
    top = table[space.max_mode()]
    powers = np.array([m.power_w for m in table.values()])
    base = top.times["train"] + 2 * top.times["infer_b8"]
    rate = 4.0 / base  # a few requests per fastest cycle
    out = []
    for q in (30, 50, 80):
        for goal in (2.0, 4.0):
            out.append(fc.Scenario(arrival_rate=rate, latency_goal_s=goal * base,
                                   power_budget_w=float(np.percentile(powers, q)), train_batch=train_batch,
                                   name=f"power<=p{q}, latency<={goal:g}x"))
    return out


def _search_all(space, table: dict, scenarios, pretrained, als_budget: int, seed: int = 0) -> list[dict]:
    cap = max(3, int(PROFILE_FRACTION * space.size))
    out = []
    for s in scenarios:
        best = fc.exhaustive_search(fc.Oracle(space, table), s)
        if best.throughput <= 0:
            continue  # no mode meets this scenario; nothing to compare
        gmd = fc.gmd_search(fc.Oracle(space, table), s, budget=cap)
        als = fc.als_search(fc.Oracle(space, table), s, pretrained, budget=min(als_budget, cap), seed=seed)
        rnd = fc.random_search(fc.Oracle(space, table), s, budget=max(gmd.profiled, als.profiled), seed=seed)
        out.append({"scenario": s.name, "power_budget_w": s.power_budget_w, "latency_goal_s": s.latency_goal_s,
                    "arrival_rate": s.arrival_rate, "optimum_throughput": best.throughput,
                    "optimum_mode": space.describe(best.mode),
                    **{f"{r.method}_fraction": r.throughput / best.throughput for r in (gmd, als, rnd)},
                    **{f"{r.method}_profiled": r.profiled for r in (gmd, als, rnd)},
                    "modes": space.size})
    return out


def local_fulcrum(table: ProfileTable, space, pretrained, quick: bool = False) -> dict:
    """Every measured training workload (except the reference) against the measured inference workload."""
    b1, b8 = table.series(INFERENCE[0].name), table.series(INFERENCE[1].name)
    trains = [w for w in table.workloads() if w.endswith("-train") and w != REFERENCE.name]
    runs = []
    for train in trains:
        t, power = table.series(train), table.series(train, "power_w")
        oracle_table = {m: fc.Measurement({"train": t[m], "infer_b1": b1[m], "infer_b8": b8[m]}, power[m])
                        for m in table.modes(train)}
        scenarios = _scenarios(space, oracle_table, train_batch=8)[:: 3 if quick else 1]
        for run in _search_all(space, oracle_table, scenarios, pretrained, als_budget=space.size // 10):
            runs.append({"train": train, **run})
    return {"space": space.name, "modes": space.size, "source": "measured times, modelled power",
            "train": trains, "inference": [w.name for w in INFERENCE], "runs": runs}


def orin_fulcrum(quick: bool) -> dict:
    names = ("llama-tiny", "gpt2-tiny", "bert-tiny") if quick else ("resnet18", "mobilenet_v2", "resnet50")
    space, oracle_table, pretrained = fc.simulated_tables("jetson-agx-orin", *names, train_batch=32)
    scenarios = _scenarios(space, oracle_table, train_batch=32)[:: 3 if quick else 1]
    return {"space": space.name, "modes": space.size, "source": "simulated (Pagoda rooflines + fitted power model)",
            "reference": names[0], "train": names[1], "inference": names[2],
            "runs": _search_all(space, oracle_table, scenarios, pretrained, als_budget=20 if quick else 40)}


# ----------------------------------------------------------------------------------------- entry points
def run(quick: bool = False, progress: bool = True) -> dict:
    started = time.time()
    table, provenance = load_or_collect(quick, progress)
    space = table.mode_space()  # without root only cpu_fraction = 1.0 was measured
    _log(progress, "PowerTrain: pretrain + transfer ...")
    powertrain, pretrained = powertrain_section(table, space, splits=2 if quick else SPLITS)
    _log(progress, "Fulcrum on the measured local modes ...")
    local = local_fulcrum(table, space, pretrained, quick)
    _log(progress, "Fulcrum on the simulated AGX Orin grid ...")
    orin = orin_fulcrum(quick)
    runs = local["runs"] + orin["runs"]
    summary = powertrain["summary"]
    metrics = {
        "mape_transfer_50": summary[50]["transfer"],
        "gmd_fraction_of_optimum": float(np.mean([r["gmd_fraction"] for r in runs])),
        "als_fraction_of_optimum": float(np.mean([r["als_fraction"] for r in runs])),
        "max_fraction_of_modes_profiled": float(max(max(r["gmd_profiled"], r["als_profiled"]) / r["modes"]
                                                    for r in runs)),
        "gmd_fraction_of_optimum_min": float(min(r["gmd_fraction"] for r in runs)),
        "als_fraction_of_optimum_min": float(min(r["als_fraction"] for r in runs)),
        "random_fraction_of_optimum": float(np.mean([r["random_fraction"] for r in runs])),
        "power_mape_transfer_50": summary[50]["transfer_power"],
    }
    for k in SAMPLES:
        metrics[f"mape_transfer_{k}"] = summary[k]["transfer"]
        metrics[f"mape_scratch_{k}"] = summary[k]["scratch"]
        metrics[f"mape_linear_{k}"] = summary[k]["linear"]
    return {
        "benchmark": "power",
        "metrics": metrics,
        "notes": {
            "time": "measured on this host per emulated mode (cores = affinity, threads = torch threads, "
                    "cpu_fraction = cgroup v1 CFS quota); the host was shared with other jobs, so times are "
                    "noisy (the fastest of several blocks over several passes is kept)",
            "power": "modelled everywhere (no energy counters here); power_mape is against modelled power",
            "orin": "simulated: Pagoda rooflines and the power model fitted to published figures",
            "fractions": "gmd/als_fraction_of_optimum are means over scenarios; *_min the worst scenario",
            "profiles": provenance,
        },
        "powertrain": powertrain,
        "fulcrum": {"local": local, "orin": orin},
        "profile_meta": table.meta,
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, shared)",
        "command": "edgepool bench power" + (" --quick" if quick else ""),
        "wall_s": round(time.time() - started, 1),
    }


def render(result: dict) -> str:
    m = result["metrics"]
    lines = ["PowerTrain time MAPE on held-out modes (%), measured profiles:",
             "  samples  transfer  scratch  linear"]
    for k in SAMPLES:
        lines.append(f"  {k:>7}  {m[f'mape_transfer_{k}']:8.1f}  {m[f'mape_scratch_{k}']:7.1f}  "
                     f"{m[f'mape_linear_{k}']:6.1f}")
    lines.append("Fulcrum (throughput as a fraction of the exhaustive optimum, mean / worst):")
    lines.append(f"  GMD {m['gmd_fraction_of_optimum']:.3f} / {m['gmd_fraction_of_optimum_min']:.3f}   "
                 f"ALS {m['als_fraction_of_optimum']:.3f} / {m['als_fraction_of_optimum_min']:.3f}   "
                 f"random {m['random_fraction_of_optimum']:.3f}")
    lines.append(f"  most modes profiled by a search: {m['max_fraction_of_modes_profiled']:.1%}")
    lines.append(f"profiles: {result['notes']['profiles']}")
    return "\n".join(lines)
