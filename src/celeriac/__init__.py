"""celeriac: Celery on Kubernetes, done right."""

from celeriac.app import configure, create_app, load_app
from celeriac.settings import Settings

__all__ = ["Settings", "configure", "create_app", "load_app"]
__version__ = "0.1.0"
