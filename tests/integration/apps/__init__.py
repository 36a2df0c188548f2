"""The Celery apps the integration tests' workers run (``--app tests.integration.apps.X:app``)."""
