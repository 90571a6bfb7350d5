"""OpenAI-compatible `/v1/completions` (with server-sent-event streaming) over the real engine.

One background thread runs the engine loop (continuous batching); HTTP handlers submit requests and read
tokens from per-request asyncio queues. Admission is checked in the handler, so a request that can never
fit gets 400 and a full queue gets 503 with Retry-After, before any streaming starts; once admitted, a
request either finishes or ends with an explicit error event. Every error is in OpenAI's shape
(`openai_errors`); a request ends early, finished, when its text reaches one of its `stop` strings.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgepool.serving.engine import Engine
from edgepool.serving.openai_errors import error_response, install, unsupported_parameter
from edgepool.serving.request import Request, RequestState
from edgepool.serving.scheduler import RequestRejected
from edgepool.serving.stop import MAX_STOP_STRINGS, StopStrings


class CompletionRequest(BaseModel):
    """OpenAI's completion request: what the engine honours, plus OpenAI parameters it refuses by name."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[int] | list[str] | list[list[int]] = Field(description="text, or token ids")
    model: str | None = None
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stream: bool = False
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
        stops = [value] if isinstance(value, str) else value or []
        if isinstance(value, list) and not 1 <= len(value) <= MAX_STOP_STRINGS:
            raise ValueError(f"a list of 1 to {MAX_STOP_STRINGS} strings, got {len(value)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return value


@dataclass
class _Event:
    kind: str            # "token" | "done" | "error"
    value: object = None


class EngineRunner:
    """Owns the engine and its loop thread; hands tokens to asyncio queues."""

    def __init__(self, engine: Engine, idle_sleep_s: float = 0.01):
        self.engine, self.idle_sleep_s = engine, idle_sleep_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stops: dict[str, StopStrings] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="edgepool-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, prompt: str | list[int], max_tokens: int, temperature: float, seed: int | None,
               stop: StopStrings | None = None) -> tuple[Request, asyncio.Queue]:
        """Admit a request (raises RequestRejected) and return the queue its events arrive on."""
        request = self.engine.make_request(f"cmpl-{next(self._ids)}-{uuid.uuid4().hex[:8]}", prompt, max_tokens,
                                           temperature=temperature, seed=seed,
                                           arrival_time=time.monotonic() - self._t0)
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self.engine.add(request)
            self._listeners[request.request_id] = (asyncio.get_running_loop(), queue)
            if stop:
                self._stops[request.request_id] = stop
        self._wake.set()
        return request, queue

    def cancel(self, request: Request) -> None:
        with self._lock:
            if not request.is_done:
                self.engine.scheduler.abort(request, "cancelled: client went away")
            self._listeners.pop(request.request_id, None)
            self._stops.pop(request.request_id, None)

    def _stopped(self, batch: list[Request], finished: list[Request]) -> list[Request]:
        """Requests of this step whose text now contains a stop string: finished early, their blocks freed."""
        done = []
        for request in batch:
            stop = self._stops.get(request.request_id)
            if stop and request not in finished and stop.cut(self.engine.tokenizer.decode(request.output_tokens))[1]:
                self.engine.scheduler.finish_early(request)
                done.append(request)
        return done

    def _emit(self, request_id: str, event: _Event) -> None:
        listener = self._listeners.get(request_id)
        if listener is not None:
            loop, queue = listener
            loop.call_soon_threadsafe(queue.put_nowait, event)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                busy = self.engine.has_work()
                if busy:
                    try:
                        plan, tokens, finished, _ = self.engine.step(time.monotonic() - self._t0)
                    except Exception as error:   # the engine failed the batch explicitly; tell the clients
                        for request_id in list(self._listeners):
                            self._emit(request_id, _Event("error", f"engine error: {error!r}"))
                        self._listeners.clear()
                        for request in self.engine.scheduler.live_requests():
                            self.engine.scheduler.abort(request, f"engine error: {error!r}")
                        continue
                    finished = finished + self._stopped(plan.batch, finished)
                    for request in plan.batch:
                        self._emit(request.request_id, _Event("token", tokens[request.request_id]))
                    for request in finished:
                        self._emit(request.request_id, _Event("done", request))
                        self._listeners.pop(request.request_id, None)
                        self._stops.pop(request.request_id, None)
            if not busy:
                self._wake.wait(self.idle_sleep_s)
                self._wake.clear()


