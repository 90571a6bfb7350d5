"""`edgepool infer` and `edgepool generate`: plan, simulate and run collaborative Transformer inference."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from edgepool.atomic import write_text_atomic
from edgepool.cli.pool import KEY_FILE_OPTION, KEY_OPTION, POOL_HELP, cluster_and_launcher
from edgepool.errors import SpecError

PLANS = {"auto": "auto", "tp": "tp", "even-tp": "even-tp", "pipeline": "pipeline", "single": "single",
         "hybrid": "hybrid"}


def _setup(spec, model: str, batch: int, seq: int, phase: str = "prefill", context: int = 0,
           plan: str = "auto"):
    from edgepool.costmodel import CostModel
    from edgepool.inference.planner import plan_inference
    from edgepool.inference.simulate import RequestShape, simulate_inference
    from edgepool.models import build_model
    from edgepool.profile import profile_model

    if plan not in PLANS:
        raise SpecError(field="--plan", value=plan, accepted=", ".join(PLANS))
    bundle = build_model(model, meta=True)
    if bundle.kind not in ("encoder", "decoder"):
        raise SpecError(field="--model", value=model, accepted="a Transformer language model (bert-*, gpt2*, *llama*)")
    profile = profile_model(bundle, batch=batch, seq=seq)
    shape = RequestShape(batch=batch, seq=seq, phase=phase, context=context)
    cost = CostModel()
    chosen = plan_inference(profile, spec, shape, cost, strategy=PLANS[plan])
    simulated = simulate_inference(chosen, profile, spec, cost, shape)
    return spec, chosen, simulated


def _launcher(launcher, spec, devices):
    """A launcher by name (local, testbed) for `devices` of `spec`, or the one given (the pool's)."""
    if not isinstance(launcher, str):
        return launcher
    from edgepool.testbed.launcher import make_launcher
    return make_launcher(launcher, spec, devices=devices)


def _runnable(model: str) -> None:
    from edgepool.models.zoo import META_BY_DEFAULT
    if model in META_BY_DEFAULT:
        raise SpecError(field="--model", value=model, accepted="a model this machine can hold (not "
                        + ", ".join(sorted(META_BY_DEFAULT)) + ")", hint="use --no-run to plan and simulate only")


def register(app: typer.Typer) -> None:
    @app.command()
    def infer(
        cluster: str = typer.Option(None, "--cluster", help="Cluster YAML (or an example name: home, jetson-lab, "
                                                            "site64); or --pool."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP + " The workers run on the agents' devices."),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        model: str = typer.Option(..., "--model", help="bert-base, gpt2, bert-tiny, gpt2-tiny, llama-tiny, ..."),
        plan: str = typer.Option("auto", "--plan", help="auto | tp | even-tp | pipeline | single | hybrid"),
        seq: int = typer.Option(128, "--seq", min=1, help="Tokens in the request."),
        batch: int = typer.Option(1, "--batch", min=1),
        launcher: str = typer.Option("local", "--launcher", help="local | testbed (falls back to local without "
                                                                 "root); with --pool: the agents."),
        run: bool = typer.Option(True, "--run/--no-run", help="Also execute the plan for real."),
        repeats: int = typer.Option(3, "--repeats", min=1),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        output: str = typer.Option(None, "--output", "-o", help="Write plan + reports as JSON here."),
    ) -> None:
        """Plan one Transformer forward pass across the cluster, simulate it, and (by default) run it."""
        from edgepool.inference.runner import RunSpec, measure_plan

        spec, launcher = cluster_and_launcher(cluster, launcher, pool, key, key_file)
        spec, chosen, simulated = _setup(spec, model, batch, seq, plan=plan)
        result = {"plan": json.loads(chosen.to_json()), "simulated": json.loads(simulated.to_json()), "measured": None}
        if not chosen.feasible:
            result["error"] = f"infeasible, not run: {chosen.infeasible_reason}"
        elif run:
            _runnable(model)
            run_spec = RunSpec(name="infer", model=model, plan=chosen, task="forward", batch=batch, seq=seq,
                               tiles=int(chosen.notes.get("tiles", 1)), repeats=repeats)
            command = "edgepool " + " ".join(sys.argv[1:])
            with _launcher(launcher, spec, chosen.devices) as l:
                measured = measure_plan(run_spec, l, command=command)
            result["measured"] = json.loads(measured.to_json())
            result["simulator_error"] = abs(simulated.latency_s - measured.latency_s) / measured.latency_s
        if output:
            write_text_atomic(output, json.dumps(result, indent=2))
        if as_json:
            typer.echo(json.dumps(result))
        else:
            typer.echo(f"plan: {chosen.planner} ({chosen.notes.get('candidate', '')}), tiles {chosen.notes.get('tiles')}")
            for i, st in enumerate(chosen.stages):
                shares = ", ".join(f"{d} {s:.2f}" for d, s in zip(st.devices, st.shares))
                typer.echo(f"  stage {i}: blocks {st.layers[0]}-{st.layers[1] - 1} on {shares} ({st.parallel})")
            if not chosen.feasible:
                typer.echo(f"INFEASIBLE (not run): {chosen.infeasible_reason}")
                raise typer.Exit(2)
            typer.echo(f"simulated latency: {simulated.latency_s * 1e3:.1f} ms")
            if result["measured"]:
                typer.echo(f"measured latency:  {result['measured']['latency_s'] * 1e3:.1f} ms "
                           f"({result['measured']['where']}); simulator error {result['simulator_error']:.0%}")
        if not chosen.feasible:
            raise typer.Exit(2)

    @app.command()
    def generate(
        cluster: str = typer.Option(None, "--cluster", help="Cluster YAML or an example name; or --pool."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP + " The workers run on the agents' devices."),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        model: str = typer.Option(..., "--model", help="A decoder: gpt2, gpt2-tiny, llama-tiny, ..."),
        prompt: str = typer.Option(..., "--prompt"),
        max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1),
        plan: str = typer.Option("pipeline", "--plan", help="pipeline (layer sharding) | auto | tp | single | hybrid"),
        launcher: str = typer.Option("local", "--launcher", help="local | testbed; with --pool: the agents."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Greedy generation, streaming tokens as the devices produce them (zoo models have random weights:
        the tokens are not sense; the prompt is mapped to token ids byte by byte)."""
        from edgepool.inference.runner import RunSpec, run_job, where_measured
        from edgepool.models import build_model

        _runnable(model)
        bundle = build_model(model, meta=True)
        if bundle.kind != "decoder":
            raise SpecError(field="--model", value=model, accepted="a decoder model (gpt2, gpt2-tiny, llama-tiny, ...)")
        ids = [b % bundle.vocab_size for b in prompt.encode("utf-8")] or [0]
        from edgepool.profile import check_seq
        check_seq(bundle, len(ids) + max_new_tokens, field="prompt bytes + --max-new-tokens")
        spec, launcher = cluster_and_launcher(cluster, launcher, pool, key, key_file)
        spec, chosen, simulated = _setup(spec, model, 1, 1, phase="decode", context=len(ids) + max_new_tokens,
                                         plan=plan)
        if not chosen.feasible:
            typer.echo(f"INFEASIBLE (not run): {chosen.infeasible_reason}")
            raise typer.Exit(2)
        run_spec = RunSpec(name="generate", model=model, plan=chosen, task="generate", seq=len(ids), prompt=ids,
                           max_new_tokens=max_new_tokens)

        def on_token(event: dict) -> None:
            if not as_json:
                typer.echo(f"token {event['step']}: {event['token']} ({event['step_s'] * 1e3:.1f} ms)")

        if not as_json:
            stages = "; ".join(f"{st.devices} blocks {st.layers[0]}-{st.layers[1] - 1}" for st in chosen.stages)
            typer.echo(f"plan: {chosen.planner}: {stages}")
        with _launcher(launcher, spec, chosen.devices) as l:
            result = run_job([run_spec], l, on_token=on_token)["generate"]
            where = where_measured(l, "edgepool " + " ".join(sys.argv[1:]))
        out = {"plan": json.loads(chosen.to_json()), "prompt_ids": ids, "tokens": result["tokens"],
               "first_token_s": result["first_token_s"], "decode_step_s": result["decode_step_s"],
               "simulated_decode_step_s": simulated.latency_s, "where": where, "weights": "random (zoo config)"}
        if as_json:
            typer.echo(json.dumps(out))
        else:
            typer.echo(f"tokens: {result['tokens']}")
            typer.echo(f"time to first token {result['first_token_s'] * 1e3:.1f} ms, decode step "
                       f"{(result['decode_step_s'] or 0) * 1e3:.1f} ms (simulated {simulated.latency_s * 1e3:.1f} ms)")
