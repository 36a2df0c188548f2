"""The HTTP API: submit allow-listed tasks, read their results, revoke them, see queue backlogs.

Build it with ``create_app(settings)``; ``celeriac api`` serves it with uvicorn.
``create_app`` is imported on first use, so ``celeriac.api.settings`` (the port, the token rule)
costs no FastAPI to import: ``celeriac up`` and the CLI's help read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.api.settings import ApiSettings

if TYPE_CHECKING:
    from celeriac.api.app import create_app

__all__ = ["ApiSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from celeriac.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
