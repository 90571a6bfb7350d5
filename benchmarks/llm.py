"""Chat with SmolLM2-135M-Instruct served by a pool of emulated devices: the LLM planner's plan against the
best single device, exo's memory-weighted layer split and an even split, all measured in one run.

Testbed: 4 devices whose relative speeds are 1.0, 0.7, 0.5 and 0.3 (cgroup CPU quotas in that ratio, scaled so
they add up to at most 1.8 cores and the coordinator keeps some CPU; one torch thread per worker), memory
8, 8, 4 and 4 GiB, every pair linked at 1 Gbps, then at 100 Mbps (tc htb; latency is not emulated). The
checkpoint's decoder layer and head are timed on one core of this host (`llm.profile.measure_host`) and the
planner plans for the cluster the testbed realizes (`testbed.emulated_cluster`). Workloads: one stream (one
chat request: mean time per output token after the first) and 16 concurrent chat requests (aggregate output
tokens/s over the makespan, mean time to first token); real chat prompts (`ChatTokenizer.chat`), greedy, a
fixed number of new tokens (no stop at end-of-sequence, so every configuration generates as many tokens).
Each configuration runs through `llm.service.pooled_engine` (one process per stage device). `--quick` (the
tests' smoke run) uses the two fastest devices, one link setting, 6 questions and 8 new tokens. Greedy tokens of
every concurrent run are compared with `transformers`' `generate` on the same prompts (up to the first
end-of-sequence token of either). A last run kills (SIGKILL) a non-first stage's process of the planner's
concurrent plan after a few steps and counts requests that do not finish with the reference's tokens. Every
figure is measured unless its name says `predicted` (`llm.planner.predict`). Without root the workers run as
plain local processes and the result says so.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import signal
import statistics
import tempfile
import time
from pathlib import Path

RELATIVE_SPEED = {"dev-a": 1.0, "dev-b": 0.7, "dev-c": 0.5, "dev-d": 0.3}
MEMORY = {"dev-a": "8GiB", "dev-b": "8GiB", "dev-c": "4GiB", "dev-d": "4GiB"}
CPU_BUDGET = 1.8  # cores for all device quotas together (the host has 2; the coordinator needs some)
LINKS_FULL = {"1gbps": "1Gbps", "100mbps": "100Mbps"}
LINKS_QUICK = {"1gbps": "1Gbps"}
QUICK_DEVICES = ["dev-a", "dev-b"]  # --quick: two devices (the same memory, so exo's split is the even one)
CONFIGS = ("planner", "best_single", "memory_weighted", "even_split")
KILL_AFTER_STEPS = 3  # steps with work (the prefill and two decodes) before the kill
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Name three fruits that are red.",
    "How many legs does a spider have?",
    "What does a bee make?",
    "Give me a word that rhymes with cat.",
    "What is two plus three?",
    "Which planet is closest to the sun?",
    "What do plants need to grow?",
    "Write a short greeting for a friend.",
    "What is the opposite of hot?",
    "How many days are in a week?",
    "What color is grass?",
    "Who wrote Romeo and Juliet?",
    "What is water made of?",
    "Suggest a name for a pet dog.",
]


# ----------------------------------------------------------------------------- set-up
def cluster_spec(bandwidth: str, devices: list[str] | None = None):
    """The devices (default: all four) at one link setting (speeds as fp32 FLOP/s: the testbed sizes quotas by
    them)."""
    from edgepool.cluster import cluster_from_dict

    names = devices or list(RELATIVE_SPEED)

    def device(name: str) -> dict:
        return {"name": name, "spec": {"kind": "cpu", "peak_flops": {"fp32": RELATIVE_SPEED[name] * 100e9},
                                      "memory_bytes": MEMORY[name], "memory_bandwidth": "20GB/s", "cpu_cores": 4,
                                      "efficiency": 0.5, "power_idle_w": 3.0, "power_max_w": 15.0}}
    return cluster_from_dict({
        "name": f"llm-{len(names)}dev-{bandwidth}",
        "description": f"{len(names)} CPU devices, speeds {' : '.join(str(RELATIVE_SPEED[n]) for n in names)}, "
                       f"every link {bandwidth}",
        "devices": [device(n) for n in names],
        "default_link": {"bandwidth": bandwidth, "latency": "1ms"},
    }, source="benchmarks/llm.py")


def planned_cluster(spec, launcher, host):
    """The cluster the launcher really realizes: the testbed's quotas and shaped links, or local processes."""
    from edgepool.runtime.emulation import launcher_emulation
    from edgepool.runtime.harness import describe_launcher
    from edgepool.testbed.testbed import emulated_cluster

    if getattr(launcher, "kind", "") == "testbed":
        return launcher.emulated_cluster(host)
    return emulated_cluster(spec, launcher_emulation(spec, describe_launcher(launcher)), host)


