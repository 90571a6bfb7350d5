"""Issue 16: the OpenAI-compatible API over the REAL model (SmolLM2-135M-Instruct), through the official `openai`
client against a real uvicorn server: the one-process engine and a pool of two stage processes both answer
"What is the capital of France?" with Paris, whole and streamed (the deltas add up to the whole answer); a
stream survives a stage killed mid-answer with no token repeated or skipped; and bad requests get 400 in
OpenAI's shape (malformed bodies, empty messages and prompts, prompts longer than the KV cache, max_tokens <= 0).
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from api_server import serve  # noqa: E402 - after the skips

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
SEA = [{"role": "user", "content": "Write one sentence about the sea, the moon and the stars at night, please."}]
NUM_BLOCKS = 64            # 64 blocks of 16 tokens: a request may use 1024 tokens here


def _serve(engine, name: str):
    """`create_app(engine, name)` on a real uvicorn server in a thread; a context yielding the base URL."""
    from edgepool.serving.api import create_app

    return serve(create_app(engine, name))


@contextmanager
def _client(url: str):
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def ckpt():
    from edgepool.llm.checkpoint import resolve_checkpoint
    return resolve_checkpoint(progress=False)    # converted once per machine (~45 s), then cached


@pytest.fixture(scope="module")
def local(ckpt):
    """The checkpoint served by this process alone (`edgepool.llm.service.local_engine`)."""
    from edgepool.llm.service import local_engine
    engine = local_engine(ckpt, num_blocks=NUM_BLOCKS)
    with _serve(engine, ckpt.name) as url, _client(url) as client:
        yield engine, client


@pytest.fixture(scope="module")
def pooled(ckpt):
    """The checkpoint served by two stage processes, layers [0, 12) and [12, 30) (slow tests only)."""
    from edgepool.llm.pool import PooledExecutor, Stage, even_stages
    from edgepool.llm.tokenizer import ChatTokenizer
    from edgepool.serving.engine import Engine, EngineConfig
    from edgepool.testbed.launcher import LocalLauncher

    with LocalLauncher() as launcher:
        pool = PooledExecutor(ckpt.folder, [Stage("a", 0, 12), Stage("b", 12, 30)], launcher,
                              num_blocks=lambda stages: NUM_BLOCKS, replan=lambda devices: even_stages(devices, 30))
        try:
            engine = Engine(EngineConfig(model=ckpt.name, num_blocks=NUM_BLOCKS, block_size=16, num_host_blocks=32,
                                         max_batch_tokens=NUM_BLOCKS * 16),
                            executor=pool, model_config=ckpt.config(), tokenizer=ChatTokenizer.from_checkpoint(ckpt))
            with _serve(engine, ckpt.name) as url, _client(url) as client:
                yield engine, client, pool
        finally:
            pool.close()


def _ask(client, model: str, messages=FRANCE, **extra):
    return client.chat.completions.create(**{"model": model, "messages": messages, "max_tokens": 24,
                                             "temperature": 0, **extra})


def _check_paris(client, model: str) -> str:
    whole = _ask(client, model)
    choice = whole.choices[0]
    assert "Paris" in choice.message.content, choice.message.content
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"           # it ended with EOS
    assert 1 <= whole.usage.completion_tokens <= 24 and whole.model == model

    chunks = list(_ask(client, model, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in content]
    assert sum(1 for d in deltas if d) >= 2, deltas                                       # really streamed
    assert "".join(deltas) == choice.message.content
    assert content[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    return choice.message.content


# --- the one-process engine -------------------------------------------------------------------------------------
def test_local_engine_answers_paris_whole_and_streamed(local, ckpt):
    text = _check_paris(local[1], ckpt.name)
    assert text.strip() == "The capital of France is Paris."     # greedy SmolLM2-135M-Instruct, as transformers


def test_models_and_health_name_the_checkpoint(local, ckpt):
    client = local[1]
    assert [m.id for m in client.models.list()] == [ckpt.name]
    health = httpx.get(str(client.base_url).rstrip("/").removesuffix("/v1") + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["kv_blocks_total"] == NUM_BLOCKS


def _bad(call, param: str | None, *words: str, code: str | None = None):
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    error = caught.value
    assert error.status_code == 400 and error.type == "invalid_request_error", error.body
    assert error.param == param, error.body
    for word in words:
        assert word in error.message, error.message
    if code is not None:
        assert error.code == code, error.body
    return error


@pytest.mark.parametrize("body, param", [
    ({"messages": "What is the capital of France?"}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "user"}], "max_tokens": "many"}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages"),
    ({"messages": FRANCE, "temperature": "hot"}, "temperature"),
    ({"messages": FRANCE, "colour": "red"}, "colour"),
])
def test_malformed_bodies_are_400(local, ckpt, body, param):
    client = local[1]
    _bad(lambda: client.post("/chat/completions", cast_to=object, body={"model": ckpt.name, **body}), param)


def test_a_body_that_is_not_json_is_400(local):
    client = local[1]
    for path in ("/chat/completions", "/completions"):
        _bad(lambda: client.post(path, cast_to=object, content=b'{"messages": [',
                                 options={"headers": {"Content-Type": "application/json"}}), None, "not valid JSON")


def test_empty_messages_and_empty_prompts_are_400(local, ckpt):
    client = local[1]
    _bad(lambda: client.chat.completions.create(model=ckpt.name, messages=[]), "messages", "at least 1")
    _bad(lambda: client.completions.create(model=ckpt.name, prompt="", max_tokens=4), "prompt", "empty")
    _bad(lambda: client.completions.create(model=ckpt.name, prompt=[], max_tokens=4), "prompt", "empty")


def test_oversized_prompts_are_400_context_length_exceeded(local, ckpt):
    client = local[1]
    long = [{"role": "user", "content": "word " * 1200}]                 # > 1024 tokens of KV cache
    _bad(lambda: client.chat.completions.create(model=ckpt.name, messages=long, max_tokens=4), "messages",
         code="context_length_exceeded")
    _bad(lambda: client.completions.create(model=ckpt.name, prompt="word " * 1200, max_tokens=4), "prompt",
         code="context_length_exceeded")
    _bad(lambda: _ask(client, ckpt.name, max_tokens=5000), "max_tokens", code="context_length_exceeded")
    assert "Paris" in _ask(client, ckpt.name).choices[0].message.content       # the server still answers


@pytest.mark.parametrize("value", [0, -1])
def test_max_tokens_not_positive_is_400(local, ckpt, value):
    client = local[1]
    for name in ("max_tokens", "max_completion_tokens"):
        _bad(lambda: _ask(client, ckpt.name, **{"max_tokens": None, name: value}), name, f"{name} = {value}")
        _bad(lambda: _ask(client, ckpt.name, stream=True, **{"max_tokens": None, name: value}), name)
    _bad(lambda: client.completions.create(model=ckpt.name, prompt="Paris is", max_tokens=value), "max_tokens")


# --- a pool of two stage processes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_pooled_engine_answers_paris_whole_and_streamed(pooled, local, ckpt):
    assert _check_paris(pooled[1], ckpt.name) == _ask(local[1], ckpt.name).choices[0].message.content


@pytest.mark.slow
def test_pooled_errors_are_400_too(pooled, ckpt):
    client = pooled[1]
    _bad(lambda: client.chat.completions.create(model=ckpt.name, messages=[]), "messages")
    _bad(lambda: _ask(client, ckpt.name, max_tokens=0), "max_tokens")
    _bad(lambda: client.chat.completions.create(model=ckpt.name, messages=[{"role": "user", "content": "word " * 1200}],
                                                max_tokens=4), "messages", code="context_length_exceeded")


@pytest.mark.slow
def test_stream_survives_a_stage_killed_mid_answer(pooled, local, ckpt):
    """Run last on the pooled server: SIGKILL stage b after the first words of a streamed answer; the stream
    goes on after the re-plan and its deltas add up to the answer the one-process engine gives."""
    _engine, client, pool = pooled
    expected = _ask(local[1], ckpt.name, messages=SEA, max_tokens=48).choices[0]
    before = len(pool.events)
    deltas, killed = [], []
    for chunk in _ask(client, ckpt.name, messages=SEA, max_tokens=48, stream=True):
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
        if not killed and sum(1 for d in deltas if d) >= 1 and "b" in pool.devices:
            victim = next(h for h in pool._handles if h.device == "b")
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)
    assert killed, "the stage was never killed"
    assert "".join(deltas) == expected.message.content   # nothing repeated, nothing skipped
    assert chunk.choices[0].finish_reason == expected.finish_reason
    assert [(e.kind, e.devices) for e in pool.events[before:]] == [("left", ["b"])]
    assert pool.devices == ["a"] and (pool.stages[0].first, pool.stages[0].end) == (0, 30)
    assert "Paris" in _ask(client, ckpt.name).choices[0].message.content    # and it keeps serving
