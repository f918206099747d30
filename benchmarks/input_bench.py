"""Input-pipeline throughput: augmented views per second, in total and per host core.

  (a) ImageNet-style: synthetic ~400x350 JPEGs in a temporary TFDS dataset, streamed from disk
      as imagenet2012 is (JPEG bytes, decode-and-crop), two 224x224 views with the full SimCLR
      augmentation (crop 0.08-1, flip, jitter 0.8 @ s=1, grayscale 0.2, blur 0.5, solarize 0.2
      on view 2).
  (b) Fashion-MNIST: the embedded dataset, in memory, two 28x28 views, configs/default.py.

Measures the host tf.data pipeline alone (local batches as numpy), after a warm-up, since that
is what the input pipeline can feed; device transfer is the trainer's cost.

  python -m benchmarks.input_bench [--images=512] [--seconds=20] [--batch=128]

Measured on the 2-core dev box shared with other jobs (load average ~3-5), batch 128:
  (a) ~340-395 views/s wall, ~340-400 views per CPU-second (per-image HSV jitter before the
      two-stage rewrite: ~270 per CPU-second); (b) ~7-14k views/s, ~8-9k per CPU-second.
"""
from __future__ import annotations
import os
import tempfile
import time

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from configs import default  # noqa: E402 - run from the repository root, as `python -m`
from simlap.data import fashion_mnist  # noqa: E402
from simlap.data import train_stream  # noqa: E402

_IMAGES = flags.DEFINE_integer("images", 512, "Synthetic JPEGs in the ImageNet-style set.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per pipeline.")
_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch (two views each).")
_FMNIST_DATA_DIR = flags.DEFINE_string("fmnist_data_dir", None,
                                       "TFDS dir for Fashion-MNIST; prepared here if missing.")


class SyntheticJpegs(tfds.core.GeneratorBasedBuilder):
  """Smooth random-colour JPEGs of about 400x350 px with noise, ~ImageNet file sizes."""
  VERSION = tfds.core.Version("1.0.0")
  NUM_IMAGES = 512

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=1000),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.RandomState(0)
    for i in range(self.NUM_IMAGES):
      h, w = rng.randint(330, 470), rng.randint(300, 400)
      yy, xx = np.mgrid[:h, :w] / 40.0
      phase = rng.uniform(0, 6, (3, 1, 1))
      img = 128 + 90 * np.sin(yy * rng.uniform(0.5, 2) + xx * rng.uniform(0.5, 2) + phase)
      img = img.transpose(1, 2, 0) + rng.normal(0, 12, (h, w, 3))
      jpeg = tf.io.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=90).numpy()
      yield i, {"image": jpeg, "label": int(rng.randint(1000))}


def _simclr_config(data_dir: str, batch: int):
  c = default.get_config()
  c.dataset.update(dict(name="synthetic_jpegs", data_dir=data_dir, num_classes=1000,
                        image_size=224, channels=3, in_memory=False, shuffle_buffer=256))
  for view in (c.augment.view1, c.augment.view2):
    view.update(dict(crop_scale=(0.08, 1.0), jitter_prob=0.8, brightness=0.8, contrast=0.8,
                     saturation=0.8, hue=0.2, grayscale_prob=0.2, blur_prob=0.5))
  c.augment.view2.solarize_prob = 0.2
  c.batch_size = batch
  return c


def _views_per_second(config, seconds: float) -> tuple[float, float]:
  """(views per wall second, views per CPU second of this process) after a warm-up.

  The second number is the per-core throughput even on a machine shared with other jobs,
  where wall-clock rates understate what a dedicated core does.
  """
  ds = train_stream.local_train_dataset(config, seed=0, process_index=0, process_count=1)
  it = ds.as_numpy_iterator()
  for _ in range(3):
    next(it)
  wall, cpu, views = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - wall < seconds:
    views += 2 * len(next(it)["label"])
  return views / (time.perf_counter() - wall), views / (time.process_time() - cpu)


def main(argv):
  del argv
  cores = len(os.sched_getaffinity(0))
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    SyntheticJpegs.NUM_IMAGES = _IMAGES.value
    SyntheticJpegs(data_dir=tmp).download_and_prepare()
    c = _simclr_config(tmp, _BATCH.value)
    rows.append(("imagenet-style JPEG ~400x350 -> 2x224, SimCLR, streamed", c,
                 _views_per_second(c, _SECONDS.value)))
    c = default.get_config()
    c.dataset.data_dir = _FMNIST_DATA_DIR.value or os.path.join(tmp, "tfds")
    fashion_mnist.prepare(c.dataset.data_dir)
    c.batch_size = _BATCH.value
    rows.append(("fashion-mnist 28x28 -> 2x28, default config, in memory", c,
                 _views_per_second(c, _SECONDS.value)))
  load = os.getloadavg()[0]
  print(f"\nhost cores: {cores}   load average (1 min) after the run: {load:.1f}")
  print(f"{'pipeline':<62} {'views/s':>8} {'views/s/core':>13} {'views/CPU-s':>12}")
  for name, _, (vps, per_cpu) in rows:
    print(f"{name:<62} {vps:>8.0f} {vps / cores:>13.0f} {per_cpu:>12.0f}")


if __name__ == "__main__":
  app.run(main)
