"""The exporter: queue and worker-group backlog gauges for Prometheus and KEDA, from Redis alone.

``settings`` reads the environment and the worker groups (``celeriac.groups``), ``collector``
turns one pipelined round of Redis reads into metric families, ``server`` serves them over HTTP.
"""
