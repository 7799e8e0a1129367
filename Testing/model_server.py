"""A local HTTP server for the model-manager tests: 127.0.0.1 only, behaviour chosen per path.

Never the internet: every URL the tests give the manager points here.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


@dataclass
class Route:
    body: bytes
    statuses: list = field(default_factory=list)     # answered (one per request) before serving the body
    honour_range: bool = True
    cut_after: list = field(default_factory=list)    # per request: close after this many body bytes
    content_length: bool = True                      # False: no Content-Length, body ends at close
    chunk_delay: float = 0.0                         # seconds between 4 KiB chunks
    requests: list = field(default_factory=list)     # Range header of each request (None if absent)
    served: int = 0                                   # requests answered with a body

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):     # keep pytest output clean
        pass

    def do_GET(self):
        route = self.server.routes.get(self.path)
        if route is None:
            self._empty(404)
            return
        route.requests.append(self.headers.get("Range"))
        if route.statuses:
            self._empty(route.statuses.pop(0))
            return
        start = 0
        requested = self.headers.get("Range")
        if requested and route.honour_range:
            start = int(requested.split("=")[1].split("-")[0])
            if start >= len(route.body):
                self._empty(416)
                return
        body = route.body[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
        if route.content_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        route.served += 1
        cut = route.cut_after.pop(0) if route.cut_after else None
        if cut is not None:
            body = body[:cut]
        for offset in range(0, len(body), 4096):
            self.wfile.write(body[offset:offset + 4096])
            if route.chunk_delay:
                self.wfile.flush()
                time.sleep(route.chunk_delay)
        self.wfile.flush()
        if cut is not None or not route.content_length:
            self.close_connection = True

    def _empty(self, status: int):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class ModelServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, body: bytes, **behaviour) -> Route:
        route = Route(body, **behaviour)
        self.httpd.routes[path] = route
        return route

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def tiny_registry(files: list[dict], model_id: str = "tiny", version: str = "1") -> dict:
    """A registry dict with one test model (a licence and citation, like the real ones)."""
    return {"format": 1, "models": [{
        "id": model_id, "title": "test model", "version": version,
        "licence": {"name": "Test licence", "url": "http://127.0.0.1/licence"},
        "citations": ["A. Tester. Tiny models. 2025."], "files": files}]}


def file_entry(name: str, body: Optional[bytes], urls: list[str], sha256="auto", size="auto", **extra) -> dict:
    entry = {"name": name, "sources": [{"url": u} for u in urls],
             "size": len(body) if size == "auto" else size,
             "sha256": hashlib.sha256(body).hexdigest() if sha256 == "auto" else sha256}
    if entry["sha256"] is None:
        entry["verify"] = "first-use"
    entry.update(extra)
    return entry


def write_registry(path, data: dict):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
