"""A bound on every request body, enforced while it is received.

Routes that parse their body (heartbeats, job submissions) would otherwise read whatever a client
sends into memory first. The bound is checked on the declared Content-Length and again on the
bytes actually received (a chunked body declares none), and answers 413 before a route runs.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

MAX_REQUEST_BYTES = 4 << 20  # a manifest is at most 1 MiB; a heartbeat a few KiB

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, whether declared or streamed."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int = MAX_REQUEST_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.limit:
            await _refuse(send, self.limit)
            return
        guard = _StreamGuard(receive, send, self.limit)
        await self.app(scope, guard.receive, guard.send)
        if guard.exceeded and not guard.started:  # an answer already begun cannot change its status
            await _refuse(send, self.limit)


class _StreamGuard:
    """Counts the bytes a route receives. Past the limit the route is told the client went away
    (so it stops reading, whatever it does with errors) and its own answer is dropped: the
    middleware answers 413 instead."""

    def __init__(self, receive: Receive, send: Send, limit: int):
        self._receive, self._send, self.limit = receive, send, limit
        self.received, self.exceeded, self.started = 0, False, False

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        self.received += len(message.get("body", b""))
        if self.received > self.limit:
            self.exceeded = True
            return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if not self.exceeded:
            self.started = True
            await self._send(message)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes; send a smaller one"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
