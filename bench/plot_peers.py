"""Draws scripts/bench --peers' CSV: each target's requests/s as a ratio to the direct call at
each concurrency, and its p99 at fixed request rates. Usage: plot_peers.py CSV PNG"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
targets = list(dict.fromkeys(r["target"] for r in rows))
series = defaultdict(dict)
for r in rows:
    series[(r["target"], r["metric"])][int(r["concurrency_or_rate"])] = float(r["value"])

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
concurrencies = sorted({c for (t, m), v in series.items() if m == "rps_vs_direct" for c in v})
width = 0.8 / max(len(targets), 1)
for i, target in enumerate(targets):
    values = series.get((target, "rps_vs_direct"), {})
    left.bar([x + i * width for x in range(len(concurrencies))],
             [values.get(c, 0) for c in concurrencies], width, label=target)
left.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(concurrencies))])
left.set_xticklabels([f"{c} conn." for c in concurrencies])
left.set_ylabel("requests/s, ratio to the direct call")
left.set_title("Closed loop (wrk)")
left.legend(fontsize=8)

rates = sorted({r for (t, m), v in series.items() if m == "fixed_rate_p99_us" for r in v})
for i, target in enumerate(targets):
    values = series.get((target, "fixed_rate_p99_us"), {})
    low = series.get((target, "fixed_rate_p99_min_us"), values)
    high = series.get((target, "fixed_rate_p99_max_us"), values)
    p99 = [values.get(r, 0) / 1000 for r in rates]
    # The bar is the median run's p99, the whisker the lowest and highest of the runs.
    spread = [[p - low.get(r, 0) / 1000 for p, r in zip(p99, rates)],
              [high.get(r, 0) / 1000 - p for p, r in zip(p99, rates)]]
    right.bar([x + i * width for x in range(len(rates))], p99, width, label=target,
              yerr=spread, capsize=2)
right.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(rates))])
right.set_xticklabels([f"{r}/s" for r in rates])
right.set_yscale("log")
right.set_ylabel("p99 latency, ms (log)")
right.set_title("Open loop at fixed rates (median run; whiskers: range)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
print(f"drew {sys.argv[2]}")
