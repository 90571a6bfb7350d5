"""Every error of the HTTP API in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

OpenAI clients show `error.message` and nothing of FastAPI's `{"detail": [...]}` (the official client printed
a bare "Error code: 422"), so a malformed request gets 400 with one line naming the field, the value and
what is accepted, and every other failure (unknown path, method, model, engine error) keeps the same shape.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

BODY_EXAMPLE = '{"prompt": "Hello", "max_tokens": 16}'

ACCEPTED = {
    "prompt": "a non-empty string, a list of token ids, or a list holding one of these",
    "model": "the served model's id (GET /v1/models)",
    "max_tokens": "an integer >= 1",
    "temperature": "a number from 0 to 2",
    "stream": "true or false",
    "seed": "an integer",
    "user": "a string",
    "stop": "a non-empty string or a list of 1 to 4 non-empty strings",
}

# OpenAI parameters this server does not implement, with the one value that means "not used".
UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "suffix": None, "top_p": 1,
               "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None}


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def unsupported_parameter(values: dict[str, Any]) -> JSONResponse | None:
    """400 naming the first OpenAI parameter set to something this server cannot do (None if there is none)."""
    for name, neutral in UNSUPPORTED.items():
        value = values.get(name)
        if value is not None and value != neutral and not (name == "logit_bias" and value == {}):
            what = f"{neutral!r}" if neutral is not None else "null"
            return error_response(400, f"{name} = {value!r} is not supported by this server; accepted: {what} "
                                  "or leave it out", param=name, code="unsupported_parameter")
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """The first problem of a request FastAPI could not parse, as one OpenAI-shaped 400."""
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if p != "body"]
    kind = err["type"]
    if kind == "json_invalid":
        cause = (err.get("ctx") or {}).get("error", "JSON decode error")
        where = f" at character {loc[0]}" if loc else ""
        return error_response(400, f"the request body is not valid JSON ({cause}{where}); accepted: a JSON "
                              f"object such as {BODY_EXAMPLE}", code="invalid_json")
    if not loc:
        message = ("the request body is empty" if kind == "missing" else
                   f"the request body = {_short(err.get('input'))} is not valid")
        return error_response(400, f"{message}; accepted: a JSON object such as {BODY_EXAMPLE}", code="invalid_body")
    param = str(loc[0])
    if kind == "extra_forbidden":
        return error_response(400, f"{param} is not a parameter this server knows; accepted: "
                              f"{', '.join([*ACCEPTED, *UNSUPPORTED])}", param=param, code="unknown_parameter")
    accepted = ACCEPTED.get(param, err["msg"])
    if kind == "missing":
        return error_response(400, f"{param} is required; accepted: {accepted}", param=param,
                              code="missing_required_parameter")
    path = param + "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int))
    detail = err["msg"].removeprefix("Value error, ")
    return error_response(400, f"{path} = {_short(err.get('input'))} is not valid; accepted: {accepted} ({detail})",
                          param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    """Answer validation failures and HTTP errors (unknown path, method) in OpenAI's shape."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), kind, code=code,
                              headers=getattr(exc, "headers", None))
