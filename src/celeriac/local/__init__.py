"""The local stack behind ``celeriac up``: Redis and every component as local processes.

One machine, no Docker: a password-protected redis-server on 127.0.0.1, then the api, one
worker, beat and the exporter, each ``python -m celeriac <component>`` in its own process group
so that stopping the stack stops everything it started, pool processes included.
"""
