"""simlap.data.corruptions: identity at severity 0, severity order, seeded bytes, shapes, the
ImageMagick motion blur, the PNG grid. Real Fashion-MNIST test images (C = 1, CIFAR-10-C table)
and a synthetic RGB scene (C = 3; 32 px: CIFAR-10-C table, 224 px: ImageNet-C table)."""
from __future__ import annotations
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from simlap.data import corruptions as C
from simlap.data import fashion_mnist

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "motion_blur_imagemagick.npz")


@pytest.fixture(scope="module")
def fmnist() -> np.ndarray:
  """The first 64 Fashion-MNIST test images, uint8 (64, 28, 28, 1)."""
  source = fashion_mnist.resolve_source_dir()
  fashion_mnist.check_source_files(source)
  images, _ = fashion_mnist.read_split(source, "test")
  return images[:64, :, :, None].copy()


def scene(size: int) -> np.ndarray:
  """A smooth RGB scene with two flat shapes, uint8 (size, size, 3), the same at every size."""
  r, c = np.mgrid[0:size, 0:size] / size
  img = np.stack([0.5 + 0.5 * np.sin(6 * r + 2 * c), 0.5 + 0.4 * np.cos(5 * c - 3 * r * c),
                  r * c], -1)
  img[(r - 0.5) ** 2 + (c - 0.4) ** 2 < 0.05] = (0.9, 0.2, 0.1)
  img[(r > 0.7) & (c < 0.3)] = (0.1, 0.3, 0.8)
  return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def mean_abs_change(x: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
  """MAC (6,) at severities 0-5 of a batch (N, H, W, C), averaged over images and pixels."""
  return np.array([np.abs(C.corrupt_batch(x, name, s, seed).astype(np.int64) - x).mean()
                   for s in range(6)])


# Severity pairs (a, b) with MAC(a) < MAC(b) that the reference's constants imply. Default: each
# severity changes the image more than the one below. Exceptions (docs/method.md, "Corruptions"):
_RISING = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5))
_ORDER = {
    C.CIFAR: {
        # one shuffle pass at 1-3, two at 4-5; sigma does not grow with it (4: 0.25, 5: 0.4)
        "glass_blur": ((0, 1), (1, 4), (2, 4), (3, 4), (1, 5), (2, 5), (3, 5)),
        # the affine jitter (0.08 -> 0.03 of the side) falls faster than the elastic field grows
        "elastic_transform": ((0, 5), (5, 4), (4, 3), (3, 2), (2, 1)),
        # 3 and 4 share sigma 2; radius 8 only adds taps of weight < 0.3 %: nearly one blur
        "motion_blur": ((0, 1), (1, 2), (2, 3), (2, 4), (3, 5), (4, 5)),
    },
    C.IMAGENET: {
        # (max shift, passes) (1, 2), (2, 1), (2, 3), (3, 2), (4, 2): 1-2 shuffle less than 3-5
        "glass_blur": ((0, 1), (0, 2), (1, 3), (2, 3), (1, 4), (2, 4), (4, 5)),
        # 1-2: large smooth warps (alpha 2 x 244); 3-5: small local ones (alpha <= 0.12 x 244)
        "elastic_transform": ((0, 3), (0, 4), (3, 5), (4, 5), (5, 1), (1, 2)),
        # 3 and 4 have the same strength 2.5 (decay 1.7 vs 1.5): a tie, up to the fractal
        "fog": ((0, 1), (1, 2), (2, 3), (2, 4), (3, 5), (4, 5)),
        # 2 and 3 are different snowfalls of about the same brightness: a tie
        "snow": ((0, 1), (1, 2), (1, 3), (2, 4), (3, 4), (4, 5)),
    },
}


def assert_order(mac: np.ndarray, name: str, table: str) -> None:
  for a, b in _ORDER[table].get(name, _RISING):
    assert mac[a] < mac[b], f"{name} ({table}): MAC at severity {a} = {mac[a]:.3f} is not below " \
                            f"severity {b} = {mac[b]:.3f}; all: {np.round(mac, 2)}"


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_severity_zero_is_identity(fmnist, name):
  for x in (fmnist[:4], scene(32)[None], np.ascontiguousarray(scene(80)[None, :, :60])):
    y = C.corrupt_batch(x, name, 0, seed=3)
    np.testing.assert_array_equal(y, x)
    assert y is not x


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_severity_order_cifar_table_gray_and_rgb(fmnist, name):
  assert C.table_for(28, 28) == C.table_for(32, 32) == C.CIFAR
  assert_order(mean_abs_change(fmnist, name), name, C.CIFAR)
  assert_order(mean_abs_change(np.repeat(scene(32)[None], 8, 0), name), name, C.CIFAR)


RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
          "fog", "elastic_transform")
