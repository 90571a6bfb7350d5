"""The sparse fine-tuning comparison behind the benchmark: full, LoRA, PAC and sparse on the same task.

Every method sees the same backbone weights (a copy each), data, seed, batches and epochs. Sparse trains
what the contribution analysis selects under a budget (a share of full fine-tuning's measured backward
memory). Step times are the median wall time of training steps on one and the same batch, taken after
training with the methods interleaved step by step (full, lora, pac, sparse, full, ...), so that load from
other processes on a shared machine falls on every method alike. The compiled
step is compared with the eager one on the sparse selection; a short SmolLM2-135M run shows the decoder
path. Every figure is measured on this machine (`setup.machine`).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from edgepool.finetune.backbone import Backbone, load_backbone
from edgepool.finetune.compiled import compare_compiled
from edgepool.finetune.contribution import select_updates
from edgepool.finetune.methods import MB, FinetuneConfig, Finetuner, load_task, machine_description


@dataclass(frozen=True)
class Setup:
    model: str
    dataset: str
    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    max_length: int
    threads: int
    budget_share: float  # sparse budget = this share of full fine-tuning's backward memory
    lrs: dict  # per method
    decoder: str
    decoder_n: int
    decoder_steps: int
    decoder_updates: tuple
    decoder_train: tuple  # (n_train, n_test, epochs) of a real sparse run on the decoder: its test accuracy
    compile_backends: tuple
    calibration_steps: int
    n_calibration: int


FULL = Setup("all-minilm-l6-v2", "tweet-sentiment", 600, 400, 4, 32, 48, 2, 0.2,
             {"full": 5e-5, "lora": 1e-3, "pac": 3e-3, "sparse": 1e-3}, "smollm2-135m", 32, 3, ("last2",), (200, 200, 2),
             ("inductor", "aot_eager"), 6, 160)
QUICK = Setup("bert-tiny", "synthetic", 128, 64, 2, 16, 16, 1, 0.5,
              {"full": 1e-3, "lora": 1e-3, "pac": 3e-3, "sparse": 3e-3}, "llama-tiny", 16, 2, ("last1",), (32, 16, 1),
              ("aot_eager",), 3, 64)


def _copy(backbone: Backbone) -> Backbone:
    return replace(backbone, model=copy.deepcopy(backbone.model))


def step_times(tuners: dict[str, Finetuner], indices: list[int], repeats: int = 5) -> dict[str, dict]:
    """Median wall and CPU time of a training step on the same batch, the methods interleaved step by step
    (one warm-up round excluded)."""
    wall: dict[str, list[float]] = {k: [] for k in tuners}
    cpu: dict[str, list[float]] = {k: [] for k in tuners}
    for t in tuners.values():
        t.method.before_training(t)
    for _ in range(repeats + 1):
        for name, t in tuners.items():
            w, c = time.perf_counter(), time.process_time()
            t.train_step(indices)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: {"step_time_s": statistics.median(wall[k][1:]), "step_cpu_s": statistics.median(cpu[k][1:])}
            for k in tuners}


def _summary(tuner: Finetuner, result) -> dict:
    e = max(result.epochs, key=lambda e: e.backward_memory_bytes)
    return {"accuracy": result.final_accuracy, "backward_memory_bytes": e.backward_memory_bytes,
            "saved_tensor_bytes": e.saved_tensor_peak_bytes, "grad_bytes": e.grad_bytes,
            "optimizer_state_bytes": e.optimizer_state_bytes,
            "train_time_s": result.total_train_time_s, "trainable_params": result.trainable_params,
            "total_params": result.total_params, "lr": tuner.config.learning_rate,
            "sparse_updates": tuner.config.sparse_updates}


def _train(config: FinetuneConfig, backbone: Backbone, task) -> tuple[Finetuner, dict]:
    tuner = Finetuner(config, backbone=_copy(backbone), task=task)
    return tuner, _summary(tuner, tuner.run())


def compare_sparse(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    s = QUICK if quick else FULL
    say = progress or (lambda text: None)
    t_start = time.perf_counter()
    torch.set_num_threads(s.threads)
    base = FinetuneConfig(model=s.model, dataset=s.dataset, n_train=s.n_train, n_test=s.n_test, epochs=s.epochs,
                          batch_size=s.batch_size, max_length=s.max_length, threads=s.threads,
                          eval_each_epoch=False)
    say(f"loading {s.model} and {s.dataset}")
    backbone = load_backbone(s.model, seed=base.seed)
    task = load_task(base, backbone)
    batch = list(range(s.batch_size))
    methods: dict[str, dict] = {}
    tuners: dict[str, Finetuner] = {}
    for name in ("full", "lora", "pac"):
        say(f"training {name}")
        tuners[name], methods[name] = _train(replace(base, method=name, lr=s.lrs[name]), backbone, task)
    budget_mb = s.budget_share * methods["full"]["backward_memory_bytes"] / MB
    say(f"contribution analysis under {budget_mb:.1f} MB")
    sparse_cfg = replace(base, method="sparse", lr=s.lrs["sparse"], memory_budget_mb=budget_mb)
    t0 = time.perf_counter()
    selection = select_updates(sparse_cfg, backbone, task, steps=s.calibration_steps,
                               n_calibration=s.n_calibration, n_held_out=s.n_calibration,
                               progress=lambda d, t, n: say(f"contribution {d}/{t}: {n}"))
    analysis_s = time.perf_counter() - t0
    say(f"training sparse {selection.names}")
    tuners["sparse"], methods["sparse"] = _train(
        replace(sparse_cfg, memory_budget_mb=None, sparse_updates=selection.names), backbone, task)
    say("step times (methods interleaved, same batch)")
    for name, times in step_times(tuners, batch).items():
        methods[name] |= times
    for t in tuners.values():
        if t.cache is not None:
            t.cache.close()
    say("compiled vs eager step (sparse selection)")
    compiled = compare_compiled(tuners["sparse"], steps=8, backends=s.compile_backends)
    del tuners
    full, sparse = methods["full"], methods["sparse"]
    decoder = _decoder(s, say)
    metrics = {"sparse_memory_saving_vs_full": 1 - sparse["backward_memory_bytes"] / full["backward_memory_bytes"],
               "sparse_step_speedup_vs_full": full["step_time_s"] / sparse["step_time_s"],
               "sparse_step_cpu_speedup_vs_full": full["step_cpu_s"] / sparse["step_cpu_s"],
               "sparse_accuracy_gap_vs_full": full["accuracy"] - sparse["accuracy"],
               "compiled_step_speedup_vs_eager": compiled.speedup}
    return {"metrics": metrics, "methods": methods,
            "selection": selection.to_dict() | {"analysis_time_s": analysis_s, "budget_mb": budget_mb},
            "compiled": compiled.to_dict(), "decoder": decoder,
            "setup": asdict(s) | {"quick": quick, "machine": machine_description(),
                      "model_source": backbone.source, "data_source": task.source,
                      "wall_time_s": time.perf_counter() - t_start,
                      "goals": {"sparse_memory_saving_vs_full": ">= 0.8", "sparse_step_speedup_vs_full": ">= 2",
                                "sparse_accuracy_gap_vs_full": "<= 1 point"}}}


def _decoder(s: Setup, say: Callable[[str], None]) -> dict:
    """A few steps of full vs sparse on the decoder: memory, step time and loss, on the same batches."""
    say(f"decoder: loading {s.decoder}")
    dataset = "synthetic" if s.decoder.endswith("tiny") else "tweet-sentiment"
    base = FinetuneConfig(model=s.decoder, dataset=dataset, n_train=s.decoder_n, n_test=s.decoder_n, epochs=1,
                          batch_size=8, max_length=32, threads=s.threads, eval_each_epoch=False)
    backbone = load_backbone(s.decoder, seed=base.seed)
    task = load_task(base, backbone)
    out = {"model": s.decoder, "model_source": backbone.source, "dataset": dataset, "steps": s.decoder_steps}
    for name, cfg in (("full", replace(base, method="full")),
                      ("sparse", replace(base, method="sparse", sparse_updates=list(s.decoder_updates)))):
        say(f"decoder: {name}")
        tuner = Finetuner(cfg, backbone=_copy(backbone), task=task)
        tuner.method.before_training(tuner)
        losses, times = [], []
        for step in range(s.decoder_steps):
            idx = [(step * 8 + j) % len(task.train) for j in range(8)]
            t0 = time.perf_counter()
            losses.append(tuner.train_step(idx))
            times.append(time.perf_counter() - t0)
        out[name] = {"losses": losses, "step_time_s": statistics.median(times[1:] or times),
                     "backward_memory_bytes": tuner.meter.peak + tuner.grad_bytes() + tuner.optimizer_state_bytes(),
                     "saved_tensor_bytes": tuner.meter.peak,
                     "trainable_params": sum(p.numel() for p in tuner.trainable),
                     "accuracy": tuner.evaluate(), "sparse_updates": cfg.sparse_updates}
        del tuner
    n_train, n_test, epochs = s.decoder_train
    say(f"decoder: sparse {list(s.decoder_updates)}, {n_train} samples x {epochs} epochs, then the test split")
    cfg = replace(base, method="sparse", sparse_updates=list(s.decoder_updates), n_train=n_train, n_test=n_test,
                  epochs=epochs)
    result = Finetuner(cfg, backbone=backbone, task=load_task(cfg, backbone)).run()
    out["trained"] = {"n_train": n_train, "n_test": n_test, "epochs": epochs, "accuracy": result.final_accuracy,
                      "train_time_s": result.total_train_time_s, "sparse_updates": cfg.sparse_updates}
    out["memory_saving"] = 1 - out["sparse"]["backward_memory_bytes"] / out["full"]["backward_memory_bytes"]
    out["step_speedup"] = out["full"]["step_time_s"] / out["sparse"]["step_time_s"]
    return out
