"""Issue 17: the pool's live dashboard. Its two routes over plain HTTP, then the page in a real headless Chromium
following a pool whose state changes under it (a device lost, a failure event) the way a person would see it."""
from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request

import pytest

from browser import headless_chrome, needs_chrome, save_screenshot, wait_for
from edgepool.pool.dashboard import Dashboard

T0 = 1_780_000_000.0  # a fixed epoch, so event clocks and ages are the same on every run


def _timeline() -> list[dict]:
    """One GPipe iteration of 4 micro-batches over two stages: forwards fill the pipeline, backwards drain it."""
    def bar(device, kind, start, seconds, microbatch):
        return {"device": device, "kind": kind, "start": start, "end": start + seconds, "microbatch": microbatch}

    bars = []
    for mb in range(4):
        bars += [bar("orin-nano", "fwd", 0.10 * mb, 0.10, mb), bar("rpi5-a", "fwd", 0.12 + 0.16 * mb, 0.15, mb)]
    for back, mb in enumerate(reversed(range(4))):
        bars += [bar("rpi5-a", "bwd", 0.78 + 0.30 * back, 0.28, mb),
                 bar("orin-nano", "bwd", 1.08 + 0.30 * back, 0.20, mb)]
    return bars + [bar("orin-nano", "optimizer", 2.20, 0.08, None), bar("rpi5-a", "optimizer", 1.98, 0.06, None)]


def _device(name: str, state: str, address: str, gflops: float, gib: float, gbs: float, accelerator, util, workers):
    return {"name": name, "state": state, "address": address, "agent_port": 7077, "joined": T0 - 300,
            "heartbeat_age_s": 0.4, "utilization": util, "workers": workers,
            "measured": {"fp32_gflops": gflops, "memory_gib": gib, "memory_bandwidth_gbs": gbs, "cpu_cores": 4,
                         "accelerator": accelerator}}


def _pool_state() -> dict:
    """What a coordinator reports mid-training: two devices running the job, a third still joining."""
    return {
        "pool": {"name": "lab-bench", "coordinator": "192.168.1.10:7070", "started": T0 - 600, "now": T0},
        "devices": [
            _device("orin-nano", "up", "192.168.1.21", 612.5, 7.4, 51.2, "cuda:Orin", 0.83, 1),
            _device("rpi5-a", "up", "192.168.1.22", 41.3, 7.8, 9.6, None, 0.97, 1),
            _device("laptop", "joining", "192.168.1.30", None, None, None, None, None, 0),
        ],
        "links": [
            {"a": "orin-nano", "b": "rpi5-a", "bandwidth_mbit_s": 941.0, "rtt_ms": 0.42, "measured_at": T0 - 20},
            {"a": "orin-nano", "b": "laptop", "bandwidth_mbit_s": 288.5, "rtt_ms": 2.9, "measured_at": T0 - 5},
            {"a": "rpi5-a", "b": "laptop", "bandwidth_mbit_s": 291.0, "rtt_ms": 3.1, "measured_at": T0 - 5},
        ],
        "job": {
            "id": "job-3", "kind": "training", "command": "edgepool train resnet18 --batch 32", "state": "running",
            "started": T0 - 120, "progress": {"done": 37, "total": 100, "unit": "iterations"},
            "throughput": {"value": 18.6, "unit": "samples/s"},
            "plan": {"planner": "hybrid", "devices": ["orin-nano", "rpi5-a"],
                     "stages": [{"pipeline": 0, "stage": 0, "layers": [0, 9], "devices": ["orin-nano"]},
                                {"pipeline": 0, "stage": 1, "layers": [10, 17], "devices": ["rpi5-a"]}]},
            "timeline": _timeline(), "timeline_source": "simulated, one iteration of the plan",
        },
        "events": [
            {"time": T0 - 300, "kind": "join", "device": "orin-nano", "text": "joined with a measured profile"},
            {"time": T0 - 290, "kind": "join", "device": "rpi5-a", "text": "joined with a measured profile"},
        ],
    }


