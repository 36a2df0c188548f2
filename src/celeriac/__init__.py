"""celeriac: Celery on Kubernetes, done right."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import configure, create_app, load_app
    from celeriac.settings import Settings

__all__ = ["Settings", "configure", "create_app", "load_app"]
__version__ = "0.1.0"

# Imported on first use, so `celeriac probe` (a liveness probe run every few seconds)
# never pays for importing Celery.
_LAZY = {
    "Settings": "celeriac.settings",
    "configure": "celeriac.app",
    "create_app": "celeriac.app",
    "load_app": "celeriac.app",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'celeriac' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
