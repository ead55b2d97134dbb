"""ASGI middleware, outermost first: one access-log line per request, the API key, the body
size limit (413)."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

from .errors import error_body

access_log = logging.getLogger("qwen3_lora.server.access")


async def _send_error(send, status: int, body: dict, headers: list | None = None) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class AccessLog:
    """One structured JSON log line per request: id, route, status, latency_ms, tokens."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        fields = scope.setdefault("qwen3_lora.log", {})
        status = [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            record = {
                "id": request_id,
                "method": scope.get("method"),
                "route": getattr(route, "path", None) or scope.get("path"),
                "status": status[0],
                "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                "prompt_tokens": fields.get("prompt_tokens"),
                "completion_tokens": fields.get("completion_tokens"),
            }
            for key in ("task", "batch_size"):
                if key in fields:
                    record[key] = fields[key]
            access_log.info(json.dumps(record, ensure_ascii=False), extra={"request": record})


class BearerAuth:
    """Every route but /health needs `Authorization: Bearer <key>`, compared in constant time.

    The web console's page and its files (`page_paths`, anything under `page_prefix`) are open
    to GET and HEAD: they are the page's own code and hold no data; the page asks for the key
    and sends it with every API call it makes.
    """

    OPEN_PATHS = frozenset({"/health"})

    def __init__(
        self,
        app,
        api_key: str | None,
        page_paths: frozenset[str] = frozenset(),
        page_prefix: str | None = None,
    ):
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        self.page_paths = page_paths
        self.page_prefix = page_prefix

    def _is_open(self, scope) -> bool:
        path = scope.get("path") or ""
        if path in self.OPEN_PATHS:
            return True
        if scope.get("method") not in ("GET", "HEAD") or ".." in path:
            return False
        return path in self.page_paths or bool(
            self.page_prefix and path.startswith(self.page_prefix)
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or self._is_open(scope):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        message = (
            "missing API key: send 'Authorization: Bearer <key>'"
            if not header
            else "invalid API key"
        )
        await _send_error(
            send,
            401,
            error_body(message, "invalid_request_error", None, "invalid_api_key"),
            [(b"www-authenticate", b"Bearer")],
        )


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, before the app (or JSON parsing) sees them."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send) -> None:
        message = f"request body exceeds {self.max_bytes} bytes"
        await _send_error(
            send, 413, error_body(message, "invalid_request_error", None, "body_too_large")
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return await self._too_large(send)
            except ValueError:
                pass  # the server (h11) rejects a malformed Content-Length itself
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