def _finish_reason(request: Request, stopped: bool = False) -> str:
    eos = request.output_tokens and request.output_tokens[-1] == request.eos_token_id
    return "stop" if stopped or eos else "length"


def _error(status: int, message: str, kind: str, headers: dict | None = None, param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return error_response(status, message, kind, param=param, code=code, headers=headers)


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
    if body.model is not None and body.model != name:
        return None, _error(404, f"model = {body.model!r} is not served here; accepted: {name}",
                            "invalid_request_error", param="model", code="model_not_found")
    refused = unsupported_parameter(body.model_dump())
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


def _rejected(rejected: RequestRejected) -> JSONResponse:
    """400 for a request that can never fit, 503 with Retry-After for a full queue."""
    overloaded = rejected.status == 503
    return _error(rejected.status, rejected.message, "server_overloaded" if overloaded else "invalid_request_error",
                  {"Retry-After": "1"} if overloaded else None,
                  code="server_overloaded" if overloaded else "invalid_value")


@dataclass
class _Completion:
    """One admitted completion: its events arrive on `queue`; answered whole or streamed as server-sent events."""

    request: Request
    queue: asyncio.Queue
    runner: EngineRunner
    stop: StopStrings
    model: str
    created: int

    def text_now(self, final: bool) -> tuple[str, bool]:
        """The response text so far (cut at a stop string; while streaming, less a possible stop's start)."""
        text = self.runner.engine.tokenizer.decode(self.request.output_tokens)
        if not final and text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")  # half a UTF-8 character: wait for the rest
        return self.stop.cut(text) if final or not self.stop else self.stop.safe(text)

    def chunk(self, text: str, finish: str | None) -> str:
        payload = {"id": self.request.request_id, "object": "text_completion", "created": self.created,
                   "model": self.model,
                   "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(payload)}\n\n"

    async def events(self):
        """Text as it grows, then the finish reason and [DONE] (or an error event); cancels if the client leaves."""
        sent, finished = "", False
        try:
            while True:
                event = await self.queue.get()
                if event.kind == "token":
                    text, _ = self.text_now(final=False)
                    if len(text) > len(sent):
                        yield self.chunk(text[len(sent):], None)
                        sent = text
                elif event.kind == "done":
                    finished = True
                    text, stopped = self.text_now(final=True)
                    yield self.chunk(text[len(sent):], _finish_reason(self.request, stopped))
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
        """The finished completion in one response (500 if the engine failed it)."""
        while True:
            event = await self.queue.get()
            if event.kind == "done":
                break
            if event.kind == "error":
                raise HTTPException(status_code=500, detail=str(event.value))
        request = self.request
        if request.state is not RequestState.FINISHED:
            raise HTTPException(status_code=500, detail=request.error or "request did not finish")
        text, stopped = self.text_now(final=True)
        return {"id": request.request_id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"text": text, "index": 0, "logprobs": None,
                             "finish_reason": _finish_reason(request, stopped)}],
                "usage": {"prompt_tokens": request.prompt_len, "completion_tokens": request.num_generated,
                          "total_tokens": request.prompt_len + request.num_generated}}


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
        return {"status": "ok", "policy": engine.policy.name, "running": len(sched.running),
                "waiting": len(sched.waiting), "swapped": len(sched.swapped),
                "kv_blocks_used": engine.blocks.num_used, "kv_blocks_total": engine.blocks.num_blocks}

    card = {"id": name, "object": "model", "created": created_at, "owned_by": "edgepool"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        if model_id != name:
            return _error(404, f"model = {model_id!r} is not served here; accepted: {name}",
                          "invalid_request_error", param="model", code="model_not_found")
        return card

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        prompt, refused = _checked_prompt(body, name)
        if refused:
            return refused
        stop = StopStrings(body.stop)
        runner.start()
        try:
            request, queue = runner.submit(prompt, body.max_tokens, body.temperature, body.seed, stop)
        except RequestRejected as rejected:
            return _rejected(rejected)
        completion = _Completion(request, queue, runner, stop, name, int(time.time()))
        if body.stream:
            return StreamingResponse(completion.events(), media_type="text/event-stream")
        return await completion.whole()

    return app
