#!/usr/bin/env python3
"""Draws docs/performance-fanout.svg from `vwed-bench fanout --sweep` JSON lines.

Usage: bench/plot.py results.jsonl docs/performance-fanout.svg

Each input line is one sweep's result (the line `vwed-bench` prints on stdout): its `target`
(hub or nats-server), `clients`, and the best passing step's `delivered_per_sec` and `p99_ms`.
Needs matplotlib (`pip install matplotlib`).
"""

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, destination: str) -> None:
    series = defaultdict(list)
    with open(source, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            result = json.loads(line)
            if result.get("scenario") != "fanout" or result.get("max_rate") is None:
                continue
            series[result["target"]].append(
                (result["clients"], result["delivered_per_sec"], result["p99_ms"])
            )
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target, points in sorted(series.items()):
        points.sort()
        clients = [p[0] for p in points]
        throughput.plot(clients, [p[1] for p in points], marker="o", label=target)
        latency.plot(clients, [p[2] for p in points], marker="o", label=target)
    throughput.set_title("Messages delivered per second\nat the highest rate with p99 ≤ 100 ms, nothing lost")
    throughput.set_xlabel("subscribers on one key")
    throughput.set_ylabel("messages / s")
    latency.set_title("p99 latency at that rate")
    latency.set_xlabel("subscribers on one key")
    latency.set_ylabel("ms")
    for axes in (throughput, latency):
        axes.grid(True, alpha=0.3)
        axes.legend()
        axes.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(destination)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
