"""celeriac.demo.memory: holds the memory it is asked for, resident (the real node's OOM test
relies on the container's usage really growing)."""

from __future__ import annotations

import subprocess
import sys

from celeriac import demo

# Peak resident size (KiB) of a fresh interpreter that imports the demo and runs the task:
# VmHWM, its own memory's high-water mark (getrusage's ru_maxrss keeps the parent's across exec).
PEAK = """
import sys
from celeriac import demo
demo.memory.run(megabytes=int(sys.argv[1]))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(status["VmHWM"].split()[0])
"""


def peak_kib(megabytes: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(megabytes)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_holds_and_returns_the_megabytes_asked_for() -> None:
    assert demo.memory.run(megabytes=1) == 1
    # Both peaks are the task's (above the import's own peak), so they differ by 96 MB.
    assert peak_kib(192) - peak_kib(96) >= 90 * 1024


def test_a_negative_size_holds_nothing() -> None:
    assert demo.memory.run(megabytes=-5) == 0
