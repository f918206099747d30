"""Where a core's time goes in the streamed ImageNet input: views per CPU-second as the SimCLR
augmentation is built up one stage at a time, on input_bench's JPEGs, pinned to one core.

Each row runs the trainer's own pipeline (`train_stream.local_train_dataset`, TFRecord blocks,
uint8 views, two views per image, the colour stage kept on the host to be measured) with the
stages after it switched off (probability 0, so the op is not built at all): the difference
between consecutive rows is that stage's cost.
Then every stage with the colour stage on the device (what a streamed run's host does), and the
decode alone, outside tf.data: TensorFlow's `decode_and_crop_jpeg` + bilinear resize
of the same crop windows against Pillow's (what a grain or PyTorch pipeline decodes with),
to show whether another loader could be faster at the dominant cost.

  python -m benchmarks.input_profile [--images=2048] [--batch=64] [--epochs=2.5]
  (input_bench's flags and defaults; docs/performance.md's table used --images=1024 --epochs=1.5)
"""
from __future__ import annotations
import io
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import input_bench

_CHILD = flags.DEFINE_string("profile_child", None, "Internal: 'stage,data_dir' to measure.")

# Cumulative: each stage adds its op to the one before. The probabilities are input_bench's.
STAGES = (
    ("decode_and_crop, resize", {}),
    ("+ flip", {"flip_prob": 0.5}),
    ("+ colour jitter", {"jitter_prob": 0.8}),
    ("+ grayscale", {"grayscale_prob": 0.2}),
    ("+ blur", {"blur_prob": 0.5}),
    ("+ solarize (view 2)", {"solarize_prob": (0.0, 0.2)}),
)
_OFF = {"flip_prob": 0.0, "jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0,
        "solarize_prob": 0.0}


def _stage_config(data_dir: str, stage: int, colour_stage: str = "host"):
  c = input_bench._config(data_dir, "stream", input_bench._BATCH.value,  # noqa: SLF001
                          input_bench._IMAGES.value)  # noqa: SLF001
  on = dict(_OFF)
  for _, probs in STAGES[:stage + 1]:
    on.update(probs)
  for i, view in enumerate((c.augment.view1, c.augment.view2)):
    view.update({k: (v[i] if isinstance(v, tuple) else v) for k, v in on.items()})
  c.augment.colour_stage = colour_stage  # "host": what the colour stage costs a host core
  return c


def _pipeline_rate(data_dir: str, stage: int, colour_stage: str = "host") -> float:
  """Views per CPU-second of the trainer's pipeline at `stage`, after 3 warm-up batches."""
  from simlap.data import train_stream  # noqa: PLC0415
  c = _stage_config(data_dir, stage, colour_stage)
  it = train_stream.local_train_dataset(c, seed=0, process_index=0,
                                        process_count=1).as_numpy_iterator()
  for _ in range(3):
    next(it)
  steps = int(input_bench._EPOCHS.value * input_bench._IMAGES.value // c.batch_size)  # noqa: SLF001
  cpu = time.process_time()
  for _ in range(steps):
    next(it)
  return 2 * c.batch_size * steps / (time.process_time() - cpu)


def _decoders(data_dir: str) -> dict:
  """ms of one core per view: decode the crop window and resize it to 224, TF against Pillow."""
  import numpy as np  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415
  from simlap.data import augment  # noqa: PLC0415
  builder = tfds.builder("synthetic_jpegs", data_dir=os.path.join(data_dir, "stream"))
  ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  jpegs = [ex["image"] for ex in ds.take(256).as_numpy_iterator()]
  windows = [augment.random_crop_window(tf.constant([i, 0], tf.int64),
                                        tf.image.extract_jpeg_shape(j)[:2], (0.08, 1.0),
                                        (3 / 4, 4 / 3)).numpy() for i, j in enumerate(jpegs)]

  @tf.function
  def tf_view(jpeg, window):
    x = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    return tf.cast(tf.round(tf.image.resize(x, [224, 224], method="bilinear")), tf.uint8)

  def pil_view(jpeg, window):
    y, x, h, w = (int(v) for v in window)
    img = Image.open(io.BytesIO(jpeg)).convert("RGB").crop((x, y, x + w, y + h))
    return np.asarray(img.resize((224, 224), Image.BILINEAR))

  out = {}
  for name, fn, wrap in (("tensorflow", tf_view, tf.constant), ("pillow", pil_view, lambda v: v)):
    args = [(wrap(j), wrap(w)) for j, w in zip(jpegs, windows)]
    for a in args[:8]:
      fn(*a)
    cpu = time.process_time()
    for _ in range(2):
      for a in args:
        fn(*a)
    out[name] = 1e3 * (time.process_time() - cpu) / (2 * len(args))
  return out


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TFDS_DISABLE_GCS", "1")
  if _CHILD.value:
    stage, data_dir = _CHILD.value.split(",")
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    input_bench._builder_cls()  # noqa: SLF001 (registers the builder)
    stream = os.path.join(data_dir, "stream")
    if stage == "decoders":
      result = _decoders(data_dir)
    elif stage == "device":  # every stage on, the colour stage left to the device
      result = {"views_per_cpu_s": _pipeline_rate(stream, len(STAGES) - 1, "device")}
    else:
      result = {"views_per_cpu_s": _pipeline_rate(stream, int(stage))}
    print("RESULT " + json.dumps(result))
    return
  with tempfile.TemporaryDirectory() as tmp:
    cls = input_bench._builder_cls()  # noqa: SLF001
    cls.NUM_IMAGES = input_bench._IMAGES.value  # noqa: SLF001
    cls(data_dir=os.path.join(tmp, "stream"), file_format="tfrecord").download_and_prepare()

    def child(stage) -> dict:
      out = subprocess.run(
          [sys.executable, "-m", "benchmarks.input_profile", f"--profile_child={stage},{tmp}",
           f"--images={input_bench._IMAGES.value}", f"--batch={input_bench._BATCH.value}",  # noqa: SLF001
           f"--epochs={input_bench._EPOCHS.value}"],  # noqa: SLF001
          capture_output=True, text=True, check=True)
      return json.loads(out.stdout.split("RESULT ", 1)[1])

    rates = [child(i)["views_per_cpu_s"] for i in range(len(STAGES))]
    device = child("device")["views_per_cpu_s"]
    decoders = child("decoders")
  print(f"\none core, batch {input_bench._BATCH.value}, two 224 px views per image; "  # noqa: SLF001
        f"load average after the run {os.getloadavg()}")
  print(f"{'stage':<26} {'views/CPU-s':>11} {'ms/view':>8} {'stage ms':>9} {'share':>6}")
  total = 1e3 / rates[-1]
  for i, ((name, _), rate) in enumerate(zip(STAGES, rates)):
    ms = 1e3 / rate
    stage_ms = ms - (1e3 / rates[i - 1] if i else 0.0)
    print(f"{name:<26} {rate:>11.0f} {ms:>8.2f} {stage_ms:>9.2f} {stage_ms / total:>6.0%}")
  print(f"\nevery stage, the colour stage on the device (a streamed run's host): {device:.0f} "
        f"views/CPU-s, {1e3 / device:.2f} ms/view, {device / rates[-1]:.2f} x the host form")
  print(f"\ndecode the crop window + resize to 224, outside tf.data, ms per view: tensorflow "
        f"{decoders['tensorflow']:.2f}, pillow {decoders['pillow']:.2f} "
        f"(pillow / tensorflow {decoders['pillow'] / decoders['tensorflow']:.2f})")


if __name__ == "__main__":
  app.run(main)