def reference_tokens(checkpoint, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """`transformers`' greedy `generate`, one prompt at a time (no padding), stopping at its end-of-sequence."""
    import torch

    from edgepool.llm.checkpoint import load_full_model

    model = load_full_model(checkpoint)
    out = []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False)
            out.append([int(t) for t in y[0, len(ids):]])
    del model
    return out


def upto_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """Tokens up to and including the first end-of-sequence token."""
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:i + 1]
    return list(tokens)


def same_tokens(engine_tokens: list[int], reference: list[int], stop_ids: set[int], new_tokens: int) -> bool:
    """Equal up to the first end-of-sequence token (the reference stops there, the engine goes on)."""
    if len(reference) < new_tokens:  # generate stopped early: at its end-of-sequence token
        return list(engine_tokens[:len(reference)]) == list(reference)
    return upto_stop(engine_tokens, stop_ids) == upto_stop(reference, stop_ids)


def structure(plan) -> tuple:
    from edgepool.llm.planner import stage_layer_ranges

    return tuple((s.devices[0], a, b) for s, (a, b) in zip(plan.stages, stage_layer_ranges(plan)))


def describe_plan(plan) -> dict:
    return {"planner": plan.planner, "feasible": plan.feasible, "infeasible_reason": plan.infeasible_reason,
            "stages": [{"device": d, "layers": [a, b - 1], "num_layers": b - a} for d, a, b in structure(plan)],
            "left_out": plan.notes.get("left_out", {}),
            "planned_for": plan.notes.get("workload")}


# ----------------------------------------------------------------------------- runs
def run_workload(engine, prompts: list[list[int]], new_tokens: int, tag: str, kill: dict | None = None) -> dict:
    """Submit every prompt at time 0, step the engine until all are done (the step clock is wall time), and
    return the measured figures. `kill`: {"after_steps": k, "handle": worker handle} SIGKILLs that process once
    k steps with work have run."""
    requests = [engine.make_request(f"{tag}{i}", ids, new_tokens, stop_at_eos=False, arrival_time=0.0)
                for i, ids in enumerate(prompts)]
    for r in requests:
        engine.add(r)
    start = time.perf_counter()
    busy_steps, killed_at = 0, None
    while engine.has_work():
        step = engine.step(time.perf_counter() - start)
        if step.plan.batch:
            busy_steps += 1
        if kill and killed_at is None and busy_steps >= kill["after_steps"]:
            os.kill(kill["handle"].pid, signal.SIGKILL)
            killed_at = time.perf_counter() - start
    wall = time.perf_counter() - start
    finished = [r for r in requests if r.finish_time is not None]
    makespan = max((r.finish_time for r in finished), default=wall)
    generated = sum(len(r.output_tokens) for r in requests)
    ttfts = [r.first_token_time for r in requests if r.first_token_time is not None]
    per_token = [(r.finish_time - r.first_token_time) / (len(r.output_tokens) - 1) for r in finished
                 if r.first_token_time is not None and len(r.output_tokens) > 1]
    return {"requests": len(requests), "new_tokens_each": new_tokens, "generated_tokens": generated,
            "makespan_s": makespan, "wall_s": wall, "tokens_per_s": generated / makespan if makespan else 0.0,
            "mean_ttft_s": statistics.fmean(ttfts) if ttfts else None,
            "mean_time_per_output_token_s": statistics.fmean(per_token) if per_token else None,
            "killed_at_s": killed_at, "requests_obj": requests}


def start_engine(checkpoint, profile, cluster, plan, launcher, workload):
    from edgepool.llm.service import pooled_engine

    t0 = time.perf_counter()
    engine = pooled_engine(checkpoint, profile, cluster, plan, launcher, workload=workload)
    return engine, time.perf_counter() - t0


