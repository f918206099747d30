"""Pictures of the numbers in `evaluation.analysis`: PNG files and (H, W, 4) images for TensorBoard.

matplotlib is imported inside the functions, with the Agg canvas attached to each Figure
directly (no pyplot, no global state, no display), so importing simlap stays cheap and
plotting works headless and from threads.
"""
from __future__ import annotations
from collections.abc import Mapping, Sequence
import io
import os
from typing import Any

import numpy as np

from simlap.runtime import storage

ArrayLike = Any


def _figure(width: float = 6.0, height: float = 4.0):
  # matplotlib only when a picture is drawn: importing simlap stays cheap.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def save_png(fig, path: str) -> str:
  """Writes `fig` as a PNG to `path` (parent folders created) and returns the path."""
  if storage.is_remote(path):  # gs:// workdirs: matplotlib writes local files only
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    storage.write_bytes(path, buffer.getvalue())
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png")
  return path


def figure_to_array(fig) -> np.ndarray:
  """Renders `fig` to an (H, W, 4) uint8 RGBA array (e.g. for clu's `write_images`)."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba(), np.uint8).copy()


def read_png(path: str) -> np.ndarray:
  """A PNG written by `save_png` as an (H, W, 4) uint8 RGBA array."""
  from matplotlib import image  # noqa: PLC0415
  img = image.imread(path)  # float in [0, 1] for PNGs
  if img.shape[-1] == 3:
    img = np.concatenate([img, np.ones(img.shape[:-1] + (1,), img.dtype)], -1)
  return np.round(np.asarray(img) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def gate_histogram_figure(gates: ArrayLike, *, bins: int = 50, title: str = "gate values"):
  """Histogram of all gate values (..., D) over [0, 1]: binary gates pile up at 0 and 1."""
  g = np.ravel(np.asarray(gates, np.float64))
  fig = _figure()
  ax = fig.add_subplot()
  ax.hist(g, bins=bins, range=(0.0, 1.0), color="tab:blue")
  ax.set(xlabel="g", ylabel="count", title=f"{title} (frac in [0.1, 0.9]: "
         f"{np.mean((g >= 0.1) & (g <= 0.9)):.2f})")
  fig.tight_layout()
  return fig


def similarity_heatmap_figure(similarity: ArrayLike, class_names: Sequence[str] | None = None,
                              *, title: str = "similarity", vmin: float | None = -1.0,
                              vmax: float | None = 1.0):
  """(C, C) heatmap; class names on both axes when C is small enough to read them."""
  s = np.asarray(similarity, np.float64)
  c = s.shape[0]
  size = float(np.clip(0.45 * c + 2.0, 5.0, 14.0))
  fig = _figure(size + 1.0, size)
  ax = fig.add_subplot()
  im = ax.imshow(s, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  if class_names is not None and c <= 50:
    ax.set_xticks(range(c), labels=list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(c), labels=list(class_names), fontsize=8)
    if c <= 12:  # few classes: print the values so the figure is readable without a legend
      for i in range(c):
        for j in range(c):
          ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
  ax.set_title(title)
  fig.tight_layout()
  return fig


def spectrum_figure(spectra: Mapping[str, ArrayLike],
                    effective_ranks: Mapping[str, float] | None = None):
  """Log singular-value spectra, each normalised by its largest value so widths compare."""
  fig = _figure()
  ax = fig.add_subplot()
  for name, s in spectra.items():
    s = np.asarray(s, np.float64)
    s = s / s[0] if s.size and s[0] > 0 else s
    label = name
    if effective_ranks and effective_ranks.get(name) is not None:
      label += f" (eff. rank {effective_ranks[name]:.1f})"
    # A floor keeps exact zeros (collapsed directions) visible on the log axis.
    ax.semilogy(np.arange(1, s.size + 1), np.maximum(s, 1e-12), label=label)
  ax.set(xlabel="index", ylabel="σ / σ_max", title="covariance spectrum")
  ax.legend()
  fig.tight_layout()
  return fig


def intra_inter_figure(stats: Mapping[str, Any], *, title: str = ""):
  """Overlaid intra/inter-class cosine histograms from `geometry.intra_inter_similarity`."""
  edges = np.asarray(stats["hist_edges"])
  centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
  fig = _figure()
  ax = fig.add_subplot()
  for key, colour in (("intra_hist", "tab:green"), ("inter_hist", "tab:red")):
    h = np.asarray(stats[key], np.float64)
    ax.bar(centres, h / max(h.sum(), 1), width=width, alpha=0.5, color=colour,
           label=key.split("_")[0] + "-class")
  auroc = stats.get("auroc")
  ax.set(xlabel="cosine similarity", ylabel="fraction of pairs",
         title=f"{title} AUROC {auroc:.3f}" if auroc is not None else title)
  ax.legend()
  fig.tight_layout()
  return fig


def budget_curves_figure(per_step: Sequence[Mapping[str, Any]],
                         panels: Sequence[tuple[str, str, float]]):
  """Metrics against epochs, one line per method: the mean over seeds with a ± std band.

  Args:
    per_step: comparison.json's "per_step" list, [{"epochs", "methods": {method: {"mean_std":
      {key: [mean, std]}}}}] in training order.
    panels: (title, summary key, scale) per panel, e.g. ("kNN@20 (%)", "knn_20", 100.0).
  """
  methods = list(dict.fromkeys(m for e in per_step for m in e["methods"]))
  cols = min(len(panels), 2)
  rows = -(-len(panels) // cols)
  fig = _figure(width=5.0 * cols, height=3.6 * rows)
  for i, (title, key, scale) in enumerate(panels):
    ax = fig.add_subplot(rows, cols, i + 1)
    for method in methods:
      points = [(e["epochs"], *e["methods"][method]["mean_std"][key]) for e in per_step
                if method in e["methods"]]
      points = [(x, mean * scale, (std or 0.0) * scale) for x, mean, std in points
                if mean is not None]
      if not points:  # e.g. gate numbers of a method without a gate
        continue
      x, mean, std = (np.asarray(v, np.float64) for v in zip(*points))
      (line,) = ax.plot(x, mean, marker="o", label=method)
      ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="epochs", title=title)
    ax.set_xticks(sorted({e["epochs"] for e in per_step}))  # the evaluated points
    ax.grid(alpha=0.3)
  handles, labels = fig.axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6) or 1, fontsize=8)
  fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend under the panels
  return fig


def image_grid_figure(rows: Mapping[str, Sequence[np.ndarray | None]],
                      column_titles: Sequence[str], *, cell_px: int = 100,
                      label_px: int = 140, title_px: int = 30):
  """uint8 images (H, W, C), C in {1, 3}, one row per key (its label on the left), one column
  per title; None leaves a cell empty. cell_px pixels a cell at 100 dpi."""
  width = label_px + len(column_titles) * cell_px
  height = title_px + len(rows) * cell_px
  fig = _figure(width / 100, height / 100)
  for r, (name, images) in enumerate(rows.items()):
    for c, x in enumerate(images):
      ax = fig.add_axes(((label_px + c * cell_px) / width,
                         1 - (title_px + (r + 1) * cell_px) / height,
                         cell_px / width, cell_px / height))
      ax.set_xticks([])
      ax.set_yticks([])
      if x is not None:
        gray = x.shape[-1] == 1
        ax.imshow(x[..., 0] if gray else x, cmap="gray" if gray else None, vmin=0, vmax=255,
                  interpolation="nearest")
      if c == 0:
        ax.set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=9)
      if r == 0:
        ax.set_title(column_titles[c], fontsize=9)
  return fig


# ----------------------------------------------------------------------------------------------
# One call per PNG
# ----------------------------------------------------------------------------------------------
def plot_gate_histogram(gates: ArrayLike, path: str, **kw) -> str:
  return save_png(gate_histogram_figure(gates, **kw), path)


def plot_similarity_heatmap(similarity: ArrayLike, path: str,
                            class_names: Sequence[str] | None = None, **kw) -> str:
  return save_png(similarity_heatmap_figure(similarity, class_names, **kw), path)


def plot_spectrum(spectra: Mapping[str, ArrayLike], path: str,
                  effective_ranks: Mapping[str, float] | None = None) -> str:
  return save_png(spectrum_figure(spectra, effective_ranks), path)


def plot_intra_inter(stats: Mapping[str, Any], path: str, **kw) -> str:
  return save_png(intra_inter_figure(stats, **kw), path)


def plot_budget_curves(per_step: Sequence[Mapping[str, Any]], path: str,
                       panels: Sequence[tuple[str, str, float]]) -> str:
  return save_png(budget_curves_figure(per_step, panels), path)


def plot_image_grid(rows: Mapping[str, Sequence[np.ndarray | None]],
                    column_titles: Sequence[str], path: str, **kw) -> str:
  return save_png(image_grid_figure(rows, column_titles, **kw), path)


def write_analysis_plots(out_dir: str, results: Mapping[str, Any], *,
                         spectra: Mapping[str, ArrayLike],
                         class_mean_similarities: Mapping[str, ArrayLike],
                         class_gates: ArrayLike | None = None,
                         gate_similarity: ArrayLike | None = None,
                         pair_sizes: ArrayLike | None = None,
                         class_names: Sequence[str] | None = None) -> list[str]:
  """The PNG set of `analysis.analyze`; returns the file names written into out_dir."""
  written = []

  def save(fig, name):
    save_png(fig, os.path.join(out_dir, name))
    written.append(name)

  ranks = {n: r["effective_rank"] for n, r in results["spectrum"].items()}
  save(spectrum_figure(spectra, ranks), "spectrum.png")
  for name, stats in results["similarity"].items():
    save(intra_inter_figure(stats, title=name), f"intra_inter_{name}.png")
  for name, s in class_mean_similarities.items():
    save(similarity_heatmap_figure(s, class_names, title=f"class-mean cosine ({name})"),
         f"class_mean_similarity_{name}.png")
  if class_gates is not None:
    save(gate_histogram_figure(class_gates), "gate_histogram.png")
  if gate_similarity is not None:
    save(similarity_heatmap_figure(gate_similarity, class_names, title="class-gate cosine"),
         "gate_similarity.png")
  if pair_sizes is not None:
    save(similarity_heatmap_figure(pair_sizes, class_names, title="pair subspace size (Σ g)",
                                   vmin=None, vmax=None), "pair_sizes.png")
  return written
