"""Run every benchmark in turn, render ``bench/RESULTS.md`` and print each benchmark's headline
figures against its target: ``python -m bench [name ...]``."""

from __future__ import annotations

import importlib
import sys
import time

from bench.report import ORDER, render, summary_text


def main(argv: list[str]) -> int:
    names = argv or list(ORDER)
    unknown = [name for name in names if name not in ORDER]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
        return 2
    for name in names:
        started = time.monotonic()
        print(f"bench {name} ...", flush=True)
        importlib.import_module(f"bench.{name}").main()
        print(f"bench {name} done in {time.monotonic() - started:.0f} s", flush=True)
    print(f"results: {render()}")
    print(summary_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