def measure_link(link: str, bandwidth: str, checkpoint, profile, host, prompts, single_prompt, new_tokens,
                 reference, stop_ids, with_kill: bool, say, advance, decode=None,
                 devices: list[str] | None = None) -> dict:
    """Plan every configuration for the cluster this testbed realizes, run each distinct plan once (one
    engine per plan: the one-stream run, then the concurrent run), and optionally the kill run."""
    from edgepool.llm.planner import LLMWorkload, best_single, even_split, memory_weighted_split, plan_llm, predict
    from edgepool.runtime.emulation import simulator_error
    from edgepool.runtime.harness import describe_launcher
    from edgepool.runtime.launch import make_run_launcher

    spec = cluster_spec(bandwidth, devices)
    concurrent = LLMWorkload(requests=len(prompts), prompt_tokens=round(statistics.fmean(map(len, prompts))),
                             new_tokens=new_tokens)
    single = LLMWorkload(requests=1, prompt_tokens=len(single_prompt), new_tokens=new_tokens)
    out: dict = {"workloads": {"concurrent": concurrent.__dict__, "single_stream": single.__dict__}}
    with make_run_launcher("testbed", spec, cpu_budget=CPU_BUDGET) as launcher:
        out["launcher"] = describe_launcher(launcher)
        cluster = planned_cluster(spec, launcher, host)
        out["emulated_devices"] = {n: {"fp32_flops": d.peak("fp32"), "memory_bytes": d.memory_bytes,
                                       "description": d.description} for n, d in cluster.devices.items()}
        plans = {
            "concurrent": {"planner": plan_llm(profile, cluster, concurrent),
                           "best_single": best_single(profile, cluster, concurrent),
                           "memory_weighted": memory_weighted_split(profile, cluster, workload=concurrent),
                           "even_split": even_split(profile, cluster, workload=concurrent)},
            "single_stream": {"planner": plan_llm(profile, cluster, single),
                              "best_single": best_single(profile, cluster, single),
                              "memory_weighted": memory_weighted_split(profile, cluster, workload=single),
                              "even_split": even_split(profile, cluster, workload=single)},
        }
        # one engine per distinct plan structure; each runs the workloads whose configurations use it
        runs: dict[tuple, list[tuple[str, str]]] = {}
        for wl, by_config in plans.items():
            for config, plan in by_config.items():
                runs.setdefault(structure(plan), []).append((wl, config))
        measured: dict[tuple, dict] = {}
        for key, uses in runs.items():
            wl0, config0 = uses[0]
            plan = plans[wl0][config0]
            say(f"{link}: {'+'.join(sorted({c for _, c in uses}))} on "
                f"{', '.join(f'{d}[{a}:{b}]' for d, a, b in key)}")
            engine, startup = start_engine(checkpoint, profile, cluster, plan, launcher, concurrent)
            try:
                entry = {"engine_start_s": startup, "kv_blocks": engine.blocks.num_blocks}
                if any(wl == "single_stream" for wl, _ in uses):
                    entry["single_stream"] = run_workload(engine, [single_prompt], new_tokens, "s")
                    advance()
                if any(wl == "concurrent" for wl, _ in uses):
                    entry["concurrent"] = run_workload(engine, prompts, new_tokens, "c")
                    advance()
                entry["pool_events"] = len(engine.executor.events)
            finally:
                engine.executor.close()
            measured[key] = entry
        results: dict = {}
        for wl, by_config in plans.items():
            workload = concurrent if wl == "concurrent" else single
            for config, plan in by_config.items():
                m = measured[structure(plan)][wl]
                predicted = predict(plan, profile, cluster, workload)
                row = results.setdefault(config, {})
                figures = {k: v for k, v in m.items() if k != "requests_obj"}
                row[wl] = {
                    "plan": describe_plan(plan), "measured": figures,
                    "predicted": {"tokens_per_s": predicted["tokens_per_s"], "ttft_s": predicted["ttft_s"],
                                  "decode_step_s": predicted["decode_step_s"],
                                  "single_stream_tokens_per_s": predicted["single_stream_tokens_per_s"]},
                    "simulator_error_tokens_per_s": simulator_error(predicted["tokens_per_s"],
                                                                    figures["tokens_per_s"]),
                    "engine_start_s": measured[structure(plan)]["engine_start_s"],
                }
                if wl == "concurrent":
                    bad = [r.request_id for r, ref in zip(m["requests_obj"], reference)
                           if not same_tokens(r.output_tokens, ref, stop_ids, new_tokens)]
                    row[wl]["greedy_mismatching_requests"] = bad
                    if config == "planner" and decode is not None:  # a transcript: what the pool answered
                        row[wl]["sample_answers"] = [decode(upto_stop(r.output_tokens, stop_ids))
                                                     for r in m["requests_obj"][:3]]
        for entry in measured.values():
            for wl in ("single_stream", "concurrent"):
                if wl in entry:
                    entry[wl].pop("requests_obj", None)
        out["configurations"] = results
        out["distinct_plans_run"] = len(runs)
        if with_kill:
            out["kill"] = kill_run(checkpoint, profile, cluster, launcher, plans["concurrent"]["planner"],
                                   concurrent, prompts, new_tokens, reference, stop_ids, say)
            advance()
    return out


