"""Issue 16: the OpenAI-compatible API as the official `openai` client sees it, over a real uvicorn server.

`/v1/chat/completions` (whole and streamed), `/v1/completions`, `/v1/models`, and errors in OpenAI's shape with
the right status: 400 for malformed bodies, empty and oversized prompts, `max_tokens` <= 0 and unsupported
parameters, 404 for an unknown model, 503 when the queue is full. The engine is a random-weight `llama-tiny`
(byte tokenizer, no chat template: the plain "role: content" fallback), so the text is noise but exact.
"""
from __future__ import annotations

import threading

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from api_server import serve  # noqa: E402 - after the skips

MODEL = "llama-tiny"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def server():
    from edgepool.serving.api import create_app
    from edgepool.serving.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(model=MODEL, num_blocks=32, block_size=4, num_host_blocks=16, max_batch_requests=8,
                                 max_batch_tokens=256))
    with serve(create_app(engine)) as url:
        yield engine, url


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server[1], api_key="x", max_retries=0, timeout=60) as c:
        yield c


def _chat(client, **extra):
    return client.chat.completions.create(**{"model": MODEL, "messages": HELLO, "max_tokens": 12, "temperature": 0,
                                             **extra})


def test_chat_completion_whole(client):
    answer = _chat(client)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-") and answer.model == MODEL
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.prompt_tokens == len("user: Hello there\nassistant:".encode()) + 1   # + BOS
    assert 1 <= usage.completion_tokens <= 12 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert _chat(client).choices[0].message.content == choice.message.content     # greedy: the same again


