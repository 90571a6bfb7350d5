"""PAC vs LoRA vs full fine-tuning vs adapters without cache, on one model, data set, batch size and epochs.

Each method runs in its own fresh process (so its peak RSS is its own; `--quick` runs them in-process), one
after the other, with one torch thread each. Times are training wall time (evaluation excluded); CPU time is reported beside it because
the machine may be shared, which makes wall time noisy. Every metric is computed from this run.
"""
from __future__ import annotations

import math
import sys
import time

from edgepool.finetune.methods import FinetuneConfig, finetune, finetune_isolated

N_TRAIN, N_TEST, EPOCHS = 600, 400, 4
QUICK = dict(n_train=32, n_test=16, epochs=3)
METHOD_ORDER = ("pac", "lora", "full", "adapters")


def _summary(r: dict) -> dict:
    return {"epoch_train_time_s": [round(e["train_time_s"], 3) for e in r["epochs"]],
            "epoch_train_cpu_s": [round(e["train_cpu_s"], 3) for e in r["epochs"]],
            "epoch_backbone_forward_samples": [e["backbone_forward_samples"] for e in r["epochs"]],
            "end_to_end_train_time_s": round(r["total_train_time_s"], 3),
            "end_to_end_train_cpu_s": round(r["total_train_cpu_s"], 3),
            "final_accuracy": r["final_accuracy"],
            "saved_tensor_peak_bytes": r["saved_tensor_peak_bytes"],
            "peak_rss_bytes": r["peak_rss_bytes"],
            "rss_before_training_bytes": r["rss_before_training_bytes"],
            "trainable_params": r["trainable_params"], "total_params": r["total_params"],
            "cache": r["cache"]}


def run(quick: bool = False, progress: bool = True) -> dict:
    sizes = QUICK if quick else dict(n_train=N_TRAIN, n_test=N_TEST, epochs=EPOCHS)
    base = dict(model="all-minilm-l6-v2", dataset="tweet-sentiment", batch_size=32, max_length=48, bottleneck=64,
                threads=1, seed=0, cache_dtype="float16", eval_each_epoch=False, **sizes)
    results = {}
    for method in METHOD_ORDER:
        if progress:
            print(f"[finetune bench] {method} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        config = FinetuneConfig(**base, method=method)
        # --quick is a smoke test: in-process (peak RSS then is the process's, not the method's own)
        results[method] = finetune(config).to_dict() if quick else finetune_isolated(config)
        if progress:
            r = results[method]
            print(f"[finetune bench] {method}: {r['total_train_time_s']:.1f}s train, accuracy "
                  f"{r['final_accuracy']:.2f}% ({time.perf_counter() - t:.0f}s with loading)", file=sys.stderr)
    pac, lora, full = results["pac"], results["lora"], results["full"]

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.inf

    def first(r: dict, k: int, key: str = "train_time_s") -> float:
        return sum(e[key] for e in r["epochs"][:k])

    metrics = {
        "pac_speedup_over_lora": ratio(lora["total_train_time_s"], pac["total_train_time_s"]),
        "pac_memory_saving_vs_lora": 1 - ratio(pac["saved_tensor_peak_bytes"], lora["saved_tensor_peak_bytes"]),
        "accuracy_gap_vs_lora": lora["final_accuracy"] - pac["final_accuracy"],
        "pac_speedup_over_full": ratio(full["total_train_time_s"], pac["total_train_time_s"]),
        "pac_memory_saving_vs_full": 1 - ratio(pac["saved_tensor_peak_bytes"], full["saved_tensor_peak_bytes"]),
        "accuracy_gap_vs_full": full["final_accuracy"] - pac["final_accuracy"],
        "pac_speedup_over_lora_cpu_time": ratio(lora["total_train_cpu_s"], pac["total_train_cpu_s"]),
        "pac_speedup_over_lora_first_3_epochs": ratio(first(lora, 3), first(pac, 3)),
        "pac_speedup_over_adapters_without_cache": ratio(results["adapters"]["total_train_time_s"],
                                                        pac["total_train_time_s"]),
        "pac_rss_saving_vs_lora": 1 - ratio(pac["peak_rss_bytes"], lora["peak_rss_bytes"]),
    }
    return {
        "benchmark": "finetune",
        "metrics": metrics,
        "setup": base | {"methods": list(METHOD_ORDER), "data_source": pac["data_source"],
                         "model_source": pac["model_source"]},
        "methods": {m: _summary(r) for m, r in results.items()},
        "notes": ("memory saving = peak bytes the autograd graph saved for backward (parameters excluded); "
                  "RSS saving is reported separately. Times: training only, evaluation excluded. "
                  "Each method ran in its own process, one after another, on a machine shared with other work."),
        "source": "measured",
        "machine": pac["machine"],
        "command": "edgepool bench finetune --json" + (" --quick" if quick else ""),
    }


def render(result: dict) -> str:
    lines = [f"finetune benchmark ({result['setup']['model']}, {result['setup']['n_train']} train / "
             f"{result['setup']['n_test']} test, {result['setup']['epochs']} epochs) on {result['machine']}"]
    lines.append(f"{'method':10} {'train s':>9} {'cpu s':>9} {'acc %':>7} {'saved MB':>9} {'RSS MB':>8}")
    for m, s in result["methods"].items():
        lines.append(f"{m:10} {s['end_to_end_train_time_s']:9.1f} {s['end_to_end_train_cpu_s']:9.1f} "
                     f"{s['final_accuracy']:7.2f} {s['saved_tensor_peak_bytes'] / 2**20:9.1f} "
                     f"{s['peak_rss_bytes'] / 2**20:8.0f}")
    lines += [f"{k}: {v:.3f}" for k, v in result["metrics"].items()]
    return "\n".join(lines)
