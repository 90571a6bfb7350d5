"""Fine-tuning at the edge: PAC's parallel adapters and activation cache, with full/LoRA/adapter baselines."""
from edgepool.finetune.methods import METHODS, FinetuneConfig, FinetuneResult, Finetuner, finetune

__all__ = ["METHODS", "FinetuneConfig", "FinetuneResult", "Finetuner", "finetune"]
