"""Real language models served by the pool: one serving engine whose model runs as pipeline stages.

- `checkpoint`: `--model` (a Hugging Face folder, a GGUF converted once and cached, a short name) -> a folder.
- `tokenizer`: the checkpoint's tokenizer and chat template (`ChatTokenizer`).
- `profile`, `planner`: what the model costs where, and which devices serve which layers (`plan_llm`).
- `stage`, `stage_worker`, `messages`: one device's process: its layers, its KV blocks, its loop.
- `pool`: the coordinator's executor for `edgepool.serving.engine.Engine`; survives a device leaving.
- `service`: putting it together (`local_engine`, `pooled_engine`).
"""
