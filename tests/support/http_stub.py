"""A stand-in JSON HTTP server for tests: answers every request through one function."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator

# (method, path, headers, body) -> (HTTP status, JSON payload)
Answer = Callable[[str, str, dict, bytes], tuple[int, object]]


@contextlib.contextmanager
def json_server(answer: Answer) -> Iterator[int]:
    """Serves on a free loopback port (yielded) until the block ends."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload = answer(self.command, self.path, dict(self.headers), body)
            data = json.dumps(payload, indent=2).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _reply  # noqa: N815 - http.server's naming.

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
