"""Input-pipeline throughput on ImageNet-like JPEGs: views/s per core, bytes per view, epoch
boundaries and resume, for both readers of a streamed split.

The set: `--images` generated JPEGs of 500x375 or 375x500 px (ImageNet's typical sizes),
quality 90, ~ImageNet file sizes: a smooth random colour field plus Gaussian noise (sigma 12),
seeded, written once as TFRecord and once as ArrayRecord TFDS datasets in a temporary dir.
Each pipeline makes two 224x224 views per image with the full SimCLR augmentation (crop
0.08-1 by decode-and-crop, flip, jitter 0.8 @ s=1, grayscale 0.2, blur 0.5, solarize 0.2 on
view 2), as the trainer streams imagenet2012, and yields local batches as numpy (host only).

Per reader ("stream": TFRecord in shuffled blocks, "random_access": ArrayRecord by index, both
sending uint8 crops and leaving the colour stage to the jitted step; "stream_host_colour" and
"stream_baseline" colour on the host, see --readers) and per core count (the measuring
process pinned with sched_setaffinity before TensorFlow starts):
  * views/s and views per CPU-second over the whole timed run (the second is per-core
    throughput even on a shared machine);
  * views/s in ~1 s windows (runs of consecutive batches, timed exactly): the lowest window
    across an epoch boundary (two at the default --epochs) and the lowest of the windows across
    none, each against the median window (steady state); and the time of the batch that ends
    at an epoch's start (median over the boundaries) against the median batch;
  * time to the first batch of a pipeline started in the middle of an epoch (resume).

  python -m benchmarks.input_bench [--images=2048] [--batch=64] [--cores=1,2]
"""
from __future__ import annotations
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_IMAGES = flags.DEFINE_integer("images", 2048, "Generated JPEGs (one epoch).")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per batch (two views each).")
_CORES = flags.DEFINE_list("cores", ["1", "2"], "Core counts to pin the pipeline to.")
_EPOCHS = flags.DEFINE_float("epochs", 2.5, "Epochs timed (crosses two boundaries).")
_BUFFER = flags.DEFINE_integer("shuffle_buffer", 0, "dataset.shuffle_buffer (the stream's block "
                               "and the baseline's buffer); 0 = half the images.")
_READERS = flags.DEFINE_list(
    "readers", ["stream_baseline", "stream_no_options", "stream_host_colour", "stream",
                "random_access"],
    "stream_baseline: a TFRecord stream with float32 views coloured on the host, a shuffle "
    "buffer refilled every epoch, resume by re-reading, TF's default thread pools; "
    "stream_no_options: the stream without the tf.data threading options; "
    "stream_host_colour: the stream with the colour stage on the host; stream: TFRecord in "
    "shuffled blocks, uint8 crops, the colour stage left to the device; random_access: "
    "ArrayRecord by index, as stream.")
_CHILD = flags.DEFINE_string("child", None, "Internal: 'reader,cores,data_dir' to measure.")


def _builder_cls():
  import numpy as np  # noqa: PLC0415 - children import TF only after pinning their cores
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415

  class SyntheticJpegs(tfds.core.GeneratorBasedBuilder):
    """ImageNet-like JPEGs (see the module docstring)."""
    VERSION = tfds.core.Version("1.0.0")
    NUM_IMAGES = 2048

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
        h, w = (375, 500) if rng.rand() < 0.75 else (500, 375)
        yy, xx = np.mgrid[:h, :w] / 40.0
        phase = rng.uniform(0, 6, (3, 1, 1))
        img = 128 + 90 * np.sin(yy * rng.uniform(0.5, 2) + xx * rng.uniform(0.5, 2) + phase)
        img = img.transpose(1, 2, 0) + rng.normal(0, 12, (h, w, 3))
        jpeg = tf.io.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=90).numpy()
        yield i, {"image": jpeg, "label": int(rng.randint(1000))}

  return SyntheticJpegs


