"""The constants of the ImageNet-C and CIFAR-10-C corruptions, per severity (1-5).

Transcribed from the authors' code, github.com/hendrycks/robustness (Hendrycks & Dietterich,
ICLR 2019): `ImageNet-C/imagenet_c/imagenet_c/corruptions.py` (IMAGENET, made for 224-px images)
and `ImageNet-C/create_c/make_cifar_c.py` (CIFAR, made for 32-px images). `table_for` picks the
CIFAR table for images whose longer side is <= SMALL_IMAGE_MAX_SIDE, the ImageNet one otherwise.
"""
from __future__ import annotations
import numbers

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
MISSING = {"frost": "blends crops of the authors' six frost photographs (frost1-6), which ship "
                    "only with the reference code; not reproducible without them"}
SEVERITIES = (1, 2, 3, 4, 5)
SMALL_IMAGE_MAX_SIDE = 64
CIFAR, IMAGENET = "cifar10_c", "imagenet_c"

# Constants per corruption: {table: five severity entries}, in the reference's units.
TABLES = {
    "gaussian_noise": {CIFAR: (0.04, 0.06, 0.08, 0.09, 0.10),
                       IMAGENET: (0.08, 0.12, 0.18, 0.26, 0.38)},           # noise std
    "shot_noise": {CIFAR: (500, 250, 100, 75, 50), IMAGENET: (60, 25, 12, 5, 3)},  # photons
    "impulse_noise": {CIFAR: (0.01, 0.02, 0.03, 0.05, 0.07),
                      IMAGENET: (0.03, 0.06, 0.09, 0.17, 0.27)},            # flipped fraction
    # (disk radius, anti-alias sigma)
    "defocus_blur": {CIFAR: ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
                     IMAGENET: ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))},
    # (sigma, max pixel displacement, iterations)
    "glass_blur": {CIFAR: ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
                   IMAGENET: ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))},
    # ImageMagick (radius, sigma)
    "motion_blur": {CIFAR: ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
                    IMAGENET: ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))},
    # np.arange(start, stop, step) of zoom factors; the same float arange as the reference
    "zoom_blur": {CIFAR: ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01),
                          (1, 1.26, 0.01)),
                  IMAGENET: ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02),
                             (1, 1.31, 0.03))},
    # (flake mean, flake std, flake zoom, threshold, blur radius, blur sigma, image weight)
    "snow": {CIFAR: ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                     (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                     (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
             IMAGENET: ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                        (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))},
    # (fog strength, fractal wibble decay)
    "fog": {CIFAR: ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
            IMAGENET: ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))},
    "brightness": {CIFAR: (0.05, 0.1, 0.15, 0.2, 0.3),
                   IMAGENET: (0.1, 0.2, 0.3, 0.4, 0.5)},                    # added to HSV value
    "contrast": {CIFAR: (0.75, 0.5, 0.4, 0.3, 0.15),
                 IMAGENET: (0.4, 0.3, 0.2, 0.1, 0.05)},                     # kept fraction
    # (alpha, sigma, affine jitter) as fractions of the image scale (corruption_ops, elastic)
    "elastic_transform": {CIFAR: ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                  (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
                          IMAGENET: ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02),
                                     (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))},
    "pixelate": {CIFAR: (0.95, 0.9, 0.85, 0.75, 0.65),
                 IMAGENET: (0.6, 0.5, 0.4, 0.3, 0.25)},                     # kept size fraction
    "jpeg_compression": {CIFAR: (80, 65, 58, 50, 40), IMAGENET: (25, 18, 15, 10, 7)},  # quality
}


def table_for(height: int, width: int) -> str:
  """The constants table (`CIFAR` or `IMAGENET`) used for an image of this size."""
  return CIFAR if max(height, width) <= SMALL_IMAGE_MAX_SIDE else IMAGENET


def check_name_severity(name: str, severity: int) -> None:
  """Raises one ValueError for an unknown or missing corruption or a severity outside 0..5."""
  if name not in TABLES:
    hint = f" ({MISSING[name]})" if name in MISSING else ""
    raise ValueError(f"unknown corruption {name!r}{hint}; known: {', '.join(CORRUPTIONS)}")
  if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) \
      or not 0 <= severity <= 5:
    raise ValueError(f"severity must be an integer in 0..5, got {severity!r}")


def constants(name: str, severity: int, height: int, width: int):
  """The reference's constants of `name` at `severity` (1-5) for an image of this size."""
  check_name_severity(name, severity)
  return TABLES[name][table_for(height, width)][severity - 1]
