"""ImageNet-C / CIFAR-10-C common corruptions (Hendrycks & Dietterich, ICLR 2019) in NumPy.

A re-implementation of github.com/hendrycks/robustness with NumPy, scipy.ndimage and Pillow: 14
of the 15 corruptions (`CORRUPTIONS`; frost, `MISSING`, needs the authors' photographs); sources
and departures: docs/method.md, "Corruptions". Invariants: images are uint8 (H, W, C), C in
{1, 3}, the output has the input's shape and dtype, severity 0 is the identity, and the random
stream is seeded by (seed, corruption, severity, image index) (`image_rng`), so a seed gives
fixed bytes for any batching. Constants: `corruption_tables`; pixel operations: `corruption_ops`.
"""
from __future__ import annotations
import zlib
from collections.abc import Sequence

import numpy as np

from simlap.data import corruption_ops as ops
from simlap.data.corruption_ops import imagemagick_motion_blur, motion_blur_kernel
from simlap.data.corruption_tables import (CIFAR, CORRUPTIONS, IMAGENET, MISSING, SEVERITIES,
                                           SMALL_IMAGE_MAX_SIDE, check_name_severity, constants,
                                           table_for)

__all__ = ["CIFAR", "CORRUPTIONS", "IMAGENET", "MISSING", "SEVERITIES", "SMALL_IMAGE_MAX_SIDE",
           "constants", "corrupt", "corrupt_batch", "image_rng", "imagemagick_motion_blur",
           "motion_blur_kernel", "save_severity_grid", "table_for"]
GRID_LEFT_PX, GRID_TOP_PX = 140, 30  # save_severity_grid's margins for names and severities


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
  """The Generator of one (seed, corruption, severity, image index): fixed bytes per seed."""
  return np.random.default_rng([seed, zlib.crc32(name.encode()), severity, index])


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0,
            index: int = 0) -> np.ndarray:
  """One image uint8 (H, W, C), C in {1, 3} -> the corrupted uint8 (H, W, C).

  `index` is the image's position in its dataset; it and `seed` select the random stream.
  """
  _check_image(image, "image", 3)
  check_name_severity(name, severity)
  _check_seed(seed, index)
  if severity == 0:
    return image.copy()
  if name == "glass_blur":
    return ops.glass_blur(image[None], constants(name, severity, *image.shape[:2]),
                          [image_rng(seed, name, severity, index)])[0]
  return ops.IMPLEMENTATIONS[name](image, constants(name, severity, *image.shape[:2]),
                                   image_rng(seed, name, severity, index))


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0,
                  start_index: int = 0) -> np.ndarray:
  """Images uint8 (N, H, W, C) -> corrupted uint8 (N, H, W, C); image i uses index
  start_index + i, so any split of a dataset into batches gives the same bytes."""
  _check_image(images, "images", 4)
  check_name_severity(name, severity)
  _check_seed(seed, start_index)
  if severity == 0 or len(images) == 0:
    return images.copy()
  if name == "glass_blur":  # its sequential pixel loop runs once for the whole batch
    rngs = [image_rng(seed, name, severity, start_index + i) for i in range(len(images))]
    return ops.glass_blur(images, constants(name, severity, *images.shape[1:3]), rngs)
  return np.stack([corrupt(x, name, severity, seed, start_index + i)
                   for i, x in enumerate(images)])


def save_severity_grid(image: np.ndarray, path: str, seed: int = 0,
                       names: Sequence[str] = CORRUPTIONS, index: int = 0,
                       cell_px: int = 100, dpi: int = 100) -> tuple[int, int]:
  """Writes a PNG of `image` uint8 (H, W, C) under each corruption (rows) at severities 0-5
  (columns). Returns its (height, width) in pixels: cell_px per cell, plus GRID_LEFT_PX for the
  names and GRID_TOP_PX for the severities."""
  # Only the report needs matplotlib; a Figure on its own Agg canvas leaves pyplot's state alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415
  _check_image(image, "image", 3)
  for name in names:
    check_name_severity(name, 0)
  left, top = GRID_LEFT_PX, GRID_TOP_PX
  cols, rows = 1 + len(SEVERITIES), len(names)
  width, height = left + cols * cell_px, top + rows * cell_px
  fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
  FigureCanvasAgg(fig)
  gray = image.shape[-1] == 1
  for r, name in enumerate(names):
    for s in range(cols):
      x = corrupt(image, name, s, seed, index)
      ax = fig.add_axes(((left + s * cell_px) / width, 1 - (top + (r + 1) * cell_px) / height,
                         cell_px / width, cell_px / height))
      ax.imshow(x[..., 0] if gray else x, cmap="gray" if gray else None, vmin=0, vmax=255,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if s == 0:
        ax.set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=9)
      if r == 0:
        ax.set_title(f"severity {s}" if cell_px >= 90 else str(s), fontsize=9)
  fig.savefig(path, dpi=dpi, format="png")
  return height, width


# ---- checks ----

def _check_image(x: np.ndarray, what: str, ndim: int) -> None:
  if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != ndim \
      or x.shape[-1] not in (1, 3):
    shape = "(H, W, C)" if ndim == 3 else "(N, H, W, C)"
    got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
    raise ValueError(f"{what} must be a uint8 array {shape} with C in {{1, 3}}, got {got}")
  if x.shape[-3] < 8 or x.shape[-2] < 8:
    raise ValueError(f"{what} must be at least 8 x 8 pixels, got {x.shape[-3]} x {x.shape[-2]}")


def _check_seed(seed: int, index: int) -> None:
  if seed < 0 or index < 0:
    raise ValueError(f"seed and image index must be >= 0, got {seed} and {index}")
