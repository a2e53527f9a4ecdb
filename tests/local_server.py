"""A download server for tests: http.server on 127.0.0.1 in a thread, serving one payload (the
network is never touched). ``mode`` decides how GET answers: ``ok``; ``missing`` (HTTP 404);
``drop`` (the connection closed before any response); ``truncate`` (the full length announced,
half sent, then hang up). ``hits`` counts the GETs."""
from __future__ import annotations

import http.server
import threading


class ArchiveServer:
    def __init__(self, payload: bytes = b"", name: str = "archive"):
        self.payload, self.mode, self.hits = payload, "ok", 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits += 1
                if server.mode == "missing":
                    self.send_error(404, "Not Found")
                    return
                if server.mode == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                if server.mode == "truncate":
                    self.wfile.write(server.payload[: len(server.payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(server.payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
