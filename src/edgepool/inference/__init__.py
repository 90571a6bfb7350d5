"""Collaborative Transformer inference: Galaxy-style tensor + sequence parallelism, layer-sharded generation,
an inference planner and simulator, and a runner that executes plans over torch.distributed."""
