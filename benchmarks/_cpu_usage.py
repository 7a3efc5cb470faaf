"""CPU seconds used by this process and every process below it (decoding children, scale workers).

A GPU row's throughput with NVDEC 25 % busy could be bounded by the host instead: ``cores busy`` (CPU
seconds / wall seconds, out of ``os.cpu_count()``) says whether the CPUs were the limit.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of ``pid`` from /proc, or None when it is gone: user and system time of
    its own and of its children that have ended (and been waited for)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICKS


def process_tree_cpu_s(root: int | None = None) -> float:
    """CPU seconds of ``root`` (this process) and its live descendants; this process alone off Linux."""
    root = root or os.getpid()
    if not Path("/proc/self/stat").exists():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            got = _stat(entry.name)
            if got is not None:
                stats[int(entry.name)] = got
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def host_cpu_s() -> tuple[float, float] | None:
    """(busy, iowait) CPU seconds of the whole host since boot (/proc/stat), or None off Linux. Against this
    process tree's, it says whether something else ran beside a row: stop 31's sampling rows shared the host
    with the background build of the scan library (4 encoders, then 21 GB of copies) and nobody could tell."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    user, nice, system, idle, iowait, irq, softirq = (values + [0] * 7)[:7]
    steal = values[7] if len(values) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / _TICKS, iowait / _TICKS
