#!/usr/bin/env python3
"""Condenses `heaptrack_print --print-peaks 1 --peak-limit 1 --sub-peak-limit N` (read on stdin)
into one entry per allocation site: the memory it held at the heap's peak, the number of calls,
and its first frames outside the allocator, the standard library and the async plumbing."""
import re
import sys

SKIP = ("library/alloc", "library/core", "library/std", "/rustc/", "hashbrown", "smallvec",
        "bytes-", "futures-", "tokio-1", "tracing-", "src/runtime/task/")
HEAD = re.compile(r"^(\d+(?:\.\d+)?[KMG]?) (?:peak memory )?consumed over (\d+) calls from:?$")
blocks, current = [], None
for line in sys.stdin:
    text = line.strip()
    m = HEAD.match(text)
    if m:
        current = [m.group(1), m.group(2), []]
        blocks.append(current)
    elif current is not None and text.startswith("at "):
        current[2].append(re.sub(r"^.*/index\.crates\.io-[0-9a-f]+/", "", text[3:]))
for size, calls, frames in blocks[1:]:  # the first is the allocator itself: the whole peak
    where = [f for f in frames if not any(s in f for s in SKIP)][:3]
    print(f"{size:>8} in {calls:>7} calls  " + " <- ".join(where))
print(f"peak of the whole heap: {blocks[0][0]} over {blocks[0][1]} calls" if blocks else "no heap data")
