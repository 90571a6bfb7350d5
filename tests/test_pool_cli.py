"""Issue 17: every planner, infer, generate, finetune, serve and train-elastic takes `--pool HOST:PORT` instead of
`--cluster`: the planners plan on the pool's live cluster, the runs start their workers through the agents
(`PoolLauncher`). One of --cluster/--pool exactly; an unreachable pool is one line, exit 2."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgepool.cli import app
from pool_local import local_pool
from test_bad_input_cli import _one_line_error

DEVICES = ["a", "b", "c"]
SOME_KEY = "11" * 32


@pytest.fixture(scope="module")
def pool():
    with local_pool(DEVICES) as p:
        yield p


def _run(pool, args: list[str]):
    return CliRunner(env={"EDGEPOOL_POOL_KEY": pool.key.hex()}).invoke(app, [*args, "--pool", pool.address])


def _ok(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_plan_simulate_compare_estimate_on_the_pool(pool, tmp_path):
    plan_path = tmp_path / "plan.json"
    plan = _ok(_run(pool, ["plan", "--model", "gpt2-tiny", "--batch", "8", "--planner", "hybrid", "--json",
                           "-o", str(plan_path)]))
    used = {d for p in plan["pipelines"] for s in p["stages"] for d in s["devices"]}
    assert plan["feasible"] and used and used <= set(DEVICES), plan

    report = _ok(_run(pool, ["simulate", str(plan_path), "--json"]))
    assert report["source"] == "simulated" and report["throughput"] > 0
    assert set(report["per_device"]) <= set(DEVICES)

    compared = _ok(_run(pool, ["compare", "--model", "gpt2-tiny", "--batch", "8", "--json"]))
    assert compared["cluster"] == plan["cluster"] and {"dp", "hybrid"} <= {r["planner"] for r in compared["rows"]}
    assert next(r for r in compared["rows"] if r["planner"] == "dp")["devices_used"] == len(DEVICES)

    alone = _ok(_run(pool, ["estimate", "--model", "gpt2-tiny", "--json"]))
    assert sorted(d["device"] for d in alone["devices"]) == DEVICES

    failure = _ok(_run(pool, ["simulate-failure", "--model", "gpt2-tiny", "--batch", "8", "--fail", "b@5",
                              "--duration", "20", "--json"]))
    assert failure["source"] == "simulated"


def test_infer_plans_on_the_pool_without_running(pool):
    result = _ok(_run(pool, ["infer", "--model", "bert-tiny", "--seq", "16", "--no-run", "--json"]))
    used = {d for p in result["plan"]["pipelines"] for s in p["stages"] for d in s["devices"]}
    assert used and used <= set(DEVICES) and result["measured"] is None


@pytest.mark.parametrize("args", [
    ["plan", "--model", "gpt2-tiny", "--batch", "4"],
    ["compare", "--model", "gpt2-tiny", "--batch", "4"],
    ["simulate", "plan.json"],
    ["estimate", "--model", "gpt2-tiny"],
    ["infer", "--model", "bert-tiny", "--no-run"],
    ["generate", "--model", "gpt2-tiny", "--prompt", "hi"],
    ["train-elastic", "--model", "gpt2-tiny"],
    ["simulate-failure", "--model", "gpt2-tiny"],
    ["finetune", "--model", "bert-tiny", "--dataset", "synthetic"],
    ["serve", "--model", "smollm2-135m-instruct", "--dry-run"],
])
def test_cluster_and_pool_together_or_neither_is_one_line(args):
    both = CliRunner(env={"EDGEPOOL_POOL_KEY": SOME_KEY}).invoke(
        app, [*args, "--cluster", "home", "--pool", "127.0.0.1:1"])
    _one_line_error(both, "--cluster/--pool", "exactly one of")
    if args[0] not in ("finetune", "serve"):  # those two run on this machine alone without either
        _one_line_error(CliRunner().invoke(app, args), "--cluster/--pool", "exactly one of")


@pytest.mark.parametrize("args", [
    ["plan", "--model", "gpt2-tiny", "--batch", "4"],
    ["infer", "--model", "bert-tiny", "--no-run"],
    ["generate", "--model", "gpt2-tiny", "--prompt", "hi"],
    ["train-elastic", "--model", "gpt2-tiny"],
    ["finetune", "--model", "bert-tiny", "--dataset", "synthetic"],
])
def test_an_unreachable_pool_is_one_line(args):
    result = CliRunner(env={"EDGEPOOL_POOL_KEY": SOME_KEY}).invoke(app, [*args, "--pool", "127.0.0.1:1"])
    _one_line_error(result, "--pool = '127.0.0.1:1'", "cannot reach it")


@pytest.mark.slow
def test_infer_runs_its_workers_through_the_agents(pool, tmp_path):
    result = _ok(_run(pool, ["infer", "--model", "bert-tiny", "--seq", "16", "--plan", "tp", "--repeats", "1",
                             "--json"]))
    measured = result["measured"]
    assert measured["source"] == "measured" and "launcher pool" in measured["where"]
    assert measured["latency_s"] > 0 and result["simulator_error"] >= 0
    used = {d for p in result["plan"]["pipelines"] for s in p["stages"] for d in s["devices"]}
    assert set(measured["per_device"]) == used and len(used) > 1


@pytest.mark.slow
def test_a_parallel_forward_through_the_agents_equals_the_single_device_model(pool):
    from edgepool.inference.runner import RunSpec, run_job
    from edgepool.models import build_model
    from edgepool.plan import PipelinePlan, Plan, StagePlan

    n = len(build_model("gpt2-tiny", meta=True).blocks)
    plan = Plan(kind="inference", planner="test", model="gpt2-tiny", cluster="pool", num_layers=n, batch=1,
                schedule="none", pipelines=[PipelinePlan(stages=[
                    StagePlan(layers=(0, 2), devices=["a", "b"], shares=[0.6, 0.4], parallel="tensor+sequence"),
                    StagePlan(layers=(2, n), devices=["c"], shares=[1.0])])])
    runs = [RunSpec("fwd", "gpt2-tiny", plan, seq=17, tiles=2, check=True, repeats=1),
            RunSpec("gen", "gpt2-tiny", plan, task="generate", seq=5, max_new_tokens=4, check=True)]
    with pool.launcher() as launcher:
        out = run_job(runs, launcher, devices=DEVICES, timeout_s=240)
    assert out["fwd"]["max_abs_diff"] <= 1e-4 * max(1.0, out["fwd"]["reference_max_abs"]), out["fwd"]
    assert out["gen"]["tokens"] == out["gen"]["reference_tokens"] and len(out["gen"]["tokens"]) == 4


@pytest.mark.slow
def test_generate_streams_tokens_from_the_agents(pool):
    result = _ok(_run(pool, ["generate", "--model", "gpt2-tiny", "--prompt", "hello", "--max-new-tokens", "4",
                             "--json"]))
    assert len(result["tokens"]) == 4 and "launcher pool" in result["where"]


@pytest.mark.slow
def test_finetune_collaborative_pac_on_the_pool(pool, tmp_path):
    out = tmp_path / "report.json"
    result = _run(pool, ["finetune", "--model", "bert-tiny", "--dataset", "synthetic", "--n-train", "48",
                         "--n-test", "16", "--epochs", "1", "--batch-size", "16", "--threads", "1", "--devices", "2",
                         "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["method"] == "pac-collaborative" and "pool" in report["where"]
    assert len(report["layout"]["devices"]) == 2 and set(report["layout"]["devices"]) <= set(DEVICES)
    assert sum(report["layout"]["shares"]) == 48 and 0 <= report["final_accuracy"] <= 100


@pytest.mark.slow
def test_train_elastic_on_the_pool(pool, tmp_path):
    result = _ok(_run(pool, ["train-elastic", "--model", "gpt2-tiny", "--steps", "3", "--batch", "4",
                             "--seq", "8", "-o", str(tmp_path / "run"), "--json"]))
    assert result["where"]["launcher"] == "pool" and set(result["plans"][0]) <= set(DEVICES)
    assert result["samples"]["samples_lost"] == 0


@pytest.mark.slow
def test_serve_dry_run_plans_on_the_pool(pool):
    result = _run(pool, ["serve", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "predicted (simulated; the pool's devices and links as measured" in result.output
    stages = [line.split()[0] for line in result.output.splitlines() if " layers " in line]
    assert stages and set(stages) <= set(DEVICES)


@pytest.mark.slow
def test_serve_on_the_pool_answers_through_the_agents_stages(pool, tmp_path):
    """`edgepool serve --pool` as its own process: the stages run on the agents, the API answers Paris, and an
    interrupt ends the server and the stages."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from edgepool.testbed.launcher import free_port

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-c", "from edgepool.cli import main; main()", "serve",
                                   "--pool", pool.address, "--port", str(port), "--concurrent", "2"],
                                  env={**os.environ, "EDGEPOOL_POOL_KEY": pool.key.hex()}, stdout=out,
                                  stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        answer = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
            "model": "smollm2-135m-instruct", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}).json()
        assert "Paris" in answer["choices"][0]["message"]["content"], answer
        text = log.read_text()
        stages = [line.split()[0] for line in text.splitlines() if " layers " in line]
        assert stages and set(stages) <= set(DEVICES) and "the pool's devices and links as measured" in text, text
        assert f"serving smollm2-135m-instruct on {', '.join(stages)}" in text, text
        while not (pool.coordinator.job or {}).get("progress", {}).get("done"):  # the dashboard's view of it
            assert time.monotonic() < deadline + 30, pool.coordinator.job
            time.sleep(0.2)
        job = pool.coordinator.job
        assert job["kind"] == "serving" and job["plan"]["devices"] == stages and job["progress"]["unit"] == "tokens"
        assert 0 < job["progress"]["done"] <= 24 + 2  # the answer's tokens (and the warm-up's, if any)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text()