def _get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_routes_answer_state_page_404_and_a_broken_state_as_500():
    """The page depends on these four answers; a state() that raises must reach the page and not stop the server."""
    current = {"state": _pool_state()}

    def state():
        if isinstance(current["state"], Exception):
            raise current["state"]
        return current["state"]

    with Dashboard(state, host="127.0.0.1") as dashboard:
        url = dashboard.url
        assert url == f"http://127.0.0.1:{dashboard.port}/" and dashboard.port > 0
        status, headers, body = _get(dashboard.url + "api/state")
        assert status == 200 and headers["Content-Type"] == "application/json", headers
        assert headers["Cache-Control"] == "no-store"
        assert json.loads(body) == _pool_state()

        status, headers, body = _get(dashboard.url)
        assert status == 200 and headers["Content-Type"].startswith("text/html"), headers
        assert b'id="devices"' in body and b'id="job"' in body and b"api/state" in body

        status, _, body = _get(dashboard.url + "favicon.ico")
        assert status == 404 and "/api/state" in json.loads(body)["error"]

        current["state"] = RuntimeError("coordinator lost its lock")
        status, headers, body = _get(dashboard.url + "api/state")
        assert status == 500 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"error": "state() raised RuntimeError: coordinator lost its lock"}

        current["state"] = {"pool": {"started": object()}}
        status, _, body = _get(dashboard.url + "api/state")
        assert status == 500 and "JSON cannot hold" in json.loads(body)["error"], body

        current["state"] = {"pool": {"name": "after", "now": float("nan")}}
        status, _, body = _get(dashboard.url + "api/state")
        assert status == 200 and json.loads(body) == {"pool": {"name": "after", "now": None}}, body
    with pytest.raises(urllib.error.URLError):  # stop() closed the port
        urllib.request.urlopen(url, timeout=2)


def test_default_host_listens_everywhere_and_points_browsers_at_loopback():
    """Bound to 0.0.0.0 for the pool's other machines; `url` is still one a browser here can open."""
    with Dashboard(dict) as dashboard:
        assert dashboard.url == f"http://127.0.0.1:{dashboard.port}/"
        assert _get(dashboard.url + "api/state")[2] == b"{}"


# Read in one script, so that a redraw (every second) cannot replace an element between finding and reading it.
SNAPSHOT = """
const $ = (selector) => document.querySelector(selector);
const newest = $("#events li");
return {
  rows: Object.fromEntries([...document.querySelectorAll("#devices tr[data-device]")]
                           .map((row) => [row.dataset.device, row.dataset.state])),
  header: $("header").innerText, links: $("#links").innerText,
  job: $("#job").dataset.state, jobText: $("#job").innerText,
  bars: [...document.querySelectorAll("#gantt rect")].map((rect) => rect.dataset.kind),
  newest: newest ? [newest.dataset.kind, newest.innerText] : null,
  error: $("#error").offsetParent === null ? null : $("#error").innerText,
};
"""


def _page_when(driver, condition, what: str) -> dict:
    """The page's snapshot once `condition(snapshot)` holds (the page redraws once a second)."""
    def ready(driver):
        page = driver.execute_script(SNAPSHOT)
        return page if condition(page) else None
    return wait_for(driver, ready, what=what)


def test_page_follows_the_pool_in_a_real_browser():
    """Devices, links, the job and its Gantt chart render; a lost device and a failure event appear within seconds."""
    needs_chrome()
    current = {"state": _pool_state()}
    started = time.monotonic()
    with Dashboard(lambda: copy.deepcopy(current["state"]), host="127.0.0.1") as dashboard, headless_chrome() as driver:
        driver.get(dashboard.url)
        page = _page_when(driver, lambda page: page["rows"], "device rows")
        assert page["rows"] == {"orin-nano": "up", "rpi5-a": "up", "laptop": "joining"}
        assert "lab-bench" in page["header"] and "192.168.1.10:7070" in page["header"], page["header"]
        assert "orin-nano → rpi5-a" in page["links"] and "941.0" in page["links"], page["links"]
        assert "measured 20 s ago" in page["links"]
        assert page["job"] == "running" and page["error"] is None
        assert "37 / 100 iterations" in page["jobText"] and "18.6 samples/s" in page["jobText"], page["jobText"]
        assert "simulated, one iteration of the plan" in page["jobText"]
        assert sorted(page["bars"]) == sorted(bar["kind"] for bar in _timeline())
        assert page["newest"][0] == "join" and "rpi5-a" in page["newest"][1]

        lost = _pool_state()
        lost["devices"][1].update(state="gone", heartbeat_age_s=12.0, utilization=None, workers=0)
        lost["job"]["state"] = "recovering"
        lost["events"].append({"time": T0 + 5, "kind": "failure", "device": "rpi5-a", "text": "missed 3 heartbeats"})
        current["state"] = lost
        page = _page_when(driver, lambda page: page["rows"].get("rpi5-a") == "gone", "rpi5-a shown as gone")
        assert page["rows"] == {"orin-nano": "up", "rpi5-a": "gone", "laptop": "joining"}
        assert page["newest"][0] == "failure" and "missed 3 heartbeats" in page["newest"][1], page["newest"]
        assert page["job"] == "recovering" and page["error"] is None

        shot = save_screenshot(driver, "pool-dashboard.png")
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000, (shot, len(data))

        dashboard.state = lambda: 1 / 0  # a coordinator whose state() breaks: the page says so, not goes blank
        page = _page_when(driver, lambda page: page["error"], "the error banner")
        assert "500" in page["error"] and "ZeroDivisionError" in page["error"], page["error"]
        assert page["rows"]["rpi5-a"] == "gone"  # the last good state stays on screen
    assert time.monotonic() - started < 20
