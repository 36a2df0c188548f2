"""``celeriac inspect``: what each queue and worker group holds, read from Redis alone.

``settings`` reads the environment and the worker groups, ``report`` reads the counts from
Redis, ``render`` turns them into tables or JSON, ``runner`` does both for the CLI.

Named ``inspection``, not after its subcommand: ``inspect`` is a standard-library module, which
``src/celeriac`` on ``sys.path`` (a script run from there, a tool that adds it) would hide from
everything, Celery and pytest included.
"""
