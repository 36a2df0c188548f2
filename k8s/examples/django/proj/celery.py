"""The Celery app: configured from Django's settings (``CELERY_*``), tasks found in each app.

Every celeriac component loads it with ``--app proj.celery:app`` (or ``CELERIAC_APP``) and
``DJANGO_SETTINGS_MODULE=proj.settings``, and applies celeriac's configuration on top: the
broker, a Redis result backend, JSON only and queues always come from celeriac (``CELERIAC_*``);
``CELERY_RESULT_BACKEND = "django-db"`` stays unless ``CELERIAC_RESULT_BACKEND_URL`` is set; for
the settings celeriac only has a default for (``CELERY_RESULT_EXPIRES``, ``CELERY_TASK_ACKS_LATE``,
...), a ``CELERIAC_*`` variable wins, else your ``CELERY_*`` setting, else celeriac's default.
"""

import os

from celery import Celery

from celeriac import Settings, configure

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The web process sends tasks too (orders.views), outside any celeriac component: give it the
# same configuration, so it publishes to the broker and queues the workers consume, in their
# format. Components apply it again when they load the app; that changes nothing.
configure(app, Settings.from_env())
