"""openai-python's Realtime client through the real aoai-proxy binary, on 127.0.0.1.

A mock Azure OpenAI Realtime endpoint (the `websockets` library) accepts the WebSocket only with
an Entra ID bearer token and no api-key; a mock App Service managed-identity endpoint gives the
proxy its token. openai-python connects as the README's client section says: `AzureOpenAI` with
`websocket_base_url` (its Azure client otherwise forces wss://), and `OpenAI` on the v1 API, whose
ws:// URL follows from an http base URL. Events go both ways."""

import asyncio
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
import websockets.asyncio.server
from openai import AzureOpenAI, OpenAI

from conftest import ROOT

PROXY = ROOT / "target" / "debug" / "aoai-proxy"
IDENTITY_HEADER = "identity-header-for-the-test"


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
            "access_token": "entra-token-from-the-mock",
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


class Realtime:
    """The mock Realtime endpoint, on its own event loop thread."""

    def __init__(self):
        self.port = free_port()
        self.handshakes = []
        self.events = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        assert started.wait(10)

    def _run(self, started):
        asyncio.set_event_loop(self.loop)

        async def check(connection, request):
            self.handshakes.append((request.path, dict(request.headers.raw_items())))
            authorization = request.headers.get("Authorization", "")
            if not authorization.startswith("Bearer ") or "api-key" in request.headers:
                return connection.respond(401, "an Entra ID bearer token and no api-key are required\n")
            return None

        async def session(connection):
            await connection.send(json.dumps({"type": "session.created", "event_id": "ev_1", "session": {"id": "sess_mock", "type": "realtime"}}))
            async for message in connection:
                event = json.loads(message)
                self.events.append(event)
                await connection.send(json.dumps({"type": "echo", "of": event.get("type"), "event": event}))

        async def main():
            async with websockets.asyncio.server.serve(session, "127.0.0.1", self.port, process_request=check):
                started.set()
                await asyncio.Future()

        self.loop.run_until_complete(main())


@pytest.fixture
def proxy():
    if not PROXY.exists():
        pytest.skip(f"{PROXY} is not built (scripts/test builds it with cargo test --workspace)")
    identity = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Identity)
    threading.Thread(target=identity.serve_forever, daemon=True).start()
    realtime = Realtime()
    port, admin = free_port(), free_port()
    env = {
        "API_BASE_URL": f"http://127.0.0.1:{realtime.port}",
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
        yield port, realtime
    finally:
        process.terminate()
        process.wait(10)
        identity.shutdown()


def exchange(connection, realtime):
    created = json.loads(connection.recv_bytes())
    assert created["type"] == "session.created"
    connection.session.update(session={"type": "realtime", "instructions": "Be brief."})
    connection.send({"type": "response.create"})
    echoes = [json.loads(connection.recv_bytes()) for _ in range(2)]
    assert [e["of"] for e in echoes] == ["session.update", "response.create"]
    assert echoes[0]["event"]["session"]["instructions"] == "Be brief."


def test_azure_openai_realtime_client_through_the_proxy(proxy):
    port, realtime = proxy
    client = AzureOpenAI(
        azure_endpoint=f"http://127.0.0.1:{port}",
        api_key="unused-aoai-proxy-authenticates",
        api_version="2025-04-01-preview",
        websocket_base_url=f"ws://127.0.0.1:{port}/openai",
    )
    with client.realtime.connect(model="gpt-realtime") as connection:
        exchange(connection, realtime)
    path, headers = realtime.handshakes[0]
    assert path.startswith("/openai/realtime?"), path
    assert "deployment=gpt-realtime" in path and "api-version=2025-04-01-preview" in path
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["authorization"] == "Bearer entra-token-from-the-mock"
    assert "api-key" not in lowered


def test_openai_client_on_the_v1_api_through_the_proxy(proxy):
    port, realtime = proxy
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="unused-aoai-proxy-authenticates")
    with client.realtime.connect(model="gpt-realtime") as connection:
        exchange(connection, realtime)
    path, headers = realtime.handshakes[0]
    assert path.startswith("/openai/v1/realtime?model=gpt-realtime"), path
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["authorization"] == "Bearer entra-token-from-the-mock"
