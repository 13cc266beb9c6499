"""A real HTTP server on loopback that records what is POSTed to it: a stand-in for a manager
replica where a test needs to see each request or choose the answer (status, a delay)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RecordingServer:
    """Records (path, JSON body, Authorization) per POST and answers ``status`` (mutable) after
    ``delay_s``; HTTP/1.1 keep-alive, as the manager's server; ``client_ports`` has one entry per
    TCP connection a client opened."""

    def __init__(self, status: int = 200, delay_s: float = 0.0):
        self.requests: list[tuple[str, dict, str]] = []
        self.status = status
        self.client_ports: set[int] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay_s)
                outer.requests.append((self.path, body, self.headers.get("Authorization", "")))
                outer.client_ports.add(self.client_address[1])
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
