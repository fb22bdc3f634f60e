"""openai-python's Realtime client through the real aoai-proxy binary, on 127.0.0.1.

A mock Azure OpenAI Realtime endpoint (the `websockets` library) accepts the WebSocket only with
an Entra ID bearer token and no api-key; a mock App Service managed-identity endpoint gives the
proxy its token. openai-python connects as the README's client section says: `AzureOpenAI` with
`websocket_base_url` (its Azure client otherwise forces wss://), and `OpenAI` on the v1 API, whose
ws:// URL follows from an http base URL. Events go both ways."""

import asyncio
import json
import threading

import pytest
import websockets.asyncio.server
from openai import AzureOpenAI, OpenAI

from conftest import ENTRA_TOKEN, free_port, running_proxy


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
    realtime = Realtime()
    with running_proxy({"API_BASE_URL": f"http://127.0.0.1:{realtime.port}"}) as (port, _):
        yield port, realtime


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
    assert lowered["authorization"] == f"Bearer {ENTRA_TOKEN}"
    assert "api-key" not in lowered


def test_openai_client_on_the_v1_api_through_the_proxy(proxy):
    port, realtime = proxy
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="unused-aoai-proxy-authenticates")
    with client.realtime.connect(model="gpt-realtime") as connection:
        exchange(connection, realtime)
    path, headers = realtime.handshakes[0]
    assert path.startswith("/openai/v1/realtime?model=gpt-realtime"), path
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["authorization"] == f"Bearer {ENTRA_TOKEN}"
