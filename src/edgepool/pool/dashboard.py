"""The pool's live dashboard: one web page and one JSON route, served by the standard library.

The coordinator owns the state; the dashboard only shows it. `Dashboard(state)` calls `state()` on every
`GET /api/state` and the page (`static/dashboard.html`, plain DOM and inline SVG, no build step and no CDN,
since pools often run offline) polls that route once a second. A `state()` that raises answers 500 with the
error as JSON, which the page shows in a banner; the server thread keeps serving.
"""
from __future__ import annotations

import json
import logging
import math
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any, Callable

log = logging.getLogger(__name__)

PAGE = "static/dashboard.html"


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: `JSON.parse` in the browser rejects the `NaN` Python writes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: "Dashboard"

    def handle_error(self, request, client_address) -> None:
        """A browser that closes its connection mid-answer is normal; anything else goes to the log, not stderr."""
        log.debug("dashboard: error while answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.server.dashboard.page)
        elif path == "/api/state":
            self._send_state()
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}; the dashboard serves / and /api/state"})

    def _send_state(self) -> None:
        dashboard = self.server.dashboard
        try:
            state = dashboard.state()
        except Exception as error:  # a broken state() must reach the page, never end the server thread
            self._state_failed(f"state() raised {type(error).__name__}: {error}")
            return
        try:
            body = json.dumps(_finite(state), allow_nan=False)
        except (TypeError, ValueError) as error:
            self._state_failed(f"state() returned what JSON cannot hold: {error}")
            return
        dashboard.last_error = None
        self._send(HTTPStatus.OK, "application/json", body.encode())

    def _state_failed(self, message: str) -> None:
        dashboard = self.server.dashboard
        if message != dashboard.last_error:  # logged once per new error, not on every poll of every open page
            log.warning("dashboard: %s", message, exc_info=True)
        dashboard.last_error = message
        self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})

    def _send_json(self, status: HTTPStatus, payload: dict) -> None:
        self._send(status, "application/json", json.dumps(payload).encode())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """One line per request every second would bury the pool's own output."""


class Dashboard:
    """Serves the dashboard page and `state()` as JSON on `host:port` (port 0: a free one) from a daemon thread.

    `start()` binds and returns the dashboard, `url` is where a browser on this machine finds it, `stop()` closes
    it; `with Dashboard(state) as dashboard:` does both.
    """

    def __init__(self, state: Callable[[], dict], host: str = "0.0.0.0", port: int = 0):
        self.state = state
        self.host = host
        self.requested_port = port
        self.page = files(__package__).joinpath(PAGE).read_bytes()
        self.last_error: str | None = None  # the last failure the page was sent; None once state() answers again
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Dashboard":
        if self._server is not None:
            raise RuntimeError(f"the dashboard is already serving at {self.url}")
        server = _Server((self.host, self.requested_port), _Handler)
        server.dashboard = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"dashboard:{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the dashboard is not serving; call start() first")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stops serving and frees the port; stopping a stopped dashboard does nothing."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> "Dashboard":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
