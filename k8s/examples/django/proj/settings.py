"""Settings of the example project; everything deployment-specific comes from the environment.

The database is PostgreSQL, named by libpq's own variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE), so the web pods and every celeriac component read the same ones.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-set-DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # The beat schedule in the database, edited in the admin (celeriac beat with
    # CELERIAC_BEAT_SCHEDULER=django_celery_beat.schedulers:DatabaseScheduler).
    "django_celery_beat",
    # Task results in the database, when DJANGO_RESULTS_IN_DATABASE=1 (below); its tables are
    # migrated either way.
    "django_celery_results",
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "proj"),
        "USER": os.environ.get("PGUSER", "proj"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "HOST": os.environ.get("PGHOST", "localhost"),
        "PORT": os.environ.get("PGPORT", "5432"),
        # Seconds a connection is kept for reuse; 0 closes it after each request, and after
        # each task (Celery's Django fixup runs Django's close_old_connections around tasks).
        "CONN_MAX_AGE": int(os.environ.get("DJANGO_CONN_MAX_AGE", "0")),
        "CONN_HEALTH_CHECKS": True,
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# Celery settings (the CELERY_ namespace of proj/celery.py). celeriac enforces the broker,
# serializers and queues from its CELERIAC_* variables; settings like these, where celeriac only
# has a default, stay yours unless a CELERIAC_* variable sets them.
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_TIME_LIMIT = 300
CELERY_TIMEZONE = TIME_ZONE
# Results in this database (django-celery-results) instead of celeriac's Redis: one write per
# state stored, read back by the API through this backend. CELERIAC_RESULT_BACKEND_URL, when
# set, still wins (README "Django").
if os.environ.get("DJANGO_RESULTS_IN_DATABASE", "") == "1":
    CELERY_RESULT_BACKEND = "django-db"
