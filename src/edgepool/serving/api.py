"""OpenAI-compatible `/v1/chat/completions` and `/v1/completions` (with server-sent-event streaming) over the engine.

One background thread runs the engine loop (continuous batching); HTTP handlers submit requests and read
events from per-request asyncio queues. Admission is checked in the handler, so a request that can never
fit gets 400 (`context_length_exceeded` when prompt + max_tokens exceed the KV cache, the per-step token
budget or the model's context) and a full queue gets 503 with Retry-After, before any streaming starts; once
admitted, a request either finishes or ends with an explicit error event. Every error is in OpenAI's shape
(`openai_errors`); a request ends early, finished, when its text reaches one of its `stop` strings.

Text is decoded once per generated token, in the engine thread, and only for requests that stream or have
stop strings: the same text serves the stop check and the stream. A stream's deltas are differences of the
decoded text of all output tokens so far, less a trailing incomplete UTF-8 character and less a tail that
could still become a stop string, so the concatenated deltas equal the non-streamed text: nothing repeated,
nothing skipped. Both endpoints share that loop (`_Completion`); only the JSON around the text differs.

Chat prompts come from the tokenizer's `chat(messages) -> list[int]` (a checkpoint's own chat template). A
tokenizer without one (the byte-level tokenizer of the random-weight zoo models, which have no template)
gets `plain_chat_text`: "role: content" lines, then "assistant:" (the same transcript `ChatTokenizer` uses
for a checkpoint without a template). A "developer" message is given to the tokenizer as "system".
"""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgepool.serving.engine import Engine
from edgepool.serving.openai_errors import CHAT_UNSUPPORTED, UNSUPPORTED, error_response, install, unsupported_parameter
from edgepool.serving.request import Request, RequestState
from edgepool.serving.scheduler import RequestRejected
from edgepool.serving.stop import MAX_STOP_STRINGS, StopStrings

