"""Plots `loadgen overload`'s CSV: admitted requests per second under the same steady overload,
one panel per algorithm. Usage: plot_algorithms.py CSV PNG (see scripts/plot-algorithms)."""

import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLES = {
    "fixed_window": "fixed_window: the rest of one minute's 60, then the next minute's 60 at once",
    "sliding_window": "sliding_window: spread over the minute",
    "token_bucket": "token_bucket: the burst of 60, then one a second",
}


def main(csv_path: str, png_path: str) -> None:
    admitted = defaultdict(list)
    sent = defaultdict(list)
    edges = set()
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            algorithm = row["algorithm"]
            if int(row["unix_second"]) % 60 == 0:
                edges.add(int(row["second"]))
            admitted[algorithm].append(int(row["admitted"]))
            sent[algorithm].append(int(row["admitted"]) + int(row["refused"]))
    algorithms = [a for a in TITLES if a in admitted]
    figure, axes = plt.subplots(len(algorithms), 1, figsize=(10, 2.4 * len(algorithms)), sharex=True)
    for ax, algorithm in zip(axes, algorithms):
        seconds = range(len(admitted[algorithm]))
        ax.fill_between(seconds, sent[algorithm], step="post", color="#dddddd", label="sent")
        ax.step(seconds, admitted[algorithm], where="post", color="#1f77b4", label="admitted")
        ax.axhline(1, color="#d62728", linewidth=0.8, linestyle="--", label="the limit's rate (60/min)")
        ax.set_title(TITLES[algorithm], fontsize=10, loc="left")
        ax.set_ylabel("requests/s")
        ax.set_ylim(0, max(sent[algorithm]) + 1)
        for edge in sorted(edges):
            ax.axvline(edge, color="#888888", linewidth=0.5)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since the start (grey lines: where a minute turns, as fixed windows count it)")
    figure.suptitle("One API key at 3 requests/s (3x its 60/minute default bucket), one ratelimitd per algorithm")
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
