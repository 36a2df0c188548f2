"""The HTTP API: submit allow-listed tasks, read their results, revoke them, see queue backlogs.

Build it with ``create_app(settings, api_settings)``; ``celeriac api`` serves it with uvicorn.
"""

from celeriac.api.app import create_app
from celeriac.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
