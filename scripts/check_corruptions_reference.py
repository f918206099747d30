"""Compares simlap.data.corruptions byte by byte with the authors' ImageNet-C / CIFAR-10-C code.

Runs the reference functions from a checkout of github.com/hendrycks/robustness with their own
libraries (OpenCV, scikit-image, Wand + ImageMagick), feeding both sides the same random numbers:
the reference draws from NumPy's global RandomState, simlap's functions get an adapter that draws
from it in the same order. Each side runs at the reference's own size: the CIFAR-10-C functions
(make_cifar_c.py) on 32-px images, the ImageNet-C ones (imagenet_c/corruptions.py) on 224-px
images. Images: real Fashion-MNIST test images (gray, as RGB; padded to 32 px or scaled x8 to
224 px) and a synthetic RGB scene. Only the library-version drift is patched in the reference
text (scikit-image's `multichannel`, NumPy 2's `np.float_` / `np.fromstring`, scipy's
`ndimage.interpolation`, pkg_resources) and impulse noise is handed a seeded Generator, since
scikit-image draws it from its own. Outside the repository's environment (simlap never depends on
these libraries):

    apt-get install imagemagick            # Debian 12: ImageMagick 6.9.11-60 Q16
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy scipy pillow scikit-image \
        opencv-python-headless Wand
    git clone https://github.com/hendrycks/robustness /tmp/robustness
    PYTHONPATH=$PWD /tmp/ref/bin/python scripts/check_corruptions_reference.py \
        --reference /tmp/robustness [--fashion_mnist /usr/share/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import gzip
import os

import numpy as np
from PIL import Image

from simlap.data import corruption_ops
from simlap.data import corruptions as C

_DRIFT = (("multichannel=True", "channel_axis=-1"), ("np.float_", "np.float64"),
          ("np.fromstring(", "np.frombuffer("),
          ("scipy.ndimage.interpolation import", "scipy.ndimage import"),
          ("from pkg_resources import resource_filename", "resource_filename = None"),
          ("mode='s&p', amount=c)", "mode='s&p', amount=c, rng=_IMPULSE_RNG)"))
_FILES = {C.CIFAR: ("ImageNet-C/create_c/make_cifar_c.py", "# /////////////// End Distortions"),
          C.IMAGENET: ("ImageNet-C/imagenet_c/imagenet_c/corruptions.py",
                       "# /////////////// End Corruptions")}
_SIZE = {C.CIFAR: 32, C.IMAGENET: 224}


def load_reference(checkout: str, table: str) -> dict:
  """The reference module's functions (its text up to the end of the corruptions), patched
  only for library drift, as a namespace."""
  path, end = _FILES[table]
  with open(os.path.join(checkout, path)) as f:
    text = f.read()
  start = text.index("import skimage as sk")  # make_cifar_c.py imports torch before it
  text = "import numpy as np\nfrom PIL import Image\n" + text[start:text.index(end)]
  for old, new in _DRIFT:
    text = text.replace(old, new)
  namespace: dict = {}
  exec(compile(text, path, "exec"), namespace)  # noqa: S102 (the reference, run as written)
  return namespace


class GlobalRandomState:
  """A Generator-like view of NumPy's global RandomState, drawing what the reference draws."""

  def normal(self, size=None, loc=0.0, scale=1.0):
    return np.random.normal(loc, scale, size)

  def uniform(self, low, high, size=None):
    return np.random.uniform(low, high, size)

  def poisson(self, lam):
    return np.random.poisson(lam)

  def integers(self, low, high, size):
    """glass blur: the reference draws one (dx, dy) pair per pixel visit, in loop order."""
    out = np.empty(size, np.int64)
    pairs = out.reshape(-1, 2)
    for k in range(len(pairs)):
      pairs[k] = np.random.randint(low, high, size=(2,))
    return out


def scene(size: int) -> np.ndarray:
  r, c = np.mgrid[0:size, 0:size] / size
  img = np.stack([0.5 + 0.5 * np.sin(6 * r + 2 * c), 0.5 + 0.4 * np.cos(5 * c - 3 * r * c),
                  r * c], -1)
  img[(r - 0.5) ** 2 + (c - 0.4) ** 2 < 0.05] = (0.9, 0.2, 0.1)
  return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def fashion_mnist(directory: str, n: int) -> np.ndarray:
  with gzip.open(os.path.join(directory, "t10k-images-idx3-ubyte.gz")) as f:
    data = f.read()
  return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)[:n]


def simlap_side(name: str, x: np.ndarray, severity: int, seed: int) -> np.ndarray:
  """simlap's corruption of x with the reference's random numbers."""
  if name == "impulse_noise":
    rng = np.random.default_rng(seed)
  else:
    np.random.seed(seed)
    rng = GlobalRandomState()
  c = C.constants(name, severity, *x.shape[:2])
  if name == "glass_blur":
    return corruption_ops.glass_blur(x[None], c, [rng])[0]
  return corruption_ops.IMPLEMENTATIONS[name](x, c, rng)


def reference_side(ref: dict, name: str, x: np.ndarray, severity: int, seed: int) -> np.ndarray:
  np.random.seed(seed)
  ref["_IMPULSE_RNG"] = np.random.default_rng(seed)
  return np.uint8(np.asarray(ref[name](Image.fromarray(x), severity)))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--reference", required=True, help="checkout of hendrycks/robustness")
  parser.add_argument("--fashion_mnist", default="/usr/share/datasets/fashion-mnist")
  parser.add_argument("--images", type=int, default=3, help="Fashion-MNIST images per table")
  parser.add_argument("--corruptions", default=",".join(C.CORRUPTIONS), help="comma-separated")
  args = parser.parse_args()
  gray = fashion_mnist(args.fashion_mnist, args.images)
  print("| table | corruption | images x severities | max abs diff | pixels that differ |")
  print("|---|---|---|---|---|")
  for table, size in _SIZE.items():
    ref = load_reference(args.reference, table)
    fm = (np.pad(gray, ((0, 0), (2, 2), (2, 2))) if size == 32
          else gray.repeat(8, axis=1).repeat(8, axis=2))
    images = [np.repeat(g[..., None], 3, -1) for g in fm] + [scene(size)]
    for name in args.corruptions.split(","):
      worst, differ, total = 0, 0, 0
      for severity in C.SEVERITIES:
        for k, x in enumerate(images):
          seed = 1000 * severity + k
          a = simlap_side(name, x, severity, seed).astype(np.int64)
          b = reference_side(ref, name, x, severity, seed).astype(np.int64)
          d = np.abs(a - b)
          worst, differ, total = max(worst, int(d.max())), differ + int((d > 0).sum()), \
              total + d.size
      print(f"| {table} ({size} px) | {name} | {len(images)} x 5 | {worst} | "
            f"{differ / total:.4%} |", flush=True)


if __name__ == "__main__":
  main()