def _config(data_dir: str, reader: str, batch: int, images: int):
  from configs import default  # noqa: PLC0415
  c = default.get_config()
  c.dataset.update(dict(name="synthetic_jpegs", data_dir=data_dir, num_classes=1000,
                        image_size=224, channels=3, in_memory=False,
                        random_access=reader == "random_access",
                        shuffle_buffer=_BUFFER.value or images // 2))
  for view in (c.augment.view1, c.augment.view2):
    view.update(dict(crop_scale=(0.08, 1.0), jitter_prob=0.8, brightness=0.8, contrast=0.8,
                     saturation=0.8, hue=0.2, grayscale_prob=0.2, blur_prob=0.5))
  c.augment.view2.solarize_prob = 0.2
  c.batch_size = batch
  return c


def _epoch_buffer_stream(builder, split, config, *, seed, start_step, unique, with_ids):
  """The baseline TFRecord stream: each epoch a fresh shuffle buffer over the slice in file
  order, epochs one after the other, and a resume that re-reads the epoch so far."""
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415
  from simlap.data import datasets  # noqa: PLC0415
  d = config.dataset
  base = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=datasets.decoders(builder, d.image_key),
                            read_config=tfds.ReadConfig(try_autocache=False)).map(
                                lambda ex: datasets.pick(ex, d, with_ids))
  n = datasets.num_examples(builder, split)
  epoch, skip = divmod(start_step * unique, n)
  return tf.data.Dataset.range(epoch, 2**62).flat_map(
      lambda e: base.shuffle(d.shuffle_buffer, seed=seed * 1000 + e)).skip(skip)


def _measure(reader: str, cores: int, data_dir: str) -> dict:
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
  import numpy as np  # noqa: PLC0415
  from simlap.data import train_stream  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  images, batch = _IMAGES.value, _BATCH.value
  _builder_cls()  # registers the builder
  variant = reader
  reader = "stream" if reader.startswith("stream") else reader
  c = _config(os.path.join(data_dir, reader), reader, batch, images)
  if variant in ("stream_baseline", "stream_no_options"):  # TF's default thread pools
    default_options = tf.data.Options()
    default_options.deterministic = True
    train_stream.pipeline_options = lambda threads=None: default_options
  if variant == "stream_baseline":  # float32 views, one shuffle buffer refilled every epoch
    c.dataset.view_dtype = "float32"
    train_stream._disk_stream = _epoch_buffer_stream  # noqa: SLF001
  if variant in ("stream_baseline", "stream_host_colour"):
    c.augment.colour_stage = "host"
  steps_per_epoch = images // batch
  it = train_stream.local_train_dataset(c, seed=0, process_index=0,
                                        process_count=1).as_numpy_iterator()
  first = next(it)
  bytes_per_view = sum(first[k].nbytes for k in ("view1", "view1_colour") if k in first) / len(
      first["view1"])  # the view and, with the colour stage on the device, its parameters
  for _ in range(2):
    next(it)
  times, wall, cpu = [], time.perf_counter(), time.process_time()
  for _ in range(int(_EPOCHS.value * steps_per_epoch) - 3):
    next(it)
    times.append(time.perf_counter())
  views = 2 * batch * len(times)
  rate, per_cpu = views / (times[-1] - wall), views / (time.process_time() - cpu)
  # ~1 s windows of k consecutive batches, each timed exactly: window j ends k batches after
  # times[j]. (Counting batches per clock second quantises a window to whole batches: at 128
  # views a batch and ~800 views/s, one batch is 16 % of a window.)
  t = np.array(times)
  k = max(1, round(rate / (2 * batch)))
  rates = k * 2 * batch / (t[k:] - t[:-k])
  # times[i] is batch i + 3 (three untimed batches first): epoch e starts at times[e * n - 3].
  edges = [t[b] for b in (e * steps_per_epoch - 3 for e in range(1, int(_EPOCHS.value) + 1))
           if 0 <= b < len(t)]
  spans = [(t[:-k] <= edge) & (t[k:] >= edge) for edge in edges]  # windows across an edge
  near_min = min(rates[m].min() for m in spans if m.any()) if spans else float("nan")
  away = ~np.logical_or.reduce(spans) if spans else np.ones(len(rates), bool)
  away_min = float(rates[away].min()) if away.any() else float("nan")
  # The batch that ends at an epoch's start against a median batch: a stall shows here whole.
  gaps = np.diff(t)
  edge_gaps = [gaps[b - 1] for b in (e * steps_per_epoch - 3 for e in range(
      1, int(_EPOCHS.value) + 1)) if 1 <= b < len(t)]
  edge_gap_ms = 1e3 * float(np.median(edge_gaps)) if edge_gaps else float("nan")
  del it
  t0 = time.perf_counter()
  resume_step = steps_per_epoch + steps_per_epoch // 2  # the middle of the second epoch
  next(train_stream.local_train_dataset(c, seed=0, start_step=resume_step, process_index=0,
                                        process_count=1).as_numpy_iterator())
  return dict(reader=variant, cores=cores, views_per_s=rate, views_per_cpu_s=per_cpu,
              bytes_per_view=bytes_per_view, steady=float(np.median(rates)),
              boundary_min=float(near_min), away_min=away_min, edge_gap_ms=edge_gap_ms,
              gap_ms=1e3 * float(np.median(gaps)), resume_s=time.perf_counter() - t0,
              dtype=str(first["view1"].dtype))


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TFDS_DISABLE_GCS", "1")
  if _CHILD.value:
    reader, cores, data_dir = _CHILD.value.split(",")
    print("RESULT " + json.dumps(_measure(reader, int(cores), data_dir)))
    return
  with tempfile.TemporaryDirectory() as tmp:
    cls = _builder_cls()
    cls.NUM_IMAGES = _IMAGES.value
    t0 = time.perf_counter()
    for reader, fmt in (("stream", "tfrecord"), ("random_access", "array_record")):
      cls(data_dir=os.path.join(tmp, reader), file_format=fmt).download_and_prepare()
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(
        os.path.join(tmp, "stream")) for f in fs if "tfrecord" in f)
    print(f"generated {_IMAGES.value} JPEGs x 2 formats in {time.perf_counter() - t0:.0f} s, "
          f"{size / _IMAGES.value / 1e3:.0f} kB per image")
    rows = []
    for reader in _READERS.value:
      for cores in _CORES.value:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.input_bench", f"--child={reader},{cores},{tmp}",
             f"--images={_IMAGES.value}", f"--batch={_BATCH.value}",
             f"--epochs={_EPOCHS.value}", f"--shuffle_buffer={_BUFFER.value}"],
            capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
        print(rows[-1], flush=True)
  print(f"\nload average (1, 5, 15 min) after the run: {os.getloadavg()}, "
        f"{len(os.sched_getaffinity(0))} cores")
  print(f"{'reader':<18} {'cores':>5} {'views/s':>8} {'views/s/core':>12} {'views/CPU-s':>11} "
        f"{'B/view':>7} {'steady':>7} {'min@edge':>8} {'ratio':>6} {'min away':>8} "
        f"{'ratio':>6} {'edge ms':>7} {'batch ms':>8} {'resume s':>8}")
  for r in rows:
    print(f"{r['reader']:<18} {r['cores']:>5} {r['views_per_s']:>8.0f} "
          f"{r['views_per_s'] / r['cores']:>12.0f} {r['views_per_cpu_s']:>11.0f} "
          f"{r['bytes_per_view']:>7.0f} {r['steady']:>7.0f} {r['boundary_min']:>8.0f} "
          f"{r['boundary_min'] / r['steady']:>6.2f} {r['away_min']:>8.0f} "
          f"{r['away_min'] / r['steady']:>6.2f} {r['edge_gap_ms']:>7.0f} {r['gap_ms']:>8.0f} "
          f"{r['resume_s']:>8.2f}")


if __name__ == "__main__":
  app.run(main)
