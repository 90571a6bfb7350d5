"""Issue 14: the OpenAI-style API as the official client sees it: OpenAI's error shape and status 400 for every
malformed request, `stop` honoured, unsupported parameters named, `models.retrieve`."""
from __future__ import annotations

import json

import pytest

from edgepool.serving.stop import StopStrings

SHAPE = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from edgepool.serving.api import create_app
    from edgepool.serving.engine import Engine, EngineConfig

    config = EngineConfig(model="llama-tiny", num_blocks=32, block_size=4, num_host_blocks=16, max_batch_requests=8,
                          max_batch_tokens=256)
    with TestClient(create_app(Engine(config))) as test_client:
        yield test_client


def _openai_error(response, status: int, param: str | None, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == SHAPE, body
    error = body["error"]
    assert error["param"] == param and "\n" not in error["message"], error
    for word in words:
        assert word in error["message"], error
    return error


@pytest.mark.parametrize("payload, param, words", [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", ["max_tokens = 0", ">= 1"]),
    ({"prompt": "x", "max_tokens": -5}, "max_tokens", ["max_tokens = -5", ">= 1"]),
    ({"max_tokens": 5}, "prompt", ["prompt is required"]),
    ({"prompt": "x", "temperature": 7}, "temperature", ["temperature = 7", "0 to 2"]),
    ({"prompt": "x", "colour": "red"}, "colour", ["colour", "stop"]),
    ({"prompt": "x", "n": 2}, "n", ["n = 2", "not supported"]),
    ({"prompt": "x", "echo": True}, "echo", ["echo = True", "not supported"]),
    ({"prompt": "x", "logprobs": 2}, "logprobs", ["logprobs = 2", "not supported"]),
    ({"prompt": ["a", "b"]}, "prompt", ["a list of 2 prompts", "one prompt per request"]),
    ({"prompt": "x", "stop": ""}, "stop", ["stop = ''", "non-empty"]),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", ["1 to 4"]),
    ({"prompt": "x", "stop": 3}, "stop", ["stop"]),
])
def test_malformed_requests_get_400_in_openai_shape(client, payload, param, words):
    _openai_error(client.post("/v1/completions", json=payload), 400, param, *words)


@pytest.mark.parametrize("content, words", [
    (b"{not json", ["not valid JSON", "character 1"]),
    (b"", ["body is empty"]),
    (b"[1, 2]", ["request body = [1, 2]"]),
])
def test_bad_bodies_get_400_in_openai_shape(client, content, words):
    response = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    _openai_error(response, 400, None, *words)


def test_neutral_values_of_unsupported_parameters_and_a_one_prompt_list_are_accepted(client):
    response = client.post("/v1/completions", json={"prompt": ["Hi"], "max_tokens": 3, "n": 1, "echo": False,
                                                    "logprobs": None, "top_p": 1})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


def test_models_list_and_retrieve(client):
    listed = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["llama-tiny"]
    one = client.get("/v1/models/llama-tiny")
    assert one.status_code == 200 and one.json() == listed[0] and one.json()["object"] == "model"
    error = _openai_error(client.get("/v1/models/gpt-4"), 404, "model", "gpt-4", "llama-tiny")
    assert error["code"] == "model_not_found"
    _openai_error(client.get("/v1/nothing-here"), 404, None)
    _openai_error(client.post("/v1/completions", json={"prompt": "x", "model": "gpt-4"}), 404, "model", "gpt-4")


def _complete(client, **extra) -> dict:
    response = client.post("/v1/completions", json={"prompt": [5, 6, 7, 8], "max_tokens": 16, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def _stop_from(text: str) -> str:
    """A character from the middle of the greedy output (random weights: mostly odd bytes), not a broken one."""
    for i in range(1, len(text) - 1):
        if text[i] != "\ufffd" and text.find(text[i]) == i:
            return text[i]
    pytest.skip(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_ends_the_completion_before_the_stop_string(client, as_list):
    full = _complete(client)
    text = full["choices"][0]["text"]
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 16
    stop = _stop_from(text)
    stopped = _complete(client, stop=[stop, "never-there"] if as_list else stop)
    choice = stopped["choices"][0]
    assert choice["text"] == text[:text.index(stop)] and stop not in choice["text"]
    assert choice["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < 16  # generation really ended there


def test_stop_in_a_stream_never_sends_the_stop_string(client):
    text = _complete(client)["choices"][0]["text"]
    stop = _stop_from(text)
    payload = {"prompt": [5, 6, 7, 8], "max_tokens": 16, "stream": True, "stop": stop}
    with client.stream("POST", "/v1/completions", json=payload) as s:
        lines = [line for line in s.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):])["choices"][0] for line in lines[:-1]]
    assert "".join(c["text"] for c in chunks) == text[:text.index(stop)]
    assert chunks[-1]["finish_reason"] == "stop"


def test_stop_strings_hold_back_what_could_become_a_stop():
    stop = StopStrings(["END", "\n\n"])
    assert stop.safe("hello E") == ("hello ", False) and stop.safe("hello EN") == ("hello ", False)
    assert stop.safe("hello ENx") == ("hello ENx", False)
    assert stop.safe("hello END and more") == ("hello ", True)
    assert stop.cut("a\n\nb END") == ("a", True)
    assert not StopStrings(None) and StopStrings("x").cut("abc") == ("abc", False)
