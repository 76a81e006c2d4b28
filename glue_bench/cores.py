"""How many CPU cores this process may use."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, as a container, cgroup cpuset or
    `taskset` limits it (os.cpu_count() counts the machine's, which oversubscribes a limited job)."""
    return len(os.sched_getaffinity(0))
