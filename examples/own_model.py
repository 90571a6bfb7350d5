"""One's own model on the pool, from Python: profile -> plan -> simulate -> train for real.

    python examples/own_model.py                       # the MLP of mymodels.py, gpipe over the home cluster
    python examples/own_model.py --factory mymodels:residual_bundle --planner hybrid --steps 5

The model comes from a factory in mymodels.py; the workers (one process per device, torch.distributed/gloo on
this machine) import it by name, so this script puts the examples folder on their PYTHONPATH.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from edgepool.cluster import load_cluster
from edgepool.costmodel import CostModel
from edgepool.planners import get_planner
from edgepool.profile import profile_model
from edgepool.runtime import ModelSpec, RunOptions, execute
from edgepool.simulator import simulate

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    sys.path.insert(0, str(HERE))  # so that this process imports mymodels as the workers will
    module_name, _, function = args.factory.partition(":")
    bundle = getattr(importlib.import_module(module_name), function)()

    profile = profile_model(bundle, batch=1)  # per block: FLOPs, parameter and activation bytes
    cluster = load_cluster(args.cluster)
    cost_model = CostModel(optimizer="sgd")
    plan = get_planner(args.planner).plan(profile, cluster, cost_model, args.batch)
    simulated = simulate(plan, cluster, cost_model, profile)  # the cost model's view of the real devices
    print(f"{bundle.name}: {len(bundle.blocks)} blocks, {bundle.num_parameters():,} parameters; "
          f"{args.planner} plan on {cluster.name}: stages " +
          " | ".join(f"{s.layers[0]}-{s.layers[1] - 1} on {', '.join(s.devices)}"
                     for p in plan.pipelines for s in p.stages))
    print(f"simulated: {simulated.throughput:.1f} samples/s on the devices of {cluster.name}")

    options = RunOptions(steps=args.steps, model=ModelSpec(factory=args.factory), run_dir=args.output,
                         env={"PYTHONPATH": str(HERE)}, timeout_s=args.timeout)
    outcome = execute(plan, cluster, "local", options)
    measured = outcome.report
    losses = measured.metrics["loss_per_step"]
    print(f"measured: {measured.throughput:.1f} samples/s here (local processes, not the real devices); "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; report in {outcome.run_dir / 'report.json'}")
    return {"plan": plan, "simulated": simulated, "measured": measured, "run_dir": outcome.run_dir}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factory", default="mymodels:mlp_bundle", help="module:function returning a ModelBundle")
    parser.add_argument("--cluster", default="home", help="a cluster YAML or a shipped example")
    parser.add_argument("--planner", default="gpipe")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="iterations (the first is warm-up, untimed)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a stuck run is stopped")
    parser.add_argument("-o", "--output", type=Path, default=None, help="run folder (default: a temporary one)")
    return parser


if __name__ == "__main__":
    main()
