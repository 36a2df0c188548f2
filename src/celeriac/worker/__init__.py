"""The worker component: a Celery worker sized to its container, with file probes, a bounded
SIGTERM drain that requeues what is left, and task metrics for Prometheus.

Importing this package (or ``celeriac.worker.settings``) does not import Celery, so the probe
command stays fast.
"""