def test_chat_stream_equals_whole_answer(client):
    whole = _chat(client)
    chunks = list(_chat(client, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == "" and first.finish_reason is None
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    content = [c for c in chunks[:-1] if c.choices]
    assert [c.choices[0].finish_reason for c in content][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole.choices[0].message.content
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage_and_with_a_stop_string(client):
    text = _chat(client, max_tokens=24).choices[0].message.content
    stops = [ch for i, ch in enumerate(text) if 0 < i and ch != "\ufffd" and text.find(ch) == i]
    if not stops:
        pytest.skip(f"no usable stop string in {text!r}")
    stop = stops[0]
    whole = _chat(client, max_tokens=24, stop=[stop])
    assert whole.choices[0].message.content == text[:text.index(stop)] and whole.choices[0].finish_reason == "stop"
    chunks = list(_chat(client, max_tokens=24, stop=stop, stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[:text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_content_parts_and_max_completion_tokens(client):
    parts = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    answer = client.chat.completions.create(model=MODEL, messages=parts, max_completion_tokens=5, temperature=0)
    assert answer.usage.prompt_tokens == len("system: Be brief.\nuser: Hello\nthere\nassistant:".encode()) + 1
    assert answer.usage.completion_tokens <= 5
    # An assistant message sent back as the client got it (empty refusal, tool_calls null) is accepted.
    history = HELLO + [answer.choices[0].message.model_dump(), {"role": "user", "content": "More"}]
    again = client.chat.completions.create(model=MODEL, messages=history, max_tokens=3, temperature=0)
    assert again.usage.completion_tokens <= 3


def test_chat_without_max_tokens_runs_to_what_fits(client):
    answer = client.chat.completions.create(model=MODEL, messages=HELLO, seed=3, temperature=0.8)
    assert answer.usage.total_tokens <= 32 * 4 + 1


def test_text_completions_whole_and_streamed(client):
    whole = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0)
    assert whole.object == "text_completion" and whole.usage.completion_tokens <= 10
    streamed = list(client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def _bad(client, call, param: str | None, *words: str, status: int = 400, code: str | None = None):
    kind = {400: openai.BadRequestError, 404: openai.NotFoundError}[status]
    with pytest.raises(kind) as caught:
        call()
    error = caught.value
    assert error.status_code == status and error.param == param, error.body
    for word in words:
        assert word in error.message, error.message
    if code:
        assert error.code == code, error.body
    return error


def _raw(client, body: dict):
    return lambda: client.post("/chat/completions", cast_to=object, body=body)


@pytest.mark.parametrize("body, param, words", [
    ({"model": MODEL}, "messages", ["messages is required"]),
    ({"model": MODEL, "messages": "hello"}, "messages", ["messages = 'hello'"]),
    ({"model": MODEL, "messages": []}, "messages", ["messages = []", "at least 1"]),
    ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages", ["messages[0].role is required"]),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages", ["messages[0].role"]),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages", ["messages[0].content"]),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages", ["image_url", "not supported"]),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
     "messages", ["tool_calls", "not supported"]),
    ({"model": MODEL, "messages": HELLO, "colour": "red"}, "colour", ["colour", "max_completion_tokens"]),
    ({"model": MODEL, "messages": HELLO, "temperature": 9}, "temperature", ["temperature = 9", "0 to 2"]),
    ({"model": MODEL, "messages": HELLO, "stop": ""}, "stop", ["non-empty"]),
])
def test_malformed_chat_bodies_are_400(client, body, param, words):
    _bad(client, _raw(client, body), param, *words)


def test_wrong_messages_type_through_the_typed_call(client):
    _bad(client, lambda: client.chat.completions.create(model=MODEL, messages="hello"), "messages")


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_not_positive_is_400(client, name, value):
    _bad(client, lambda: client.chat.completions.create(model=MODEL, messages=HELLO, **{name: value}), name,
         f"{name} = {value}", ">= 1")


@pytest.mark.parametrize("value", [0, -1])
def test_completion_max_tokens_not_positive_is_400(client, value):
    _bad(client, lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=value), "max_tokens",
         f"max_tokens = {value}")


def test_oversized_prompts_are_400_context_length_exceeded(client):
    long = [{"role": "user", "content": "word " * 200}]
    _bad(client, lambda: client.chat.completions.create(model=MODEL, messages=long, max_tokens=4), "messages",
         "KV cache", code="context_length_exceeded")
    _bad(client, lambda: _chat(client, max_tokens=500), "max_tokens", "exceeds", code="context_length_exceeded")
    _bad(client, lambda: client.completions.create(model=MODEL, prompt="word " * 200, max_tokens=4), "prompt",
         code="context_length_exceeded")


def test_empty_prompt_is_400(client):
    _bad(client, lambda: client.completions.create(model=MODEL, prompt="", max_tokens=4), "prompt", "empty")


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"top_p": 0.5}, "top_p"),
    ({"n": 2}, "n"),
])
def test_unsupported_parameters_are_refused_by_name(client, extra, param):
    error = _bad(client, lambda: _chat(client, **extra), param, param, "not supported", code="unsupported_parameter")
    assert error.type == "invalid_request_error"


def test_neutral_values_of_unsupported_parameters_are_accepted(client):
    answer = _chat(client, n=1, top_p=1, presence_penalty=0, frequency_penalty=0, logprobs=False, tools=[],
                   response_format={"type": "text"}, user="me", seed=1)
    assert answer.choices[0].message.role == "assistant"


def test_unknown_model_is_404(client):
    for call in (lambda: client.chat.completions.create(model="gpt-4", messages=HELLO),
                 lambda: client.completions.create(model="gpt-4", prompt="x")):
        _bad(client, call, "model", "gpt-4", MODEL, status=404, code="model_not_found")


def test_full_queue_is_503_with_retry_after(server, client):
    engine = server[0]
    saved, engine.scheduler.max_waiting = engine.scheduler.max_waiting, 0
    try:
        for call in (lambda: _chat(client), lambda: _chat(client, stream=True),
                     lambda: client.completions.create(model=MODEL, prompt="x")):
            with pytest.raises(openai.InternalServerError) as caught:
                call()
            assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
            assert "capacity" in caught.value.message
    finally:
        engine.scheduler.max_waiting = saved
    assert _chat(client).choices[0].finish_reason in ("stop", "length")


def test_concurrent_streams_each_equal_their_whole_answer(client):
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]
    wholes = [client.chat.completions.create(model=MODEL, messages=p, max_tokens=16, temperature=0)
              .choices[0].message.content for p in prompts]
    results: dict[int, str] = {}

    def stream(i: int) -> None:
        chunks = client.chat.completions.create(model=MODEL, messages=prompts[i], max_tokens=16, temperature=0,
                                                stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in chunks)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results.get(i) for i in range(4)] == wholes


