"""A real HTTP server on 127.0.0.1 whose paths can fail on purpose (tests only)."""

import collections
import contextlib
import gzip
import http.server
import threading
import time

PAYLOAD = gzip.compress(bytes(range(256)) * 4000, mtime=0)  # ~1 MB uncompressed
STALL_SECONDS = 1.5  # bounded: a stalled request ends by itself
CUT_BYTES = 64 * 1024  # what a "cut-range-always" response sends before the cut


class FaultHandler(http.server.BaseHTTPRequestHandler):
    """Answers each path as its fault mode says; ``state``: the FaultServer."""

    state: "FaultServer"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.state.requests[self.path] += 1
        self.state.ranges.append(self.headers.get("Range"))
        if self.path not in self.state.routes:
            self.send_error(404, "Not Found")
            return
        body, mode = self.state.routes[self.path]
        first = self.state.requests[self.path] == 1
        if mode == "500-once" and first:
            self.send_error(500, "Internal Server Error")
        elif (mode in ("cut-once", "cut-norange") and first) or mode == "cut-always":
            self.send_response(200)
            self._validators()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self._write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif mode == "cut-range-always":  # honours Range, cuts every response
            self._send(body, cut=CUT_BYTES)
        elif mode == "stall":
            time.sleep(STALL_SECONDS)
            self._send(body, ranges=False)
        elif mode == "gzip-truncated-once" and first:
            self.send_response(200)  # no Content-Length: the client cannot tell
            self.end_headers()
            self._write(body[: len(body) - 100])
            self.close_connection = True
        else:
            self._send(body, ranges=mode not in ("cut-norange", "norange"))

    def _validators(self):
        etag, _ = self.state.etags.get(self.path, (None, False))
        if etag:
            self.send_header("ETag", etag)

    def _write(self, data):
        self.state.sent[self.path] += len(data)
        self.wfile.write(data)

    def _send(self, body, ranges=True, cut=None):
        start = 0
        header = self.headers.get("Range")
        etag, if_range = self.state.etags.get(self.path, (None, False))
        # If-Range: the range only while the object is the one the client names.
        stale = if_range and self.headers.get("If-Range") not in (None, etag)
        if ranges and header and header.startswith("bytes=") and not stale:
            start = int(header[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self._validators()
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if cut is None:
            self._write(body[start:])
        else:
            self._write(body[start : start + cut])
            self.wfile.flush()
            self.close_connection = True


class FaultServer:
    """Serves bytes at paths, each with a fault mode; counts the requests per path
    and the body bytes sent per path (``sent``)."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.etags: dict[str, tuple[str | None, bool]] = {}
        self.requests = collections.Counter()
        self.sent = collections.Counter()
        self.ranges: list[str | None] = []
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), type("Handler", (FaultHandler,), {"state": self})
        )
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, path, body=PAYLOAD, mode="ok", etag=None, if_range=False):
        """``etag``: sent as ETag; ``if_range``: honour If-Range (else ignore it)."""
        self.routes[path] = (body, mode)
        self.etags[path] = (etag, if_range)
        return self.url + path


@contextlib.contextmanager
def running_fault_server():
    server = FaultServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)
