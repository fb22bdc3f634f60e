"""openai-python through the real aoai-proxy binary with two backends (AOAI_PROXY_BACKENDS), on
127.0.0.1: a throttled or failing first backend is invisible to the SDK, and when every backend is
throttled the SDK's own retry waits exactly the proxy's `retry-after-ms`, once, instead of burning
its retries."""

import http.server
import json
import threading
import time
import urllib.request

import pytest
from openai import AzureOpenAI

from conftest import ENTRA_TOKEN, running_proxy


class Backend:
    """A mock Azure OpenAI chat completions endpoint that can be told to throttle or fail."""

    def __init__(self, name):
        self.name = name
        self.fault = None  # None, ("throttle", ms) or ("status", code)
        self.calls = []
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                backend.calls.append((time.monotonic(), self.path, dict(self.headers), body))
                if self.headers.get("authorization") != f"Bearer {ENTRA_TOKEN}" or "api-key" in self.headers:
                    return self.answer(401, {"error": {"code": "401", "message": "token required"}})
                fault = backend.fault
                if fault and fault[0] == "throttle":
                    return self.answer(429, {"error": {"code": "429", "message": "Rate limit is exceeded."}},
                                       {"retry-after-ms": str(fault[1]), "retry-after": str(-(-fault[1] // 1000))})
                if fault and fault[0] == "status":
                    return self.answer(fault[1], {"error": {"code": str(fault[1]), "message": "backend fault"}})
                return self.answer(200, {
                    "id": "chatcmpl-py", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f"from {backend.name}"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                })

            def answer(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def setup():
    first, second = Backend("first"), Backend("second")
    backends = json.dumps([
        {"endpoint": first.url, "priority": 0},
        {"endpoint": second.url, "priority": 1, "deployments": {"gpt-4o": "gpt-4o-second"}},
    ])
    with running_proxy({"AOAI_PROXY_BACKENDS": backends}) as (port, admin):
        client = AzureOpenAI(
            azure_endpoint=f"http://127.0.0.1:{port}",
            api_key="unused-aoai-proxy-authenticates",
            api_version="2024-10-21",
            max_retries=2,
        )
        yield client, first, second, admin
    first.server.shutdown()
    second.server.shutdown()


def ask(client):
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_a_throttled_or_failing_first_backend_is_invisible_to_the_sdk(setup):
    client, first, second, admin = setup
    assert ask(client).parse().choices[0].message.content == "from first"

    first.fault = ("throttle", 800)
    assert ask(client).parse().choices[0].message.content == "from second"
    assert second.calls[-1][1].startswith("/openai/deployments/gpt-4o-second/chat/completions")
    # Cooling down: the first backend is not called again during its wait.
    first.fault = None
    calls = len(first.calls)
    assert ask(client).parse().choices[0].message.content == "from second"
    assert len(first.calls) == calls

    time.sleep(0.85)
    first.fault = ("status", 503)
    assert ask(client).parse().choices[0].message.content == "from second"
    assert len(first.calls) == calls + 1

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as answer:
        metrics = answer.read().decode()
    label = first.url.removeprefix("http://")
    assert f'aoai_proxy_backend_throttled_total{{backend="{label}"}} 1' in metrics
    assert f'aoai_proxy_backend_failovers_total{{backend="{label}"}} 2' in metrics
    assert 'gen_ai_token_type="total"} ' in metrics


def test_the_sdk_retries_once_after_exactly_the_shortest_wait(setup):
    client, first, second, _ = setup
    first.fault = ("throttle", 5000)
    second.fault = ("throttle", 1200)
    started = time.monotonic()

    def recover():
        time.sleep(0.6)
        second.fault = None

    threading.Thread(target=recover, daemon=True).start()
    raw = ask(client)
    elapsed = time.monotonic() - started
    assert raw.parse().choices[0].message.content == "from second"
    # One 429 (both backends tried once), one retry after ~1.2 s that the second backend answers.
    assert len(first.calls) == 1, "the first backend is cooling down: not called again"
    assert len(second.calls) == 2
    waited = second.calls[1][0] - second.calls[0][0]
    assert 1.2 <= waited < 1.6, f"the SDK retried after {waited:.3f} s for a 1.2 s wait"
    assert elapsed < 2.5
