"""A real HTTP server on 127.0.0.1 for the download tests: answers with byte ranges and can cut a response short,
as a flaky mirror would."""
import threading
from http.server import ThreadingHTTPServer


def send_range(handler, body, honour_range=True, drop=False):
    """Answer handler's GET with `body`: 206 from the request's Range start (416 past the end), else 200 with the
    whole body. drop=True writes only half of what was promised and closes, like a dropped connection."""
    range_header = handler.headers.get("Range")
    start = 0
    if range_header and honour_range:
        start = int(range_header.split("=")[1].split("-")[0])
        if start >= len(body):
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(body)}")
            handler.end_headers()
            return
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
        handler.send_response(200)
    part = body[start:]
    handler.send_header("Content-Length", str(len(part)))
    handler.end_headers()
    handler.wfile.write(part[:len(part) // 2] if drop else part)
    handler.close_connection = True


def start(handler_class):
    """Serve handler_class on a free port in a daemon thread; returns (server, base_url)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def stop(httpd):
    httpd.shutdown()
    httpd.server_close()