def test_plain_chat_fallback_and_a_tokenizer_with_a_template():
    from edgepool.serving.api import chat_prompt_ids, plain_chat_text
    from edgepool.serving.engine import ByteTokenizer

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert plain_chat_text(messages) == "system: S\nuser: U\nassistant:"
    assert chat_prompt_ids(ByteTokenizer(), messages) == ByteTokenizer().encode("system: S\nuser: U\nassistant:")

    class Templated(ByteTokenizer):
        def chat(self, messages):
            if any(m["role"] == "developer" for m in messages):
                raise ValueError("developer messages are not in this template")
            return [7, 8, 9]

    assert chat_prompt_ids(Templated(), messages) == [7, 8, 9]
    with pytest.raises(ValueError):
        chat_prompt_ids(Templated(), [{"role": "developer", "content": "x"}])


def test_a_message_the_chat_template_refuses_is_400(server, client):
    from edgepool.serving.engine import ByteTokenizer

    class Templated(ByteTokenizer):
        def chat(self, messages):
            if messages[-1]["role"] != "user":
                raise ValueError("the last message must be the user's")
            return self.encode(messages[-1]["content"])

    engine = server[0]
    saved, engine.tokenizer = engine.tokenizer, Templated()
    try:
        answer = _chat(client, max_tokens=3)
        assert answer.usage.prompt_tokens == len("Hello there") + 1       # the template's ids, not the fallback
        bad = HELLO + [{"role": "assistant", "content": "Hi"}]
        _bad(client, lambda: client.chat.completions.create(model=MODEL, messages=bad, max_tokens=3), "messages",
             "the last message must be the user's")
    finally:
        engine.tokenizer = saved


def test_an_engine_error_ends_streams_and_requests_explicitly(server, client):
    engine = server[0]
    real = engine.executor.execute

    def broken(plan):
        if plan.batch:
            engine.executor.execute = real                                # fail one step only
            raise RuntimeError("device lost")
        return real(plan)

    engine.executor.execute = broken
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(client)
    assert caught.value.status_code == 500 and "device lost" in caught.value.message
    engine.executor.execute = broken
    with pytest.raises(openai.APIError, match="device lost"):
        list(_chat(client, stream=True))
    assert not server[0].has_work()
    assert _chat(client).choices[0].finish_reason in ("stop", "length")   # and the server still answers


def test_the_end_of_sequence_token_is_not_part_of_the_text():
    from edgepool.serving.api import response_ids
    from edgepool.serving.request import Request

    request = Request("r", prompt_len=1, max_new_tokens=4, eos_token_id=2)
    request.output_tokens = [5, 6, 2]
    assert response_ids(request) == [5, 6]
    request.output_tokens = [5, 2, 6]
    assert response_ids(request) == [5, 2, 6]


def test_the_checkpoint_chat_tokenizer_plugs_in(server, client):
    """`edgepool.llm.tokenizer.ChatTokenizer` (here over a byte-level stand-in for a Hugging Face tokenizer)."""
    tokenizer_module = pytest.importorskip("edgepool.llm.tokenizer")
    from edgepool.serving.engine import ByteTokenizer

    class ByteHF:
        chat_template = None
        eos_token_id = ByteTokenizer.eos_id

        def __call__(self, text):
            return {"input_ids": ByteTokenizer().encode(text)}

        def decode(self, ids, skip_special_tokens=False, **options):
            return ByteTokenizer().decode(ids)

        def __len__(self):
            return ByteTokenizer.vocab_size

    engine = server[0]
    saved, engine.tokenizer = engine.tokenizer, tokenizer_module.ChatTokenizer(ByteHF(), [ByteTokenizer.eos_id])
    try:
        messages = [{"role": "developer", "content": "Be brief."}, *HELLO]
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
        assert answer.usage.prompt_tokens == len("system: Be brief.\nuser: Hello there\nassistant:".encode()) + 1
        streamed = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0,
                                                  stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == answer.choices[0].message.content
    finally:
        engine.tokenizer = saved