# (side, images) for the ImageNet-C table: 224 px, the reference's size, one image where nothing
# is random; 96 px where the pixel loop (glass) or the per-image spread (elastic) needs it short.
_IMAGENET_SIZES = {"glass_blur": (96, 4), "elastic_transform": (96, 64), "fog": (224, 64)}


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_severity_order_imagenet_table_rgb(name):
  size, n = _IMAGENET_SIZES.get(name, (224, 8 if name in RANDOM else 1))
  assert C.table_for(size, size) == C.IMAGENET
  assert_order(mean_abs_change(np.repeat(scene(size)[None], n, 0), name), name, C.IMAGENET)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_dtype_and_shape_kept(fmnist, name):
  for x in (fmnist[5], scene(32), scene(40)[:, :30], np.ascontiguousarray(scene(30)[:, :20, :1])):
    for s in (1, 5):
      y = C.corrupt(x, name, s, seed=1, index=7)
      assert y.dtype == np.uint8 and y.shape == x.shape, (name, s, x.shape, y.dtype, y.shape)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_fixed_seed_fixed_bytes_and_batching(fmnist, name):
  x = fmnist[:6]
  a = C.corrupt_batch(x, name, 3, seed=11, start_index=100)
  np.testing.assert_array_equal(a, C.corrupt_batch(x, name, 3, seed=11, start_index=100))
  # A dataset split into batches gives the same bytes as image by image.
  np.testing.assert_array_equal(a[2:], C.corrupt_batch(x[2:], name, 3, seed=11, start_index=102))
  np.testing.assert_array_equal(a[4], C.corrupt(x[4], name, 3, seed=11, index=104))


@pytest.mark.parametrize("name", RANDOM)
def test_other_seed_or_image_index_other_bytes(fmnist, name):
  x = np.repeat(fmnist[:1], 2, 0)  # the same image twice, at indices 0 and 1
  a = C.corrupt_batch(x, name, 3, seed=0)
  assert not np.array_equal(a, C.corrupt_batch(x, name, 3, seed=1)), "seed ignored"
  assert not np.array_equal(a[0], a[1]), "image index ignored"


def test_seeded_bytes_are_stable_across_processes():
  """Digests of a fixed input: catch a seed derived from per-process state (hash(), time).
  They hold while NumPy keeps its Generator streams (PCG64, normal, random) unchanged."""
  got = {name: hashlib.sha256(C.corrupt(scene(32), name, 4, seed=5, index=9)).hexdigest()[:16]
         for name in ("gaussian_noise", "impulse_noise", "motion_blur")}
  assert got == {"gaussian_noise": "6985896598f9ee1b", "impulse_noise": "a338ab2448ad82e9",
                 "motion_blur": "cd2a94f37edc2640"}, got


def test_noise_levels_are_the_reference_constants(fmnist):
  """The residual of Gaussian noise on mid-gray pixels has the table's std (0.09 at CIFAR 4)."""
  x = np.full((64, 64, 1), 128, np.uint8)
  noise = C.corrupt(x, "gaussian_noise", 4).astype(np.float64) - 128
  assert abs(noise.std() / 255 - 0.09) < 0.003
  flipped = C.corrupt(np.full((64, 64, 3), 128, np.uint8), "impulse_noise", 5) != 128
  assert abs(flipped.mean() - 0.07) < 0.01
  assert C.constants("jpeg_compression", 1, 224, 224) == 25
  assert C.constants("jpeg_compression", 1, 28, 28) == 80


def test_motion_blur_matches_imagemagick():
  """tests/golden/motion_blur_imagemagick.npz: ImageMagick 6.9.11's `convert -motion-blur`
  (tests/golden/make_motion_blur_golden.py), gray and RGB, kernels longer than the image."""
  golden = np.load(GOLDEN)
  for name in ("gray", "rgb"):
    for k, (radius, sigma, angle) in enumerate(golden["cases"]):
      got = C.imagemagick_motion_blur(golden[name], radius, sigma, angle)
      np.testing.assert_array_equal(got, golden[f"{name}_{k}"], err_msg=f"{name} case {k}")


def test_severity_grid_png(fmnist, tmp_path):
  path = tmp_path / "grid.png"
  height, width = C.save_severity_grid(fmnist[0], str(path), seed=0)
  # 6 columns (severities 0-5) x 14 rows of 100 px, a 140 px name margin, a 30 px title margin.
  assert (height, width) == (30 + 14 * 100, 140 + 6 * 100)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == (width, height)
    pixels = np.asarray(im.convert("L"))
  assert pixels.std() > 10  # images were drawn, not a blank page
  h2, w2 = C.save_severity_grid(scene(32), str(tmp_path / "rgb.png"), names=("fog", "snow"),
                                cell_px=64)
  with Image.open(tmp_path / "rgb.png") as im:
    assert im.size == (w2, h2) == (140 + 6 * 64, 30 + 2 * 64)


def test_empty_batch(fmnist):
  for name in ("glass_blur", "fog"):
    assert C.corrupt_batch(fmnist[:0], name, 3).shape == (0, 28, 28, 1)


def test_bad_input_is_one_clear_error(fmnist):
  with pytest.raises(ValueError, match="uint8 array"):
    C.corrupt(fmnist[0].astype(np.float32), "fog", 1)
  with pytest.raises(ValueError, match="C in"):
    C.corrupt(np.zeros((28, 28, 2), np.uint8), "fog", 1)
  with pytest.raises(ValueError, match="severity"):
    C.corrupt(fmnist[0], "fog", 6)
  with pytest.raises(ValueError, match="frost photographs"):
    C.corrupt(fmnist[0], "frost", 1)
  with pytest.raises(ValueError, match="seed"):
    C.corrupt(fmnist[0], "fog", 1, seed=-1)
