"""The Redis broker: celeriac's kombu transport, Redis clients, key layout and result backend."""
