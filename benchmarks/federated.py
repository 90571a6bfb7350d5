"""Federated fine-tuning across unlike devices on Flower (FedPipe) and offloading against non-IID data
(FlocOff), every method a real Flower deployment (SuperLink + one SuperNode per device) on the testbed.

Part 1: MiniLM on the real tweets over examples/clusters/federated-lab.yaml: FedPipe against homogeneous LoRA,
wall time to a target accuracy and final accuracy, and which devices can train at all. Part 2: the CNN on real
MNIST over examples/clusters/federated-offload.yaml, split with Dirichlet(0.1): FlocOff against FedAvg and
FedProx, the KL reduction of its offloading, the modelled radio energy of MCC-RA against a uniform
allocation, and a SuperNode SIGKILLed in the middle of a round.

Measured in this run: accuracies, round wall times, bytes, the cost table and the importance ranking. Modelled
(and labelled so): the offloading transfers and their radio energy (MKL-CO, MCC-RA).
"""
from __future__ import annotations

import time

from edgepool.benchmarking import metric_lines, output_folder, run_facts, save_result


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.cli.progress import StageBar
    from edgepool.federated.experiment import FULL, QUICK, compare_lora, compare_offloading, draw_curves

    setup = QUICK if quick else FULL
    started = time.perf_counter()
    out = output_folder("federated")
    with StageBar(not progress) as bar:
        def on_event(name: str, event: dict) -> None:
            if event["event"] == "evaluated":
                bar(f"{name}: round {event['round']} accuracy {event['accuracy']:.1f}%")

        lora = compare_lora(setup, out / "runs", on_event=on_event)
        offload = compare_offloading(setup, out / "runs", on_event=on_event)
    plots = {"lora_time": draw_curves(lora["reports"], out / "federated-lora-accuracy-time.png", "time",
                                      "MiniLM on tweets: FedPipe vs homogeneous LoRA"),
             "lora_bytes": draw_curves(lora["reports"], out / "federated-lora-accuracy-bytes.png", "bytes",
                                       "MiniLM on tweets: accuracy over bytes"),
             "offload_time": draw_curves(offload["reports"], out / "federated-offload-accuracy-time.png", "time",
                                         "MNIST, Dirichlet(alpha): FlocOff vs FedAvg vs FedProx")}
    result = {"benchmark": "federated", "quick": quick, "metrics": {**lora["metrics"], **offload["metrics"]},
              "fedpipe": lora, "flocoff": offload, "plots": plots,
              "measured": ["accuracies, round wall times and bytes of real Flower runs on the testbed",
                           "the LoRA cost table and the importance ranking"],
              "modelled": ["FlocOff's offloading transfers and radio energy (MKL-CO, MCC-RA)"],
              **run_facts("federated", quick, started)}
    save_result(result, out)
    return result


def render(result: dict) -> str:
    lines = [f"federated learning on Flower ({'quick' if result['quick'] else 'full'} run, "
             f"{result['seconds']:.0f} s, {result['machine']})"]
    lines += metric_lines(result["metrics"], 50)
    return "\n".join(lines)
