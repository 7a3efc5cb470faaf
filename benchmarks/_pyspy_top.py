"""Reads py-spy's raw (collapsed-stack) output and prints where the samples went, by function.

    python benchmarks/_pyspy_top.py profile_gil.txt [--within DaliSampler] [--top 40]

Inclusive counts (a function and everything it called) and self counts (the frame on top). With
``py-spy record --gil`` only the thread holding the GIL is sampled: what the Python side of a run is
made of, and whether one interpreter is its limit.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def tally(path: Path, within: str | None = None) -> tuple[int, Counter, Counter]:
    """(samples, inclusive counts, self counts) per function, over stacks that pass through ``within``."""
    total, inclusive, own = 0, Counter(), Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        if within and not any(within in f for f in frames):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, inclusive, own


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("--within", default=None, help="only stacks through a function whose name holds this")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args(argv)
    total, inclusive, own = tally(args.raw, args.within)
    print(f"{args.raw.name}: {total} samples" + (f" through {args.within!r}" if args.within else ""))
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"--- {title}")
        for frame, n in counts.most_common(args.top):
            print(f"{n:7d} {100 * n / max(total, 1):5.1f}%  {frame[:140]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
