"""Fine-tuning at the edge: PAC's parallel adapters and activation cache, with full/LoRA/adapter baselines."""
from edgepool.finetune.method import FinetuneMethod, finetune_method, method_names, register_method
from edgepool.finetune.methods import FinetuneConfig, FinetuneResult, Finetuner, finetune

__all__ = ["FinetuneConfig", "FinetuneMethod", "FinetuneResult", "Finetuner", "finetune", "finetune_method",
           "method_names", "register_method"]
