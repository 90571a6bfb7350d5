"""Recovery benchmark: pipeline replay vs restarting every worker from the last checkpoint, measured.

One run of each, interleaved in the same benchmark run, on real processes (gloo over loopback, one process per
device, this host): a small GPT-2-style decoder trained as a 3-stage pipeline (the `gpipe` planner on the home
cluster's laptop, jetson and phone); the jetson's worker is killed with SIGKILL half-way through iteration
FAIL_STEP. Replay: the survivors re-plan, restore the lost stage from the in-memory replica and replay the
interrupted iteration. Baseline: every worker is killed and restarted on the re-planned survivors from the last
checkpoint (every K iterations), recomputing the iterations since. Recovery time = from the kill to the
completion of the interrupted iteration (training back where it was); the first completed iteration after the
failure is reported too. Samples lost / double-counted come from the workers' record of which samples entered
each committed update.
"""
from __future__ import annotations

import os
import platform

K = 5  # checkpoint every K iterations (baseline)
STEPS = 12
FAIL_STEP = 8  # 3 iterations after the checkpoint at 5: the average case for K = 5 is 2.5
MODEL = dict(vocab_size=512, n_positions=64, n_embd=64, n_layer=4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
             attn_pdrop=0.0, bos_token_id=0, eos_token_id=1)
BATCH, SEQ, MICROBATCHES = 8, 32, 4


def _throughput(completions: dict[int, float], steps: range, batch: int) -> float | None:
    gaps = [completions[s] - completions[s - 1] for s in steps if s in completions and s - 1 in completions]
    return batch * len(gaps) / sum(gaps) if gaps else None


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.cluster import load_cluster
    from edgepool.costmodel import CostModel
    from edgepool.elastic.recovery import ElasticRun, FailureSpec, Supervision, Training
    from edgepool.elastic.strategy import CheckpointRestart, PipelineReplay
    from edgepool.planners import get_planner
    from edgepool.profile import profile_model
    from edgepool.runtime.data import ModelSpec, build_bundle

    cluster = load_cluster("home")
    model = ModelSpec(name="gpt2", overrides=MODEL, seed=0)
    profile = profile_model(build_bundle(model), batch=1, seq=SEQ)
    cost_model = CostModel(optimizer="adam")
    devices = ["laptop", "jetson", "phone"]

    def replan(ds):
        return get_planner("gpipe").plan(profile, cluster, cost_model, BATCH,
                                         constraints={"devices": list(ds), "microbatches": MICROBATCHES})

    steps, fail_step, k = (7, 4, 3) if quick else (STEPS, FAIL_STEP, K)
    plan = replan(devices)
    victim = plan.devices[1]
    results = {}
    for strategy in (PipelineReplay(), CheckpointRestart(checkpoint_every=k)):
        mode = strategy.name
        if progress:
            print(f"[recovery] {mode}: {steps} iterations, kill -9 {victim} in iteration {fail_step}", flush=True)
        outcome = ElasticRun(plan, model, steps, replan, strategy, failures=[FailureSpec(victim, fail_step)],
                             training=Training(seq=SEQ, optimizer="adam", lr=1e-3),
                             supervision=Supervision(timeout_s=240)).run()
        rec = outcome.recovery_times()[0]
        fail_t = next(e["time"] for e in outcome.events if e["kind"] == "failure")
        results[mode] = {
            "recovery_s": rec["time_to_interrupted_iteration_s"],
            "first_iteration_after_failure_s": rec["time_to_first_iteration_s"],
            "throughput_before": _throughput(outcome.completions, range(2, fail_step), BATCH),
            "throughput_after": _throughput(outcome.completions, range(fail_step + 2, steps), BATCH),
            "samples": outcome.samples, "plans": [p.devices for p in outcome.plans],
            "events": [{k: v for k, v in e.items() if k != "after"} | {"t_s": e["time"] - fail_t}
                       for e in outcome.events],
            "replica": {d: r["replica"] for d, r in outcome.results.items()} if mode == "replay" else None,
        }
    replay, ckpt = results["replay"], results["checkpoint"]
    replica = next(iter(replay["replica"].values()))
    metrics = {
        "recovery_speedup_vs_checkpoint_restart": ckpt["recovery_s"] / replay["recovery_s"],
        "samples_lost": replay["samples"]["samples_lost"],
        "samples_double_counted": replay["samples"]["samples_double_counted"],
        "replay_recovery_s": replay["recovery_s"],
        "checkpoint_restart_recovery_s": ckpt["recovery_s"],
        "first_iteration_speedup": ckpt["first_iteration_after_failure_s"] / replay["first_iteration_after_failure_s"],
        "checkpoint_samples_lost": ckpt["samples"]["samples_lost"],
        "checkpoint_samples_double_counted": ckpt["samples"]["samples_double_counted"],
        "throughput_before": replay["throughput_before"], "throughput_after": replay["throughput_after"],
        "replica_bytes_sent_per_iteration_per_device": replica["bytes_sent_per_iteration"][0],
        "replica_exchange_s_per_iteration": max(r["exchange_s_mean"] for r in replay["replica"].values()),
        "replica_held_bytes_max": max(r["held_bytes"] for r in replay["replica"].values()),
    }
    return {
        "benchmark": "recovery", "metrics": metrics, "source": "measured",
        "setup": {"model": {"zoo": "gpt2", "overrides": MODEL}, "batch": BATCH, "seq": SEQ,
                  "microbatches": MICROBATCHES, "optimizer": "adam", "steps": steps, "checkpoint_every_K": k,
                  "fail": f"{victim}@{fail_step} (SIGKILL half-way through the iteration)",
                  "launcher": "local processes, gloo over loopback, 1 torch thread each",
                  "recovery_time": "from the kill to the completion of the interrupted iteration"},
        "runs": results,
        "note": "quick: 7 iterations, K = 3, failure in iteration 4" if quick else "",
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.machine()}, shared with other jobs",
        "command": "edgepool bench recovery" + (" --quick" if quick else "") + " --json",
    }


def render(result: dict) -> str:
    m = result["metrics"]
    return "\n".join([
        f"recovery (K = {result['setup']['checkpoint_every_K']}, fail {result['setup']['fail']}), measured:",
        f"  pipeline replay      {m['replay_recovery_s']:.2f} s to regain the interrupted iteration",
        f"  checkpoint restart   {m['checkpoint_restart_recovery_s']:.2f} s",
        f"  speed-up             {m['recovery_speedup_vs_checkpoint_restart']:.1f}x "
        f"(first iteration after the failure: {m['first_iteration_speedup']:.1f}x)",
        f"  samples lost {m['samples_lost']}, double-counted {m['samples_double_counted']}",
        f"  throughput before {m['throughput_before']:.1f} / after {m['throughput_after']:.1f} samples/s",
        f"  replica: {m['replica_bytes_sent_per_iteration_per_device'] / 2**10:.0f} KiB gradients per iteration, "
        f"{m['replica_exchange_s_per_iteration'] * 1e3:.1f} ms, holds {m['replica_held_bytes_max'] / 2**20:.2f} MiB",
        f"  {result['machine']}",
    ])
