"""celeriac benchmarks (not tests): ``python -m bench`` runs them all, ``python -m bench.<name>``
runs one. Each starts its own redis-server on a free port, writes ``bench/results/<name>.json``
and re-renders ``bench/RESULTS.md`` from every results file present.
"""
