"""Writes tests/golden/motion_blur_imagemagick.npz: ImageMagick's own motion blur, for
tests/test_corruptions.py's check of simlap.data.corruptions.imagemagick_motion_blur.

Needs ImageMagick 6's `convert` (Debian 12: `apt-get install imagemagick`, 6.9.11-60 Q16),
NumPy and Pillow; simlap and its tests never run this file.

    python tests/golden/make_motion_blur_golden.py [--convert /usr/bin/convert]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

import numpy as np
from PIL import Image

# (radius, sigma, angle in degrees): the CIFAR-10-C and ImageNet-C extremes, odd angles, and
# kernels longer than the images are wide.
CASES = ((6, 1.0, 0.0), (8, 2.0, 37.5), (9, 2.5, -44.0), (14, 12.0, -100.0), (20, 15.0, 12.0))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--convert", default="/usr/bin/convert")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                    "motion_blur_imagemagick.npz"))
  args = parser.parse_args()
  rng = np.random.default_rng(2019)
  images = {"gray": rng.integers(0, 256, (24, 20, 1), dtype=np.uint8),
            "rgb": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)}
  version = subprocess.run([args.convert, "-version"], check=True, capture_output=True,
                           text=True).stdout.splitlines()[0]
  out = dict(images, cases=np.array(CASES), version=np.array(version))
  with tempfile.TemporaryDirectory() as tmp:
    for name, x in images.items():
      src = os.path.join(tmp, name + ".png")
      Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(src)
      for k, (radius, sigma, angle) in enumerate(CASES):
        dst = os.path.join(tmp, f"{name}{k}.png")
        subprocess.run([args.convert, src, "-motion-blur", f"{radius}x{sigma}+{angle}", dst],
                       check=True)
        with Image.open(dst) as im:
          y = np.asarray(im)
        out[f"{name}_{k}"] = (y[..., None] if y.ndim == 2 else y)[..., :x.shape[-1]]
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out} with {version}")


if __name__ == "__main__":
  main()
