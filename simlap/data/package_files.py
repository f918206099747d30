"""Data files shipped inside installed Python distributions, found and checked without importing
the distribution (importlib.metadata), and pickled NumPy arrays read without running code.

Importing a package to find its data would pull in its dependencies (Animal-MNIST's loader
imports TensorFlow's Keras datasets; `sklearn.datasets` is slow to import), so files are located
through the distribution's metadata and checked against a pinned SHA-256: another package
version with other data fails here, naming the file, instead of silently changing the numbers.

scripts/setup.sh installs these distributions into `packages_dir()`, off `sys.path`: an
importable scikit-learn is imported by Keras at every TensorFlow import (1.3 s per process,
docs/datasets.md). One installed on `sys.path` is found too.
"""
from __future__ import annotations
import base64
import dataclasses
import hashlib
import importlib.metadata
import io
import os
import pickle
import sys

import numpy as np


@dataclasses.dataclass(frozen=True)
class PackagedFile:
  """One data file of a distribution: where it lives in the wheel and its pinned hash."""
  distribution: str  # the PyPI name, e.g. "animal-mnist"
  version: str  # the pinned version (setup.py), named in the install hint
  path: str  # relative to site-packages, as in the wheel's RECORD
  sha256: str  # RECORD format: urlsafe base64 of the digest, no padding


def packages_dir() -> str:
  """The environment's directory of data-only distributions (not on sys.path)."""
  return os.path.join(sys.prefix, "share", "simlap", "packages")


def install_hint(f: PackagedFile) -> str:
  # Animal-MNIST's metadata requires the full TensorFlow and pandas, which only its loader
  # module uses; simlap reads its data files, so it is installed without dependencies.
  return f"pip install --no-deps --upgrade --target {packages_dir()} {f.distribution}=={f.version}"


def distribution(name: str) -> importlib.metadata.Distribution:
  """The installed distribution `name`, from `packages_dir()` or else `sys.path`; raises
  PackageNotFoundError if neither has it."""
  found = next(iter(importlib.metadata.distributions(name=name, path=[packages_dir()])), None)
  return found or importlib.metadata.distribution(name)


def distribution_metadata(name: str) -> importlib.metadata.PackageMetadata:
  """The installed distribution's metadata (Name, Version, License...); raises if missing."""
  try:
    return distribution(name).metadata
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f"Python distribution {name!r} is not installed") from None


def record_sha256(data: bytes) -> str:
  return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def read_bytes(f: PackagedFile) -> bytes:
  """The file's bytes, after checking them against the pinned hash."""
  try:
    dist = distribution(f.distribution)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(
        f"{f.path} ships in the Python distribution {f.distribution!r}, which is not installed; "
        f"install it with `{install_hint(f)}`") from None
  path = os.fspath(dist.locate_file(f.path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found in {f.distribution} {dist.version}; "
                            f"reinstall it with `{install_hint(f)}`")
  with open(path, "rb") as fh:
    data = fh.read()
  if (got := record_sha256(data)) != f.sha256:
    raise ValueError(
        f"{path}: sha256 {got} is not the pinned {f.sha256} ({f.distribution} {dist.version} "
        f"installed, {f.version} expected); install `{install_hint(f)}`")
  return data


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles plain NumPy arrays only: a pickle can run any code it names, so every global
  other than the three that rebuild an ndarray is refused."""
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype")}

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
    if name == "_reconstruct":  # the function ndarray pickles name, under either module path
      return np.zeros(0).__reduce__()[0]
    return getattr(np, name)


def load_array_pickle(data: bytes, where: str) -> np.ndarray:
  """An ndarray from pickle bytes that may hold nothing but one ndarray."""
  try:
    array = _ArrayUnpickler(io.BytesIO(data)).load()
  except pickle.UnpicklingError as e:
    raise ValueError(f"{where}: {e}") from None
  if not isinstance(array, np.ndarray):
    raise ValueError(f"{where}: holds a {type(array).__name__}, expected one numpy array")
  return array
