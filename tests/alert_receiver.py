"""A real HTTP server on 127.0.0.1 that alert webhooks post to, with receivers that misbehave.

Paths: ``/ok`` answers 200; ``/flaky`` answers 500 twice, then 200; ``/down``
always 500; ``/hang`` reads the request and never answers (until stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Received:
    """One POST: its path, its JSON body, when it arrived (monotonic) and its headers."""

    path: str
    body: dict[str, Any]
    at: float
    headers: dict[str, str]


class Receiver:
    """Records every request; answers by path (see the module docstring)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None
        self._release = asyncio.Event()
        self._hits: dict[str, int] = {}

    async def start(self) -> str:
        """Listen on a free port; returns ``http://127.0.0.1:PORT``."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._release.set()  # hanging requests end, so the server can close
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    def posts(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode("latin-1").split()
            headers: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("latin-1").strip()
                if not line:
                    break
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            path = request[1] if len(request) > 1 else "/"
            self.received.append(Received(path, json.loads(body), time.monotonic(), headers))
            self._hits[path] = self._hits.get(path, 0) + 1
            if path == "/hang":
                await self._release.wait()
                return
            status = 200
            if path == "/down" or (path == "/flaky" and self._hits[path] <= 2):
                status = 500
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
            )
            await writer.drain()
        finally:
            writer.close()
