"""The route class of routers that take a JSON body: a body that cannot be decoded is a 422
``json_invalid`` like any other malformed JSON.

FastAPI turns ``json.JSONDecodeError`` into that 422, but any other parse failure (bytes that are
not UTF-8, nesting deeper than Python's recursion limit) into an undocumented 400.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from json import JSONDecodeError
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class JsonBodyRequest(Request):
    async def json(self) -> Any:
        try:
            return await super().json()
        except UnicodeDecodeError as exc:
            reason = f"the body is not UTF-8 (byte {exc.start})"
            raise await self._invalid(reason, exc.start) from exc
        except RecursionError:
            raise await self._invalid("the body is nested too deeply", 0) from None

    async def _invalid(self, reason: str, position: int) -> JSONDecodeError:
        # The document is only used to count lines: the error never echoes the body back.
        document = (await self.body()).decode("utf-8", "replace")
        return JSONDecodeError(reason, document, min(position, len(document)))


class JsonBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_json_body(request: Request) -> Response:
            return await handle(JsonBodyRequest(request.scope, request.receive))

        return handle_json_body
