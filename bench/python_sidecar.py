"""A Python sidecar of the kind aoai-proxy replaces, written the way a careful team would write it.

aiohttp on asyncio; one client session for all requests (keep-alive upstream connections);
bodies streamed both ways, so SSE arrives chunk by chunk; hop-by-hop headers, the caller's
`api-key` and `Host` dropped; a fixed `Authorization` header added (the token is not what is
measured). With LOG_FILE, one access line per request to that file, written 1,000 lines at a time.

Started by aoai-bench, for the benchmark only:
    python python_sidecar.py PORT UPSTREAM_URL [LOG_FILE]
"""

import logging
import logging.handlers
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
DROPPED_FROM_REQUESTS = HOP_BY_HOP | {"api-key", "authorization", "host"}


def forwardable(headers, dropped):
    """The headers to pass on: all but `dropped` and those the `Connection` header names."""
    named = {
        token.strip().lower()
        for value in headers.getall("connection", [])
        for token in value.split(",")
    }
    if named:
        dropped = dropped | named
    return [(k, v) for k, v in headers.items() if k.lower() not in dropped]


async def forward(request):
    session = request.app["session"]
    headers = forwardable(request.headers, DROPPED_FROM_REQUESTS)
    headers.append(("Authorization", "Bearer bench-token"))
    async with session.request(
        request.method,
        request.app["upstream"] + request.rel_url.raw_path_qs,
        headers=headers,
        data=request.content if request.body_exists else None,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            headers=forwardable(upstream.headers, HOP_BY_HOP),
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def open_session(app):
    app["session"] = ClientSession(
        connector=TCPConnector(limit=0),
        timeout=ClientTimeout(total=None, sock_read=300),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
    yield
    await app["session"].close()


def main():
    port, upstream = int(sys.argv[1]), sys.argv[2]
    access_log = None
    if len(sys.argv) > 3:
        access_log = logging.getLogger("aiohttp.access")
        access_log.setLevel(logging.INFO)
        access_log.addHandler(
            logging.handlers.MemoryHandler(
                1000, logging.ERROR, logging.FileHandler(sys.argv[3])
            )
        )
    app = web.Application()
    app["upstream"] = upstream
    app.cleanup_ctx.append(open_session)
    app.router.add_route("*", "/{path:.*}", forward)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=access_log,
        print=None,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