DEFAULT_CHAT_MAX_TOKENS = 512   # a chat request without max_tokens: this many, or what still fits if fewer


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    stops = [value] if isinstance(value, str) else value or []
    if isinstance(value, list) and not 1 <= len(value) <= MAX_STOP_STRINGS:
        raise ValueError(f"a list of 1 to {MAX_STOP_STRINGS} strings, got {len(value)}")
    if any(not s for s in stops):
        raise ValueError("stop strings must not be empty")
    return value


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`: `include_usage` adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = False


class CompletionRequest(BaseModel):
    """OpenAI's completion request: what the engine honours, plus OpenAI parameters it refuses by name."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[int] | list[str] | list[list[int]] = Field(description="text, or token ids")
    model: str | None = None
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    stop: str | list[str] | None = None
    # answered with a 400 naming the parameter unless left at the value that means "not used"
    n: Any = None
    best_of: Any = None
    echo: Any = None
    logprobs: Any = None
    suffix: Any = None
    top_p: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        return _check_stop(value)


class ChatMessage(BaseModel):
    """One message of a conversation; `content` is a string or OpenAI's list of text parts (joined by newlines).

    Fields OpenAI puts on an assistant message it returned (`refusal`, `tool_calls`, `audio`, ...) are accepted
    while empty, so a client may send a previous answer back as it got it; non-empty ones are refused.
    """

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text(cls, value: Any) -> str:
        if value is None or isinstance(value, str):
            return value or ""
        if not isinstance(value, list):
            raise ValueError("content must be a string or a list of text parts")
        texts = []
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                what = f"type {kind!r}" if kind else repr(part)[:40]
                raise ValueError(f"content part {i} ({what}) is not supported by this server; accepted: "
                                 '{"type": "text", "text": "..."} parts')
            if not isinstance(part.get("text"), str):
                raise ValueError(f"content part {i} has no string 'text'")
            texts.append(part["text"])
        return "\n".join(texts)

    @model_validator(mode="after")
    def _nothing_else(self) -> "ChatMessage":
        for key, value in (self.model_extra or {}).items():
            if value not in (None, "", [], {}):
                raise ValueError(f"{key} = {value!r:.40} is not supported by this server (no tools, audio or "
                                 "refusals); accepted: role, content, name")
        return self


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request: what the engine honours, plus OpenAI parameters it refuses by name."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None           # nothing is stored either way
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    # answered with a 400 naming the parameter unless left at the value that means "not used"
    n: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    top_p: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        return _check_stop(value)


def plain_chat_text(messages: list[dict]) -> str:
    """A conversation as plain text for a tokenizer without a chat template: "role: content" lines, "assistant:"."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def chat_prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Prompt token ids of a conversation: the tokenizer's `chat` (its chat template), else `plain_chat_text`.

    Raises ValueError (from `chat`) for a message the template cannot take.
    """
    chat = getattr(tokenizer, "chat", None)
    if chat is not None:
        return [int(i) for i in chat(messages)]
    return list(tokenizer.encode(plain_chat_text(messages)))


def context_limit(engine: Engine) -> tuple[int, str]:
    """The most tokens (prompt + generated) one request may reach on this engine, and what sets that limit."""
    scheduler = engine.scheduler
    capacity = scheduler.blocks.num_blocks * scheduler.blocks.block_size
    limits = [(capacity + 1, f"the KV cache ({capacity} tokens)"),   # the last token never needs K/V
              (scheduler.max_batch_tokens, f"the per-step token budget ({scheduler.max_batch_tokens} tokens)")]
    config = getattr(engine, "model_config", None) or getattr(getattr(engine, "model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append((positions, f"the model's context ({positions} tokens)"))
    return min(limits)


@dataclass
class _Event:
    kind: str            # "text" (all output so far, decoded) | "done" (a _Final) | "error" (a message)
    value: object = None


@dataclass
class _Final:
    text: str                 # the whole response, cut at a stop string
    finish_reason: str        # "stop" (EOS or a stop string) or "length"
    usage: dict


@dataclass
class _Listener:
    """Where one admitted request's events go, and what the engine thread must do for it each token."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    stop: StopStrings = field(default_factory=lambda: StopStrings(None))
    stream: bool = False


def response_ids(request: Request) -> list[int]:
    """The generated token ids that make the response text: all of them but a final end-of-sequence token."""
    ids = request.output_tokens
    return ids[:-1] if ids and ids[-1] == request.eos_token_id else list(ids)


def _usage(request: Request) -> dict:
    return {"prompt_tokens": request.prompt_len, "completion_tokens": request.num_generated,
            "total_tokens": request.prompt_len + request.num_generated}


class EngineRunner:
    """Owns the engine and its loop thread; hands decoded text and final results to asyncio queues."""

    def __init__(self, engine: Engine, idle_sleep_s: float = 0.01):
        self.engine, self.idle_sleep_s = engine, idle_sleep_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._listeners: dict[str, _Listener] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="edgepool-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def make_request(self, prompt: str | list[int], max_tokens: int, temperature: float, seed: int | None,
                     prefix: str = "cmpl") -> Request:
        """A request with a fresh id (`cmpl-...`, `chatcmpl-...`); not admitted yet."""
        return self.engine.make_request(f"{prefix}-{next(self._ids)}-{uuid.uuid4().hex[:8]}", prompt, max_tokens,
                                        temperature=temperature, seed=seed, arrival_time=time.monotonic() - self._t0)

    def submit(self, request: Request, stop: StopStrings | None = None, stream: bool = False) -> asyncio.Queue:
        """Admit a request (raises RequestRejected) and return the queue its events arrive on."""
        queue: asyncio.Queue = asyncio.Queue()
        listener = _Listener(asyncio.get_running_loop(), queue, stop or StopStrings(None), stream)
        with self._lock:
            self.engine.add(request)
            self._listeners[request.request_id] = listener
        self._wake.set()
        return queue

    def cancel(self, request: Request) -> None:
        with self._lock:
            if not request.is_done:
                self.engine.scheduler.abort(request, "cancelled: client went away")
            self._listeners.pop(request.request_id, None)

    @staticmethod
    def _emit(listener: _Listener, event: _Event) -> None:
        listener.loop.call_soon_threadsafe(listener.queue.put_nowait, event)

    def _fail_all(self, message: str) -> None:
        """The engine failed a step: every client gets an error event, every live request is aborted."""
        for request in self.engine.scheduler.live_requests():
            self.engine.scheduler.abort(request, message)
        for listener in self._listeners.values():
            self._emit(listener, _Event("error", message))
        self._listeners.clear()

    def _deliver(self, batch: list[Request], finished: list[Request]) -> None:
        """After a step: decode once per listened request that needs text, end requests at stop strings, emit."""
        done = {r.request_id for r in finished}
        for request in batch + [r for r in finished if r not in batch]:
            listener = self._listeners.get(request.request_id)
            if listener is None:
                continue
            text = None
            if listener.stream or listener.stop:
                text = self.engine.tokenizer.decode(response_ids(request))
                if listener.stop and request.request_id not in done and listener.stop.cut(text)[1]:
                    self.engine.scheduler.finish_early(request)
                    done.add(request.request_id)
                if listener.stream and request.request_id not in done:
                    self._emit(listener, _Event("text", text))
            if request.request_id in done:
                if text is None:
                    text = self.engine.tokenizer.decode(response_ids(request))
                final, stopped = listener.stop.cut(text)
                eos = bool(request.output_tokens) and request.output_tokens[-1] == request.eos_token_id
                self._emit(listener, _Event("done", _Final(final, "stop" if stopped or eos else "length",
                                                           _usage(request))))
                self._listeners.pop(request.request_id, None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                busy = self.engine.has_work()
                if busy:
                    try:
                        plan, _, finished, _ = self.engine.step(time.monotonic() - self._t0)
                        self._deliver(list(plan.batch), list(finished))
                    except Exception as error:   # the engine failed the batch explicitly; tell the clients
                        self._fail_all(f"engine error: {error!r}")
                        continue
            if not busy:
                self._wake.wait(self.idle_sleep_s)
                self._wake.clear()


def _error(status: int, message: str, kind: str, headers: dict | None = None, param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return error_response(status, message, kind, param=param, code=code, headers=headers)


def _unknown_model(model: str | None, name: str) -> JSONResponse | None:
    if model is None or model == name:
        return None
    return _error(404, f"model = {model!r} is not served here; accepted: {name}",
                  "invalid_request_error", param="model", code="model_not_found")


def _single_prompt(prompt: str | list) -> tuple[str | list[int] | None, JSONResponse | None]:
    """One prompt: a string or token ids, or a list holding exactly one of them; several are refused."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            return None, _error(400, f"prompt = a list of {len(prompt)} prompts is not supported by this server; "
                                "accepted: one prompt per request (a string or a list of token ids)",
                                "invalid_request_error", param="prompt", code="unsupported_parameter")
        prompt = prompt[0]
    return prompt, None


def _checked_prompt(body: CompletionRequest, name: str) -> tuple[str | list[int] | None, JSONResponse | None]:
    """The one prompt of a completion request, or the OpenAI-shaped error that refuses the request."""
    refused = _unknown_model(body.model, name) or unsupported_parameter(body.model_dump(), UNSUPPORTED)
    prompt, refused = (None, refused) if refused else _single_prompt(body.prompt)
    if refused:
        return None, refused
    if isinstance(prompt, str) and not prompt:
        return None, _error(400, "prompt is empty; accepted: a non-empty string or list of token ids",
                            "invalid_request_error", param="prompt", code="invalid_value")
    if isinstance(prompt, list) and not prompt:
        return None, _error(400, "prompt is an empty list; accepted: a non-empty list of token ids",
                            "invalid_request_error", param="prompt", code="invalid_value")
    return prompt, None


def _too_long(engine: Engine, prompt_len: int, max_tokens: int, prompt_param: str,
              tokens_param: str) -> JSONResponse | None:
    """400 `context_length_exceeded` for a prompt + max_tokens that can never run on this engine."""
    limit, what = context_limit(engine)
    if prompt_len + max_tokens <= limit:
        return None
    param = prompt_param if prompt_len >= limit else tokens_param
    return _error(400, f"{prompt_param} ({prompt_len} tokens) + {tokens_param} ({max_tokens}) = "
                  f"{prompt_len + max_tokens} tokens exceeds {what}, the most one request may use here; accepted: "
                  f"fewer {prompt_param} tokens or a smaller {tokens_param}", "invalid_request_error", param=param,
                  code="context_length_exceeded")


def _checked_chat(body: ChatCompletionRequest, engine: Engine,
                  name: str) -> tuple[list[int], list[dict], int] | JSONResponse:
    """A chat request's prompt ids, its messages and its max_tokens, or the OpenAI-shaped error refusing it.

    Without max_tokens (or max_completion_tokens) the response may take `DEFAULT_CHAT_MAX_TOKENS`, or what
    still fits in the context if that is less."""
    refused = _unknown_model(body.model, name) or unsupported_parameter(body.model_dump(), CHAT_UNSUPPORTED)
    if refused:
        return refused
    tokens_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if body.max_tokens is not None and body.max_completion_tokens not in (None, body.max_tokens):
        return _error(400, f"max_tokens = {body.max_tokens} and max_completion_tokens = "
                      f"{body.max_completion_tokens} disagree; accepted: one of them, or equal values",
                      "invalid_request_error", param="max_completion_tokens", code="invalid_value")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages]
    try:
        ids = chat_prompt_ids(engine.tokenizer, messages)
    except ValueError as error:
        return _error(400, f"messages cannot be formatted for {name}: {error}; accepted: a list of messages "
                      "{role, content} this model's chat template takes", "invalid_request_error",
                      param="messages", code="invalid_value")
    if not ids:
        return _error(400, "messages make an empty prompt; accepted: at least one message with content",
                      "invalid_request_error", param="messages", code="invalid_value")
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is None:
        room = context_limit(engine)[0] - len(ids)
        max_tokens = min(DEFAULT_CHAT_MAX_TOKENS, room) if room >= 1 else 1
    return _too_long(engine, len(ids), max_tokens, "messages", tokens_param) or (ids, messages, max_tokens)


def _rejected(rejected: RequestRejected) -> JSONResponse:
    """400 for a request that can never fit, 503 with Retry-After for a full queue."""
    overloaded = rejected.status == 503
    return _error(rejected.status, rejected.message, "server_overloaded" if overloaded else "invalid_request_error",
                  {"Retry-After": "1"} if overloaded else None,
                  code="server_overloaded" if overloaded else "invalid_value")


@dataclass
class _Completion:
    """One admitted request of either endpoint: answered whole or streamed as server-sent events.

    `kind` is "text" (`/v1/completions`) or "chat" (`/v1/chat/completions`); it changes only the JSON around
    the text, never how the text is computed.
    """

    request: Request
    queue: asyncio.Queue
    runner: EngineRunner
    stop: StopStrings
    model: str
    created: int
    kind: str = "text"
    include_usage: bool = False

    def visible(self, text: str) -> str:
        """What of the text so far may be streamed: less half a UTF-8 character and less a possible stop's start."""
        text = text.rstrip("\ufffd")
        return self.stop.safe(text)[0] if self.stop else text

    def _choice(self, text: str | None, finish: str | None, whole: bool = False) -> dict:
        if self.kind == "text":
            return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
        if whole:
            return {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": ""} if text is None else {"content": text} if text else {}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _object(self, chunk: bool) -> str:
        return "text_completion" if self.kind == "text" else "chat.completion.chunk" if chunk else "chat.completion"

    def _sse(self, choices: list[dict], usage: dict | None = None) -> str:
        payload = {"id": self.request.request_id, "object": self._object(True), "created": self.created,
                   "model": self.model, "choices": choices}
        if self.include_usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    async def events(self):
        """Text as it grows, then the finish reason (and usage if asked) and [DONE], or an error event.

        Cancels the request if the client goes away."""
        sent, finished = "", False
        try:
            if self.kind == "chat":
                yield self._sse([self._choice(None, None)])        # the role, before any content
            while True:
                event = await self.queue.get()
                if event.kind == "text":
                    text = self.visible(event.value)
                    if len(text) > len(sent) and text.startswith(sent):
                        yield self._sse([self._choice(text[len(sent):], None)])
                        sent = text
                elif event.kind == "done":
                    finished = True
                    final: _Final = event.value
                    rest = final.text[len(sent):]
                    if self.kind == "chat" and rest:
                        yield self._sse([self._choice(rest, None)])
                        rest = ""
                    yield self._sse([self._choice(rest, final.finish_reason)])
                    if self.include_usage:
                        yield self._sse([], final.usage)
                    yield "data: [DONE]\n\n"
                    return
                else:
                    finished = True
                    error = {"message": event.value, "type": "server_error", "param": None, "code": "engine_error"}
                    yield f"data: {json.dumps({'error': error})}\n\n"
                    return
        finally:
            if not finished:
                self.runner.cancel(self.request)

    async def whole(self) -> dict:
        """The finished response in one body (500 if the engine failed it); cancels if the client goes away."""
        finished = False
        try:
            while True:
                event = await self.queue.get()
                if event.kind == "done":
                    finished = True
                    break
                if event.kind == "error":
                    finished = True
                    raise HTTPException(status_code=500, detail=str(event.value))
        finally:
            if not finished:
                self.runner.cancel(self.request)
        if self.request.state is not RequestState.FINISHED:
            raise HTTPException(status_code=500, detail=self.request.error or "request did not finish")
        final: _Final = event.value
        return {"id": self.request.request_id, "object": self._object(False), "created": self.created,
                "model": self.model, "choices": [self._choice(final.text, final.finish_reason, whole=True)],
                "usage": final.usage}


def create_app(engine: Engine, model_name: str | None = None) -> FastAPI:
    name = model_name or engine.config.model
    runner = EngineRunner(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        runner.start()
        yield
        runner.stop()

    app = FastAPI(title="edgepool serving", version="0.1", lifespan=lifespan)
    app.state.runner = runner
    install(app)
    created_at = int(time.time())

    @app.get("/health")
    async def health() -> dict:
        sched = engine.scheduler
        status = {"status": "ok", "policy": engine.policy.name, "running": len(sched.running),
                  "waiting": len(sched.waiting), "swapped": len(sched.swapped),
                  "kv_blocks_used": engine.blocks.num_used, "kv_blocks_total": engine.blocks.num_blocks}
        stages = getattr(engine.executor, "stages", None)
        if stages is not None:  # a pool: which device holds which layers, and its re-plans so far
            status["stages"] = [{"device": s.device, "layers": [s.first, s.end]} for s in stages]
            status["pool_events"] = [{"kind": e.kind, "devices": e.devices, "recovery_s": round(e.recovery_s, 2)}
                                     for e in engine.executor.events]
        return status

    card = {"id": name, "object": "model", "created": created_at, "owned_by": "edgepool"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        return _unknown_model(model_id, name) or card

    async def answer(request: Request, stop: StopStrings, kind: str, stream: bool, include_usage: bool):
        runner.start()
        try:
            queue = runner.submit(request, stop, stream)
        except RequestRejected as rejected:
            return _rejected(rejected)
        completion = _Completion(request, queue, runner, stop, name, int(time.time()), kind, include_usage)
        if stream:
            return StreamingResponse(completion.events(), media_type="text/event-stream")
        return await completion.whole()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        prompt, refused = _checked_prompt(body, name)
        if refused:
            return refused
        request = runner.make_request(prompt, body.max_tokens, body.temperature, body.seed, "cmpl")
        refused = _too_long(engine, request.prompt_len, body.max_tokens, "prompt", "max_tokens")
        if refused:
            return refused
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await answer(request, StopStrings(body.stop), "text", body.stream, include_usage)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        checked = _checked_chat(body, engine, name)
        if isinstance(checked, JSONResponse):
            return checked
        ids, messages, max_tokens = checked
        request = runner.make_request(ids, max_tokens, body.temperature or 0.0, body.seed, "chatcmpl")
        request.prompt_text = "\n".join(m["content"] for m in messages)   # what a length predictor reads
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await answer(request, StopStrings(body.stop), "chat", bool(body.stream), include_usage)

    return app
