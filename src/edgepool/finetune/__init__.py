"""Fine-tuning at the edge: PAC's parallel adapters and activation cache, PockEngine-style sparse fine-tuning
under a memory budget (with a compiled training step), and full/LoRA/adapter baselines."""
from edgepool.finetune.method import FinetuneMethod, finetune_method, method_names, register_method
from edgepool.finetune.methods import FinetuneConfig, FinetuneResult, Finetuner, finetune
from edgepool.finetune.sparse import Sparse

__all__ = ["FinetuneConfig", "FinetuneMethod", "FinetuneResult", "Finetuner", "Sparse", "finetune",
           "finetune_method", "method_names", "register_method"]
