"""Every error of the HTTP API in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

OpenAI clients show `error.message` and nothing of FastAPI's `{"detail": [...]}` (the official client printed
a bare "Error code: 422"), so a malformed request gets 400 with one line naming the field, the value and
what is accepted, and every other failure (unknown path, method, model, engine error) keeps the same shape.
Each endpoint has its own table (`COMPLETIONS`, `CHAT`) of accepted parameters and of OpenAI parameters this
server refuses by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

BODY_EXAMPLE = '{"prompt": "Hello", "max_tokens": 16}'
CHAT_BODY_EXAMPLE = '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'

_COMMON = {
    "model": "the served model's id (GET /v1/models)",
    "max_tokens": "an integer >= 1",
    "temperature": "a number from 0 to 2",
    "stream": "true or false",
    "stream_options": 'null or {"include_usage": true|false}',
    "seed": "an integer",
    "user": "a string",
    "stop": "a non-empty string or a list of 1 to 4 non-empty strings",
}

ACCEPTED = {"prompt": "a non-empty string, a list of token ids, or a list holding one of these", **_COMMON}

CHAT_ACCEPTED = {
    "messages": "a non-empty list of messages {role: system|developer|user|assistant, content: a string or a list "
                'of {"type": "text", "text": ...} parts}',
    **_COMMON,
    "max_completion_tokens": "an integer >= 1 (the same as max_tokens)",
    "store": "true or false (nothing is stored either way)",
    "metadata": "an object of strings (ignored)",
    "service_tier": "a string (ignored)",
}

# OpenAI parameters this server does not implement, with the one value that means "not used" (an empty list
# or object counts as "not used" too).
UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "suffix": None, "top_p": 1,
               "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None}

CHAT_UNSUPPORTED = {"n": 1, "logprobs": False, "top_logprobs": 0, "top_p": 1, "presence_penalty": 0,
                    "frequency_penalty": 0, "logit_bias": None, "tools": None, "tool_choice": "none",
                    "functions": None, "function_call": "none", "parallel_tool_calls": None,
                    "response_format": {"type": "text"}, "audio": None, "modalities": ["text"],
                    "prediction": None, "reasoning_effort": None, "web_search_options": None}


@dataclass(frozen=True)
class EndpointParameters:
    """What one endpoint accepts, for error messages: an example body, accepted and refused parameters."""

    example: str
    accepted: dict[str, str]
    unsupported: dict[str, Any]


COMPLETIONS = EndpointParameters(BODY_EXAMPLE, ACCEPTED, UNSUPPORTED)
CHAT = EndpointParameters(CHAT_BODY_EXAMPLE, CHAT_ACCEPTED, CHAT_UNSUPPORTED)
ENDPOINTS = {"/v1/completions": COMPLETIONS, "/v1/chat/completions": CHAT}


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def unsupported_parameter(values: dict[str, Any], table: dict[str, Any] | None = None) -> JSONResponse | None:
    """400 naming the first OpenAI parameter set to something this server cannot do (None if there is none)."""
    for name, neutral in (UNSUPPORTED if table is None else table).items():
        value = values.get(name)
        if value is not None and value != neutral and value not in ({}, []):
            what = f"{neutral!r}" if neutral is not None else "null"
            return error_response(400, f"{name} = {_short(value)} is not supported by this server; accepted: {what} "
                                  "or leave it out", param=name, code="unsupported_parameter")
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_union_tag(part: Any) -> bool:
    """pydantic's location parts that name a union member or validator ('str', 'list[int]'), not a field."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"})


def validation_error(exc: RequestValidationError, endpoint: EndpointParameters = COMPLETIONS) -> JSONResponse:
    """The first problem of a request FastAPI could not parse, as one OpenAI-shaped 400."""
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if p != "body"]
    kind = err["type"]
    if kind == "json_invalid":
        cause = (err.get("ctx") or {}).get("error", "JSON decode error")
        where = f" at character {loc[0]}" if loc else ""
        return error_response(400, f"the request body is not valid JSON ({cause}{where}); accepted: a JSON "
                              f"object such as {endpoint.example}", code="invalid_json")
    if not loc:
        message = ("the request body is empty" if kind == "missing" else
                   f"the request body = {_short(err.get('input'))} is not valid")
        return error_response(400, f"{message}; accepted: a JSON object such as {endpoint.example}",
                              code="invalid_body")
    param = str(loc[0])
    path = param + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:] if not _is_union_tag(p))
    if kind == "extra_forbidden":
        if path == param:
            return error_response(400, f"{param} is not a parameter this server knows; accepted: "
                                  f"{', '.join([*endpoint.accepted, *endpoint.unsupported])}", param=param,
                                  code="unknown_parameter")
        return error_response(400, f"{path} is not a field this server knows; accepted: "
                              f"{endpoint.accepted.get(param, err['msg'])}", param=param, code="unknown_parameter")
    accepted = endpoint.accepted.get(param, err["msg"])
    if kind == "missing":
        return error_response(400, f"{path} is required; accepted: {accepted}", param=param,
                              code="missing_required_parameter")
    detail = err["msg"].removeprefix("Value error, ")
    return error_response(400, f"{path} = {_short(err.get('input'))} is not valid; accepted: {accepted} ({detail})",
                          param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    """Answer validation failures and HTTP errors (unknown path, method) in OpenAI's shape."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, ENDPOINTS.get(request.url.path, COMPLETIONS))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), kind, code=code,
                              headers=getattr(exc, "headers", None))
