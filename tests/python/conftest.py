"""Shared by the Python checks: the repository root, and aoai-proxy (the real binary) started on
127.0.0.1 with a mock App Service managed-identity endpoint giving it its token."""

import contextlib
import http.server
import json
import pathlib
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROXY = ROOT / "target" / "debug" / "aoai-proxy"
IDENTITY_HEADER = "identity-header-for-the-test"
ENTRA_TOKEN = "entra-token-from-the-mock"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Identity(http.server.BaseHTTPRequestHandler):
    """App Service managed identity: GET ?resource=...&api-version=2019-08-01, X-IDENTITY-HEADER."""

    def do_GET(self):
        if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({
            "access_token": ENTRA_TOKEN,
            "expires_on": str(int(time.time()) + 3600),
            "resource": "https://cognitiveservices.azure.com",
            "token_type": "Bearer",
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running_proxy(upstream_env):
    """aoai-proxy with `upstream_env` (API_BASE_URL or AOAI_PROXY_BACKENDS...), once healthy:
    yields (forwarding port, admin port)."""
    if not PROXY.exists():
        pytest.skip(f"{PROXY} is not built (scripts/test builds it with cargo test --workspace)")
    identity = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Identity)
    threading.Thread(target=identity.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    env = {
        **upstream_env,
        "IDENTITY_ENDPOINT": f"http://127.0.0.1:{identity.server_address[1]}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "AOAI_PROXY_ADMIN_HOST": "127.0.0.1",
        "AOAI_PROXY_ADMIN_PORT": str(admin),
    }
    process = subprocess.Popen([str(PROXY)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/health") as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "aoai-proxy did not become healthy"
            time.sleep(0.1)
        yield port, admin
    finally:
        process.terminate()
        process.wait(10)
        identity.shutdown()
