"""LLM serving on memory-poor devices: paged KV cache, continuous batching, confidence-aware KV padding and
cost-based preemption (CacheOPT-style), a real CPU engine, a roofline simulator and an OpenAI-style API.

The engine and the simulator replay traces through one loop (`replay`) and return a `Report`. Modules import
lazily what they need: `simulator` never imports `engine` (no torch model needed).
"""