def kill_run(checkpoint, profile, cluster, launcher, planner_plan, workload, prompts, new_tokens, reference,
             stop_ids, say) -> dict:
    """The concurrent workload on the planner's plan (or, if it has one stage, the best plan on the two fastest
    devices); the last stage's process is SIGKILLed after a few steps."""
    from edgepool.llm.planner import plan_llm

    plan, why = planner_plan, "the planner's plan for the concurrent workload"
    if len(plan.stages) < 2:
        fastest = sorted(cluster.devices, key=lambda d: -cluster.devices[d].peak("fp32"))[:2]
        plan = plan_llm(profile, cluster, workload, devices=fastest)
        why = f"the planner's plan has one stage; the best plan on the two fastest devices ({', '.join(fastest)})"
        if len(plan.stages) < 2:
            from edgepool.llm.planner import even_split
            plan = even_split(profile, cluster, devices=fastest, workload=workload)
            why += " has one stage too; an even split over them"
    say(f"kill run on {', '.join(f'{d}[{a}:{b}]' for d, a, b in structure(plan))}")
    engine, _ = start_engine(checkpoint, profile, cluster, plan, launcher, workload)
    try:
        victim = engine.executor._handles[-1]
        m = run_workload(engine, prompts, new_tokens, "k", kill={"after_steps": KILL_AFTER_STEPS, "handle": victim})
        events = [{"kind": e.kind, "devices": e.devices, "at_s": e.at_s, "recovery_s": e.recovery_s,
                   "stages": [[s.device, s.first, s.end] for s in e.stages]} for e in engine.executor.events]
    finally:
        engine.executor.close()
    requests = m.pop("requests_obj")
    unfinished = [r.request_id for r in requests
                  if r.finish_time is None or len(r.output_tokens) != new_tokens or r.error]
    changed = [r.request_id for r, ref in zip(requests, reference)
               if not same_tokens(r.output_tokens, ref, stop_ids, new_tokens)]
    return {"plan": describe_plan(plan), "why_this_plan": why, "killed_device": victim.device,
            "killed_after_steps": KILL_AFTER_STEPS, "measured": m, "pool_events": events,
            "unfinished_requests": unfinished, "requests_with_changed_tokens": changed,
            "requests_lost": len(set(unfinished) | set(changed)),
            "recomputes": sum(r.recomputes for r in requests)}


# ----------------------------------------------------------------------------- metrics, figure
def metrics(links: dict) -> dict:
    one = links["1gbps"]["configurations"]
    conc = {c: one[c]["concurrent"]["measured"]["tokens_per_s"] for c in CONFIGS}
    lat = {c: one[c]["single_stream"]["measured"]["mean_time_per_output_token_s"] for c in CONFIGS}
    mismatched: set = set()  # (link, plan, request): configurations that share a plan share its run
    for link, data in links.items():
        for row in data["configurations"].values():
            stages = tuple((s["device"], *s["layers"]) for s in row["concurrent"]["plan"]["stages"])
            mismatched |= {(link, stages, r) for r in row["concurrent"]["greedy_mismatching_requests"]}
    out = {
        "concurrent_tokens_per_s_ratio_vs_best_single": conc["planner"] / conc["best_single"],
        "single_stream_latency_ratio_vs_best_single": lat["planner"] / lat["best_single"],
        "ratio_vs_memory_weighted_split": conc["planner"] / conc["memory_weighted"],
        "greedy_mismatches": len(mismatched),
        "requests_lost_on_kill": links["1gbps"]["kill"]["requests_lost"],
        "simulator_error_tokens_per_s": one["planner"]["concurrent"]["simulator_error_tokens_per_s"],
    }
    for link, data in links.items():
        for c in CONFIGS:
            row = data["configurations"][c]
            out[f"measured_concurrent_tokens_per_s_{c}_{link}"] = row["concurrent"]["measured"]["tokens_per_s"]
            out[f"predicted_concurrent_tokens_per_s_{c}_{link}"] = row["concurrent"]["predicted"]["tokens_per_s"]
            out[f"measured_single_stream_s_per_token_{c}_{link}"] = \
                row["single_stream"]["measured"]["mean_time_per_output_token_s"]
            out[f"predicted_single_stream_s_per_token_{c}_{link}"] = \
                row["single_stream"]["predicted"]["decode_step_s"]
            out[f"measured_mean_ttft_s_{c}_{link}"] = row["concurrent"]["measured"]["mean_ttft_s"]
            out[f"predicted_ttft_s_{c}_{link}"] = row["concurrent"]["predicted"]["ttft_s"]
    return out


