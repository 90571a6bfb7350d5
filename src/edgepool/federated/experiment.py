"""The comparisons behind `edgepool bench federated`, each method a real Flower run on the testbed.

Part 1 (FedPipe): MiniLM on the real tweets over `federated-lab` (an edge server and five unlike devices):
FedPipe (important matrices, per-device rank/batch/steps/precision, SVD re-truncation) against homogeneous
LoRA (rank 8, batch 16, query+value, fp32; who cannot fit sits out). Time to a target accuracy is the sum of
the rounds' wall times on the testbed (the server's evaluation between rounds is not counted).
Part 2 (FlocOff): the CNN on real MNIST split over six devices with Dirichlet(alpha): FlocOff's three edge
servers against FedAvg and FedProx on the devices' own data; one device's SuperNode is SIGKILLed in the middle
of a FedProx round, and the rounds that did not complete are counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgepool.cluster import load_cluster
from edgepool.federated.deployment import KillPlan, run_on_flower
from edgepool.federated.planning import Pool, fedpipe_spec, flocoff_spec, homogeneous_spec, raw_spec
from edgepool.federated.spec import RunSpec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "clusters"
TARGET_FRACTION = 0.98  # the target accuracy: this share of the best accuracy homogeneous LoRA reaches


@dataclass
class Setup:
    text_rounds: int = 5
    image_rounds: int = 5
    n_train: int = 600
    n_test: int = 300
    text_alpha: float = 10.0  # mildly non-IID (label shares 0.36-0.77); see docs/results/federated.md for 1.0
    alphas: tuple[float, ...] = (0.1,)
    homogeneous_steps: int = 6
    cpu_budget: float = 1.8  # of this host's 2 cores: the SuperLink, the SuperNodes' polling and the server
    max_cores_per_device: float = 0.55


FULL = Setup()
QUICK = Setup(text_rounds=2, image_rounds=2, n_train=200, n_test=100, homogeneous_steps=2)


def cluster_path(name: str) -> Path:
    for folder in (EXAMPLES, Path("examples/clusters")):
        if (folder / f"{name}.yaml").exists():
            return folder / f"{name}.yaml"
    raise FileNotFoundError(f"cluster {name}.yaml not found in {EXAMPLES}")


def time_to_target(report: dict, target: float) -> float | None:
    """Training wall seconds until the global model first reaches `target` % (None: never)."""
    for r in report["rounds"]:
        if r.get("accuracy") is not None and r["accuracy"] >= target:
            return r["train_time_s"]
    return None


def best_accuracy(report: dict) -> float:
    return max(r.get("accuracy") or 0.0 for r in report["rounds"])


def final_accuracy(report: dict) -> float:
    return report["rounds"][-1].get("accuracy") or 0.0


def lora_inputs(setup: Setup, seed: int = 0):
    """The tweets, the sensitivity ranking (top 12 matrices) and both measured cost tables."""
    from edgepool.finetune.adapters import ClassifierHead
    from edgepool.federated.importance import rank_matrices, task_batches, top_modules
    from edgepool.federated.rank_plan import measure_lora_cost
    from edgepool.federated.tasks import pretrained_backbone, text_data

    data = text_data("tweets-minilm", setup.n_train, setup.n_test, 48, seed)
    backbone = pretrained_backbone("tweets-minilm")
    head = ClassifierHead(backbone.hidden_size, data.num_labels)
    scores = rank_matrices(backbone, head, task_batches(data.train, data.pad_id, 16, 4))
    targets = top_modules(scores, k=12)
    costs = {"fedpipe": measure_lora_cost(backbone, head, targets, steps=2),
             "homogeneous": measure_lora_cost(backbone, head, ["query", "value"], steps=2)}
    return np.asarray(data.train.labels), scores, targets, costs


IMAGE_TRAINING = dict(batch=32, steps=10, lr=3e-3)  # the CNN's local round on every whole-model method


def lora_spec(method: str, setup: Setup, pool: Pool, inputs, *, aggregator: str = "svd", seed: int = 0,
              task: str = "tweets-minilm") -> RunSpec:
    """Homogeneous LoRA (rank 8, batch 16, `setup.homogeneous_steps`) or FedPipe, whose round deadline is the
    time the fastest device needs for that homogeneous work. `inputs`: what `lora_inputs` returned."""
    labels, _, targets, costs = inputs
    common = dict(alpha=setup.text_alpha, rounds=setup.text_rounds, seed=seed, n_train=setup.n_train,
                  n_test=setup.n_test, task=task)
    if method == "homogeneous-lora":
        return homogeneous_spec(pool, labels, costs["homogeneous"], rank=8, batch=16,
                                steps=setup.homogeneous_steps, **common)
    row = costs["homogeneous"].row(8, 16, 32)
    deadline = setup.homogeneous_steps * 16 * row.sec_per_sample / max(pool.cores[d] for d in pool.clients)
    return fedpipe_spec(pool, labels, costs["fedpipe"], targets, deadline_s=deadline, aggregator=aggregator,
                        **common)


def image_spec(method: str, cluster, devices: list[str], edge_servers: list[str], *, alpha: float, rounds: int,
               seed: int = 0, task: str = "mnist", **spec_fields) -> RunSpec:
    """FedAvg or FedProx (mu 0.01) on the devices' own split, or FlocOff over `edge_servers`."""
    from edgepool.federated.tasks import image_data

    labels = image_data(task, seed).train_y
    common = dict(alpha=alpha, rounds=rounds, seed=seed, task=task, **IMAGE_TRAINING, **spec_fields)
    if method == "flocoff":
        link_bps = {d: cluster.link(d, edge_servers[0]).bandwidth * 8 for d in devices}
        return flocoff_spec(devices, edge_servers, labels, link_bps, offload_deadline_s=0.25, **common)
    return raw_spec(method, devices, labels, proximal_mu=0.01 if method == "fedprox" else 0.0, **common)


