"""simlap: SimLAP (learning from arbitrary class pairs) in JAX/Flax.

The core install is only what `simlap.losses` needs (jax, numpy), so another JAX project can
`pip install simlap` and import the loss without pulling TensorFlow. `simlap[train]` carries the
pinned training stack; `simlap[test]` the test tools.
"""
from __future__ import annotations
import setuptools

# The pinned set measured to work together on Python 3.11 (fresh Debian 12, 2 cores).
TRAIN_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    # tfds 4.9.10 imports importlib_resources without declaring it.
    "importlib_resources==7.1.0",
    "matplotlib==3.11.2",
    # simlap.convert reads .safetensors checkpoints with NumPy alone (no torch).
    "safetensors==0.8.0",
    # gs:// workdirs: runtime.storage and Orbax's directory operations (etils epath) go through
    # gcsfs, which can be pointed at a storage server; TensorFlow's gfile cannot. What it pulls
    # in: docs/reliability.md ("gs:// against a storage server").
    "fsspec==2026.9.0",
    "gcsfs==2026.10.1",
]

# Data-only distributions: simlap reads files from their wheels and never imports them.
# scripts/setup.sh installs them without dependencies into <prefix>/share/simlap/packages, where
# simlap.data.package_files finds them: their metadata pulls in far more than simlap reads, and
# off sys.path nothing imports them (Keras imports an importable scikit-learn at every TensorFlow
# import, 1.3 s per process). docs/datasets.md has the measurements.
DATA_PACKAGES = [
    # The `animal_mnist` transfer target reads its pickled arrays; its Requires-Dist adds the
    # full tensorflow (572 MB wheel, over tensorflow-cpu's files) and pandas, for its loader only.
    "animal-mnist==0.4",
    # The `digits` transfer target reads sklearn/datasets/data/digits.csv.gz from this wheel.
    "scikit-learn==1.9.1",
]

TEST_REQUIRES = [
    "pytest==9.2.0",
    # scripts/test.sh runs the test files on 2 workers: alone, the suite keeps about 1.1 of 2
    # cores busy (imports, subprocess start-ups, data preparation are single-threaded).
    "pytest-xdist==3.8.0",
    "execnet==2.1.2",
    "ruff==0.17.6",  # scripts/test.sh lints before testing (ruff.toml)
    # tests/test_gcs_emulator.py: a GCS JSON API server on 127.0.0.1 (in memory).
    "gcp-storage-emulator==2026.7.19",
]

setuptools.setup(
    name="simlap",
    version="0.1.0",
    description="SimLAP: contrastive learning from arbitrary class pairs, in JAX/Flax.",
    packages=setuptools.find_packages(include=["simlap", "simlap.*"]),
    python_requires=">=3.11",
    install_requires=["jax>=0.7", "numpy>=1.26"],
    extras_require={
        "train": TRAIN_REQUIRES,
        "test": TEST_REQUIRES,
        # Accelerator wheels: install on the accelerator host instead of the CPU jaxlib.
        "gpu": ["jax[cuda12]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
    },
)
