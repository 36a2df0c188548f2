#!/bin/sh
# `celeriac` inside the image: the chart's command ["celeriac"] and the image's ENTRYPOINT both
# resolve here through PATH, in front of the venv's console script.
#
# As PID 1 a process gets no default signal actions (an unhandled SIGTERM is ignored) and
# inherits every orphaned process in the container. So when started as PID 1, hand PID 1 to
# tini: it forwards SIGTERM, SIGINT and SIGQUIT to celeriac's main process alone (Celery
# decides how its pool children stop), reaps zombies and exits with celeriac's exit code.
# Anywhere else (exec probes, `kubectl exec`, shareProcessNamespace) run celeriac directly.
if [ "$$" -eq 1 ]; then
    exec /usr/bin/tini -- /opt/celeriac/venv/bin/celeriac "$@"
fi
exec /opt/celeriac/venv/bin/celeriac "$@"
