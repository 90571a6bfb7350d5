"""One device's process: `python -m edgepool.inference.worker JOB.json`, started by a launcher.

The job (written by `runner`) lists the devices in rank order and one or more runs (a plan, a model, a
task: `forward`, `generate` or `decode`). Every worker builds the model from its config with the same seed
(so no weights travel), keeps only its share, and writes `rank<R>.json` with what it measured. With `check`,
the rank holding the output compares it with the unmodified single-device model.
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from edgepool.inference.executor import InferenceProgram
from edgepool.inference.sharded_generation import generate, reference_greedy
from edgepool.models import build_model
from edgepool.plan import Plan
from edgepool.runtime.harness import read_job, write_result
from edgepool.runtime.netif import choose_gloo_interface


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _barrier() -> None:
    if dist.get_world_size() > 1:
        dist.barrier()


def run_forward(program: InferenceProgram, bundle, spec: dict) -> dict:
    gen = torch.Generator().manual_seed(spec.get("seed", 0))
    ids = bundle.example_input(spec["batch"], spec["seq"], generator=gen)
    latencies, cpu, out = [], [], None
    for i in range(spec.get("warmup", 1) + spec.get("repeats", 3)):
        _barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = program.forward(ids, spec["batch"], spec["seq"])
        if i >= spec.get("warmup", 1):
            cpu.append(time.process_time() - cpu_start)  # all threads of this process (gloo's included)
            if program.is_output_rank:
                latencies.append(time.perf_counter() - start)
    result: dict = {"latencies_s": latencies, "cpu_s": statistics.median(cpu) if cpu else None}
    if program.is_output_rank:
        result["latency_s"] = statistics.median(latencies)
        if spec.get("check"):
            with torch.no_grad():
                reference = bundle.blocks(ids)
            result["max_abs_diff"] = float((out - reference).abs().max())
            result["reference_max_abs"] = float(reference.abs().max())
            result["output_shape"] = list(out.shape)
    return result


def run_generate(program: InferenceProgram, bundle, spec: dict, out_dir: Path) -> dict:
    if spec.get("prompt"):
        prompt = torch.tensor([spec["prompt"]], dtype=torch.long)
    else:
        prompt = bundle.example_input(1, spec["seq"], generator=torch.Generator().manual_seed(spec.get("seed", 0)))
    stream = None
    if program.rank == program.first_leader:
        stream = open(out_dir / f"tokens-{spec['name']}.jsonl", "w")

    def on_token(step: int, token: int, elapsed: float) -> None:
        stream.write(json.dumps({"step": step, "token": token, "step_s": elapsed}) + "\n")
        stream.flush()

    _barrier()
    produced = generate(program, prompt, spec["max_new_tokens"], on_token if stream else None)
    result: dict = {}
    if stream is not None:
        stream.close()
        steps = produced["step_s"]
        result.update(tokens=produced["tokens"], step_s=steps, first_token_s=steps[0],
                      decode_step_s=statistics.median(steps[1:]) if len(steps) > 1 else None)
        result["latency_s"] = result["decode_step_s"] if spec["task"] == "decode" else sum(steps)
        if spec.get("check"):
            result["reference_tokens"] = reference_greedy(bundle.hf_model, prompt, spec["max_new_tokens"])
            result["tokens_equal"] = result["reference_tokens"] == produced["tokens"]
    return result


def main(job_path: str) -> None:
    job = read_job(job_path)
    device = os.environ.get("EDGEPOOL_DEVICE", job["devices"][0])
    torch.set_num_threads(int(job.get("threads", {}).get(device, 1)))
    choose_gloo_interface()  # on a real host: the interface that routes to MASTER_ADDR, not loopback
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=job.get("timeout_s", 300)))
    _run_job(job, device)
    _teardown()  # not after a failure: the launcher stops the others, and a wait here could hang


def _teardown() -> None:
    """Release the process group and every tensor gloo's threads still hold while the interpreter is whole.

    Left to interpreter finalization, gloo's worker threads can still hold work (and tensors) after Python's
    state is gone; freeing them then aborts the process (SIGABRT, "terminate called without an active
    exception"), about one llama-tiny run in three here. `exit_now` then skips finalization altogether (also
    after a failure, so that such an abort never hides the real cause in the log).
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def run_as_main(main) -> None:
    """`python -m MODULE JOB.json`: `main(JOB)`, then leave with `exit_now`; a failure's traceback goes to this
    worker's log and the exit status is 1 (the launcher or coordinator notices the exit and names the cause)."""
    try:
        main(sys.argv[1])
    except BaseException:  # noqa: BLE001 - everything, KeyboardInterrupt included, ends the worker the same way
        traceback.print_exc()
        exit_now(1)
    exit_now(0)


def exit_now(code: int) -> None:
    """Leave without interpreter finalization (results are already written atomically, streams flushed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_job(job: dict, device: str) -> None:
    out_dir = Path(job["out_dir"])
    rank = dist.get_rank()
    rank_of = {name: i for i, name in enumerate(job["devices"])}
    results: dict = {"device": device, "rank": rank, "threads": torch.get_num_threads(), "runs": {}}
    bundles: dict = {}
    for spec in job["runs"]:
        key = json.dumps([spec["model"], spec.get("overrides", {})], sort_keys=True)
        if key not in bundles:
            bundles.clear()
            bundles[key] = build_model(spec["model"], meta=False, **spec.get("overrides", {}))
        bundle = bundles[key]
        plan = Plan.model_validate(spec["plan"])
        start = time.perf_counter()
        program = InferenceProgram(plan, bundle, rank_of, tiles=spec.get("tiles", 1))
        setup_s = time.perf_counter() - start
        if spec["task"] == "forward":
            result = run_forward(program, bundle, spec)
        else:
            result = run_generate(program, bundle, spec, out_dir)
        result.update(setup_s=setup_s, in_plan=program.stage is not None, output_rank=program.is_output_rank,
                      first_leader=program.rank == program.first_leader, peak_rss_bytes=_peak_rss_bytes())
        results["runs"][spec["name"]] = result
        del program
        _barrier()
    write_result(out_dir, rank, results)


if __name__ == "__main__":
    run_as_main(main)
