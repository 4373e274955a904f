"""The report's figures (matplotlib, Agg backend): each saved as a PNG, with axis units and a legend."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

DPI = 110


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only: no display needed
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def _save(fig, path: Path) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  _pyplot().close(fig)


def round_curves(path: Path, curves: Mapping[str, Mapping[str, Sequence[float]]], ylabel: str,
                 title: str) -> None:
  """One line per policy over rounds with its 95% interval as a band.

  curves: policy -> {"mean", "low", "high"}, one value per round.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(9.0, 4.2))
  for name, curve in curves.items():
    rounds = np.arange(1, len(curve["mean"]) + 1)
    (line,) = ax.plot(rounds, curve["mean"], marker="o", markersize=3, label=name)
    ax.fill_between(rounds, curve["low"], curve["high"], color=line.get_color(), alpha=0.18,
                    linewidth=0)
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel("round (one slate per user per round)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(title="policy (band: 95% CI)", fontsize=8, loc="upper left",
            bbox_to_anchor=(1.01, 1.0))
  _save(fig, path)


def policy_bars(path: Path, intervals: Mapping[str, Mapping[str, float]], ylabel: str,
                title: str) -> None:
  """One bar per policy (its mean) with the 95% interval as an error bar."""
  plt = _pyplot()
  names = list(intervals)
  means = np.array([intervals[n]["mean"] for n in names])
  errors = np.array([[means[i] - intervals[n]["low"], intervals[n]["high"] - means[i]]
                     for i, n in enumerate(names)]).T  # [2, P]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  fig, ax = plt.subplots(figsize=(9.0, 4.2))
  for i, name in enumerate(names):
    ax.bar(i, means[i], yerr=errors[:, i:i + 1], capsize=4, color=colors[i % len(colors)],
           label=name)
  ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
  ax.set_xlabel("exploration policy")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(title="policy (bar: 95% CI)", fontsize=8, loc="upper left",
            bbox_to_anchor=(1.01, 1.0))
  _save(fig, path)


def transition_heatmap(path: Path, counts: np.ndarray, title: str) -> None:
  """[M, M] counts (last history cluster -> next novel cluster) on a log colour scale."""
  plt = _pyplot()
  from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  counts = np.asarray(counts, np.float64)
  fig, ax = plt.subplots(figsize=(6.8, 5.6))
  shown = np.ma.masked_equal(counts, 0)
  image = ax.imshow(shown, cmap="viridis", interpolation="nearest", origin="lower",
                    norm=mcolors.LogNorm(vmin=1, vmax=max(counts.max(), 2)))
  fig.colorbar(image, ax=ax, label="novel transitions (count, log scale)")
  ax.set_xlabel("next novel cluster (cluster id)")
  ax.set_ylabel("last cluster of the history (cluster id)")
  ax.set_title(title)
  ax.legend(handles=[patches.Patch(facecolor="white", edgecolor="#888", label="no transition"),
                     patches.Patch(facecolor=plt.get_cmap("viridis")(0.8),
                                   label=f"{int(counts.sum())} transitions")],
            loc="upper left", fontsize=8)
  _save(fig, path)


def grouped_bars(path: Path, values: Mapping[str, Mapping[str, float | None]], ylabel: str,
                 xlabel: str, title: str) -> None:
  """Bars grouped by x (the inner keys), one colour per series (the outer keys); None skipped."""
  plt = _pyplot()
  series = list(values)
  groups = list(dict.fromkeys(g for s in series for g in values[s]))
  width = 0.8 / max(len(series), 1)
  fig, ax = plt.subplots(figsize=(9.0, 4.2))
  for i, name in enumerate(series):
    xs = [j + (i - (len(series) - 1) / 2) * width for j, g in enumerate(groups)
          if values[name].get(g) is not None]
    ys = [values[name][g] for g in groups if values[name].get(g) is not None]
    ax.bar(xs, ys, width=width, label=name)
  ax.set_xticks(range(len(groups)), groups)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(title="planner", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  _save(fig, path)
