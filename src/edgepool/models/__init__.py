"""Models as ordered, partitionable blocks, built from configs (no downloads)."""
from edgepool.models.zoo import ModelBundle, build_model, bundle_from_module, model_names, model_source

__all__ = ["ModelBundle", "build_model", "bundle_from_module", "model_names", "model_source"]