def compare_lora(setup: Setup, work: Path, launcher: str = "testbed", aggregator: str = "svd",
                 on_event: Callable[[str, dict], None] | None = None, seed: int = 0) -> dict:
    cluster = load_cluster(cluster_path("federated-lab"))
    pool = Pool.of(cluster, "server", cpu_budget=setup.cpu_budget, max_cores_per_device=setup.max_cores_per_device)
    inputs = lora_inputs(setup, seed)
    _, scores, targets, costs = inputs
    homogeneous = lora_spec("homogeneous-lora", setup, pool, inputs, seed=seed)
    fedpipe = lora_spec("fedpipe", setup, pool, inputs, aggregator=aggregator, seed=seed)
    reports = {}
    for name, spec in (("homogeneous-lora", homogeneous), ("fedpipe", fedpipe)):
        reports[name] = _run(spec, cluster, pool.server, work / name, launcher, setup, on_event, name)
    target = TARGET_FRACTION * best_accuracy(reports["homogeneous-lora"])
    t_pipe, t_homo = (time_to_target(reports[m], target) for m in ("fedpipe", "homogeneous-lora"))
    participating = {m: sum(n.participates for n in s.nodes) / len(s.nodes)
                     for m, s in (("fedpipe", fedpipe), ("homogeneous-lora", homogeneous))}
    metrics = {"fedpipe_time_to_target_ratio_vs_homogeneous_lora": (t_pipe / t_homo if t_pipe and t_homo else None),
               "fedpipe_accuracy_gap_vs_homogeneous_lora": round(final_accuracy(reports["fedpipe"])
                                                                 - final_accuracy(reports["homogeneous-lora"]), 2),
               "fedpipe_devices_participating_fraction": participating["fedpipe"],
               "homogeneous_lora_devices_participating_fraction": participating["homogeneous-lora"]}
    return {"metrics": metrics, "target_accuracy": target, "time_to_target_s": {"fedpipe": t_pipe,
                                                                               "homogeneous-lora": t_homo},
            "importance": [s.__dict__ for s in scores], "targets": targets, "deadline_s": fedpipe.notes["deadline_s"],
            "pool": {"cores": pool.cores, "training_memory_bytes": pool.memory},
            "plans": {"fedpipe": fedpipe.notes["plan"], "homogeneous-lora": homogeneous.notes["plan"]},
            "costs": {k: c.to_dict() for k, c in costs.items()}, "reports": reports}


