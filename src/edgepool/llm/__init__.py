"""Real language models: checkpoints, tokenizers and chat, served by the pool."""