def draw(links: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgepool.plotting import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(links), 1)
    for i, (link, data) in enumerate(links.items()):
        xs = [j + (i - (len(links) - 1) / 2) * width for j in range(len(CONFIGS))]
        rows = [data["configurations"][c] for c in CONFIGS]
        conc = [r["concurrent"]["measured"]["tokens_per_s"] for r in rows]
        pred = [r["concurrent"]["predicted"]["tokens_per_s"] for r in rows]
        axes[0].bar(xs, conc, width, label=f"{link} measured")
        axes[0].scatter(xs, pred, marker="_", s=300, color="black", zorder=3,
                        label="predicted" if i == 0 else None)
        lat = [r["single_stream"]["measured"]["mean_time_per_output_token_s"] * 1e3 for r in rows]
        plat = [r["single_stream"]["predicted"]["decode_step_s"] * 1e3 for r in rows]
        axes[1].bar(xs, lat, width, label=f"{link} measured")
        axes[1].scatter(xs, plat, marker="_", s=300, color="black", zorder=3,
                        label="predicted decode step" if i == 0 else None)
    requests = next(iter(links.values()))["workloads"]["concurrent"]["requests"]
    for ax, title, ylabel in ((axes[0], f"{requests} concurrent chat requests", "output tokens/s"),
                              (axes[1], "one stream", "ms per output token")):
        ax.set_xticks(range(len(CONFIGS)))
        ax.set_xticklabels([c.replace("_", " ") for c in CONFIGS], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M-Instruct on 4 emulated devices (measured bars, predicted ticks)", fontsize=10)
    return save_figure(fig, path)


def _shown(path: Path) -> str:
    """The figure's path relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- entry points
def run(quick: bool = False, progress: bool = True) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    from edgepool.llm.checkpoint import resolve_checkpoint
    from edgepool.llm.profile import LLMProfile, measure_host
    from edgepool.llm.tokenizer import ChatTokenizer
    from edgepool.runtime.emulation import ahead_of_other_jobs
    from edgepool.testbed.testbed import host_core_device

    started = time.time()
    load_before = os.getloadavg()
    links_wanted = LINKS_QUICK if quick else LINKS_FULL
    new_tokens = 8 if quick else 32
    questions = QUESTIONS[:6] if quick else QUESTIONS
    console = Console(stderr=False, quiet=not progress)
    checkpoint = resolve_checkpoint(progress=progress)
    tokenizer = ChatTokenizer.from_checkpoint(checkpoint)
    prompts = [tokenizer.chat([{"role": "user", "content": q}]) for q in questions]
    single_prompt = prompts[0]
    runs_per_link = 2 * len(CONFIGS)  # upper bound: identical plans share a run
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("llm benchmark: reference generation", total=1 + len(links_wanted) * runs_per_link + 1)

        def say(msg: str) -> None:
            bar.update(task, description=f"llm benchmark: {msg}")
            if progress:
                console.print(f"[llm bench] {msg}")

        def advance() -> None:
            bar.advance(task)

        t = time.perf_counter()
        reference = reference_tokens(checkpoint, prompts, new_tokens)
        reference_s = time.perf_counter() - t
        say(f"reference greedy tokens from transformers.generate in {reference_s:.1f} s; timing one host core")
        with ahead_of_other_jobs():
            host = host_core_device()
            profile = measure_host(checkpoint.folder, LLMProfile.from_pretrained(checkpoint.folder,
                                                                                  name=checkpoint.name),
                                   host=host, budget_s=2.0 if quick else 4.0)
        advance()
        links = {}
        for i, (link, bandwidth) in enumerate(links_wanted.items()):
            links[link] = measure_link(link, bandwidth, checkpoint, profile, host, prompts, single_prompt,
                                       new_tokens, reference, tokenizer.stop_ids, with_kill=(i == 0), say=say,
                                       advance=advance, decode=tokenizer.decode, devices=QUICK_DEVICES if quick else None)
    fallback = next((d["launcher"].get("fallback_reason") for d in links.values()
                     if d["launcher"].get("fallback_reason")), None)
    date = _dt.date.today().isoformat()
    figure_dir = Path(tempfile.gettempdir()) if quick else Path(__file__).resolve().parent / "results" / "llm"
    figure = draw(links, figure_dir / f"bench-llm-{date}{'-quick' if quick else ''}.png")
    return {
        "benchmark": "llm", "quick": quick, "metrics": metrics(links),
        "units": "tokens/s = output tokens / makespan (all requests submitted at 0); latency and TTFT in s; "
                 "ratios measured wall clock; simulator error = |predicted - measured| / measured",
        "source": "measured (emulated testbed)" if not fallback else "measured (local processes, NOT emulated)",
        "launcher": "testbed" if not fallback else
                    f"local (testbed unavailable: {fallback}; devices NOT emulated: no CPU quotas, no shaping)",
        "model": {"name": checkpoint.name, "source": checkpoint.source, "num_layers": profile.num_layers,
                  "dtype": "float32"},
        "set_up": {"devices": QUICK_DEVICES if quick else list(RELATIVE_SPEED),
                   "relative_speed": RELATIVE_SPEED, "memory": MEMORY, "cpu_budget_cores": CPU_BUDGET,
                   "links": links_wanted, "questions": questions, "prompt_tokens": [len(p) for p in prompts],
                   "new_tokens": new_tokens, "greedy": True, "stop_at_eos": False,
                   "reference": "transformers generate, greedy, one prompt at a time, compared up to the first "
                                "end-of-sequence token", "reference_s": reference_s,
                   "reference_tokens_compared": [len(ref) for ref in reference],
                   "reference_stopped_at_eos": sum(1 for ref in reference if len(ref) < new_tokens
                                                   or ref[-1] in tokenizer.stop_ids),
                   "kill": f"SIGKILL of the last stage's process after {KILL_AFTER_STEPS} steps with work"},
        "host_profile": {"host_layer_s": profile.host_layer_s, "host_head_s": profile.host_head_s,
                         "host_flops": profile.host_flops, "measured": profile.host_measured},
        "links": links, "figure": _shown(figure),
        "labels": "`measured` figures come from runs in this benchmark; `predicted` from "
                  "edgepool.llm.planner.predict for the cluster the testbed realizes",
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores; shared with other jobs)",
        "command": "edgepool bench llm" + (" --quick" if quick else "") + " --json",
        "wall_s": time.time() - started,
        "host_load_average": {"before": load_before, "after": os.getloadavg()},
    }


def render(result: dict) -> str:
    lines = [f"llm benchmark ({result['launcher']}; {result['machine']}); figure {result['figure']}"]
    for link, data in result["links"].items():
        for c, row in data["configurations"].items():
            cm, cp = row["concurrent"]["measured"], row["concurrent"]["predicted"]
            sm = row["single_stream"]["measured"]
            stages = ", ".join(f"{s['device']} {s['layers'][0]}-{s['layers'][1]}"
                               for s in row["concurrent"]["plan"]["stages"])
            lines.append(f"  {link} {c:16s} concurrent {cm['tokens_per_s']:.1f} tok/s measured "
                         f"({cp['tokens_per_s']:.1f} predicted), TTFT {cm['mean_ttft_s']:.2f} s; one stream "
                         f"{sm['mean_time_per_output_token_s'] * 1e3:.0f} ms/token; plan {stages}")
    lines.append("metrics: " + ", ".join(f"{k}={v:.3g}" for k, v in result["metrics"].items()
                                         if not k.startswith(("measured_", "predicted_"))))
    return "\n".join(lines)