def compare_offloading(setup: Setup, work: Path, launcher: str = "testbed",
                       on_event: Callable[[str, dict], None] | None = None, seed: int = 0,
                       kill_round: int | None = 2) -> dict:
    cluster = load_cluster(cluster_path("federated-offload"))
    devices = [n for n in cluster.devices if n.startswith("pi")]
    servers = [n for n in cluster.devices if n.startswith("edge")]
    runs, specs = {}, {}
    for alpha in setup.alphas:
        specs[alpha] = {m: image_spec(m, cluster, devices, servers, alpha=alpha, rounds=setup.image_rounds,
                                      seed=seed, round_timeout_s=120.0) for m in ("fedavg", "fedprox", "flocoff")}
        for method, spec in specs[alpha].items():
            kill = (KillPlan(devices[-1], kill_round) if method == "fedprox" and kill_round
                    and alpha == setup.alphas[0] and kill_round <= spec.rounds else None)
            name = f"{method}-alpha-{alpha:g}"
            runs[name] = _run(spec, cluster, "aggregator", work / name, launcher, setup, on_event, name, kill)
    first = setup.alphas[0]
    flocoff = specs[first]["flocoff"].notes
    killed_run = runs[f"fedprox-alpha-{first:g}"]
    lost = sum(1 for r in killed_run["rounds"] if not r["replies"]) + (setup.image_rounds - len(killed_run["rounds"]))
    gain = {a: final_accuracy(runs[f"flocoff-alpha-{a:g}"]) - final_accuracy(runs[f"fedavg-alpha-{a:g}"])
            for a in setup.alphas}
    metrics = {f"flocoff_accuracy_gain_vs_fedavg_alpha_{str(a).replace('.', '_')}": round(g, 2)
               for a, g in gain.items()}
    metrics.update({"flocoff_kl_reduction_fraction": round(flocoff["kl_reduction_fraction"], 4),
                    "flocoff_comm_cost_ratio_vs_uniform_allocation": round(flocoff["comm_cost_ratio_vs_uniform"], 4),
                    "clients_lost": lost})
    return {"metrics": metrics, "kill": killed_run.get("killed"), "offload_plans": {str(a): s["flocoff"].notes
                                                                                   for a, s in specs.items()},
            "reports": runs}


def _run(spec: RunSpec, cluster, server: str, work: Path, launcher: str, setup: Setup,
         on_event: Callable[[str, dict], None] | None, name: str, kill: KillPlan | None = None) -> dict:
    return run_on_flower(spec, cluster, server, work, launcher=launcher, kill=kill, memory_scale=None,
                         cpu_budget=setup.cpu_budget, max_cores_per_device=setup.max_cores_per_device,
                         on_event=(lambda e: on_event(name, e)) if on_event else None)


def draw_curves(reports: dict[str, dict], path: Path, x: str, title: str) -> str:
    """Accuracy after every round against training time ("time") or bytes moved ("bytes")."""
    from edgepool.plotting import draw_series

    series = {}
    for name, report in reports.items():
        points, moved = [(0.0, report.get("initial_accuracy") or 0.0)], 0
        for r in report["rounds"]:
            moved += r["bytes_down"] + r["bytes_up"]
            points.append((r["train_time_s"] if x == "time" else moved / 2**20, r.get("accuracy") or 0.0))
        series[name] = points
    x_label = "training wall time on the testbed, s (measured)" if x == "time" else "MiB sent and received"
    return str(draw_series(series, path, x_label=x_label, y_label="test accuracy % (measured)", title=title,
                           steps=False, marker="o"))
