"""The one layer every workdir file of simlap's own goes through: local paths or URLs.

Local whole-file writes go to a temporary file renamed into place, so a kill never leaves half a
file. URLs go through fsspec (gs:// through gcsfs; memory://, in-process, for tests); of object
stores simlap needs single-object writes, listings and a create-if-absent (`create_exclusive`).
At import, etils' epath (Orbax's directory operations) is switched to its fsspec backend
(`EPATH_USE_TF=false`), so one client and one endpoint carry every gs:// byte but the arrays
(tensorstore's own GCS driver); `use_endpoint` points both at another server.
"""
from __future__ import annotations

import functools
import glob as glob_lib
import os
import tempfile
from collections.abc import Callable
from typing import Any

import fsspec

os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's experimental file system asks the storage control API (gRPC) for every bucket's
# layout, which a plain bucket or an emulator does not serve: each bucket would wait out timeouts.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# gcsfs options for every instance (simlap's and epath's). No cached listings: tensorstore
# writes objects behind gcsfs's back, and a cached listing of a checkpoint folder misses them.
_GCS_OPTIONS = fsspec.config.conf.setdefault("gcs", {})
_GCS_OPTIONS.setdefault("use_listings_cache", False)
fsspec.config.conf["gs"] = _GCS_OPTIONS


def use_endpoint(url: str, *, override: bool = True) -> None:
  """Sends gs:// of this process (and of the processes it starts) to the server at `url`
  (http://HOST:PORT): gcsfs, and so Orbax's epath, and tensorstore, connecting anonymously so
  that no credential lookup reaches for a metadata server. `override=False` keeps values the
  user set. Call it before the first gs:// access (tensorstore reads it then); at import it runs
  when STORAGE_EMULATOR_HOST is set. TensorFlow's gfile (TensorBoard in a local workdir, TFDS)
  has no endpoint setting and cannot be pointed there."""
  put = os.environ.__setitem__ if override else os.environ.setdefault
  put("STORAGE_EMULATOR_HOST", url)
  put("TENSORSTORE_GCS_HTTP_URL", url)
  put("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # tensorstore sends it as the bearer token
  # Anonymous: no credential lookup, which would try a metadata server.
  _GCS_OPTIONS["token"] = "anon" if override else _GCS_OPTIONS.get("token", "anon")
  try:
    import gcsfs  # noqa: PLC0415
    gcsfs.GCSFileSystem.clear_instance_cache()  # instances made before keep their endpoint
  except ImportError:
    pass


if os.environ.get("STORAGE_EMULATOR_HOST"):
  use_endpoint(os.environ["STORAGE_EMULATOR_HOST"], override=False)


def is_remote(path: str) -> bool:
  """True for URLs (gs://bucket/run, memory://x): paths that are not local files."""
  return "://" in path


def _fs(path: str):
  """(fsspec file system, path as it names it) for a URL."""
  return fsspec.core.url_to_fs(path)


def _as_oserror(fn: Callable) -> Callable:
  """URL operations raise OSError (FileNotFoundError, FileExistsError, ...), whatever the
  client raised (gcsfs's HttpError is no OSError), so callers catch one kind of error."""
  @functools.wraps(fn)
  def wrapped(path, *args, **kwargs):
    try:
      return fn(path, *args, **kwargs)
    except OSError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise OSError(f"{path}: {type(e).__name__}: {e}") from e
  return wrapped


@_as_oserror
def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  fs, p = _fs(path)
  return fs.exists(p)


@_as_oserror
def isdir(path: str) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  fs, p = _fs(path)
  return fs.isdir(p)


@_as_oserror
def listdir(path: str) -> list[str]:
  """Entry names in the folder `path` (no trailing "/"); [] when it does not exist."""
  if not is_remote(path):
    return os.listdir(path) if os.path.isdir(path) else []
  fs, p = _fs(path)
  try:
    names = fs.ls(p, detail=False, refresh=True)
  except FileNotFoundError:
    return []
  own = p.rstrip("/")  # a file lists as itself
  return [n.rstrip("/").rsplit("/", 1)[-1] for n in names if n.rstrip("/") != own]


@_as_oserror
def glob(pattern: str) -> list[str]:
  """Paths matching `pattern` (with the scheme for URLs), sorted."""
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern))
  fs, p = _fs(pattern)
  scheme = pattern.split("://", 1)[0] + "://"
  return sorted(scheme + m.lstrip("/") for m in fs.glob(p))


@_as_oserror
def makedirs(path: str) -> None:
  """Creates folder `path` and its parents (object stores: a no-op, folders are prefixes)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
    return
  fs, p = _fs(path)
  fs.makedirs(p, exist_ok=True)


@_as_oserror
def read_bytes(path: str) -> bytes:
  """The bytes of `path`; FileNotFoundError when it is missing."""
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  fs, p = _fs(path)
  return fs.cat_file(p)


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


@_as_oserror
def write_bytes(path: str, data: bytes) -> None:
  """Replaces `path` with `data` in one step (readers see the old or the new content),
  parent folders created."""
  if not is_remote(path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    return
  fs, p = _fs(path)
  fs.pipe_file(p, data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


@_as_oserror
def create_exclusive(path: str, data: bytes) -> bool:
  """Writes `path` only if it does not exist; False if it does. Exactly one of several
  concurrent callers wins: a hard link on local disks, `ifGenerationMatch=0` on GCS."""
  if not is_remote(path):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.link(tmp, path)  # atomic, and fails if `path` exists
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(tmp)
  fs, p = _fs(path)
  try:
    fs.pipe_file(p, data, mode="create")
    return True
  except FileExistsError:
    return False


@_as_oserror
def remove(path: str, missing_ok: bool = False) -> None:
  if not is_remote(path):
    try:
      os.remove(path)
    except FileNotFoundError:
      if not missing_ok:
        raise
    return
  fs, p = _fs(path)
  try:
    fs.rm_file(p)
  except FileNotFoundError:
    if not missing_ok:
      raise


@_as_oserror
def upload(local_path: str, path: str) -> None:
  """Copies the local file `local_path` to `path` (local or a URL)."""
  if not is_remote(path):
    with open(local_path, "rb") as f:
      write_bytes(path, f.read())
    return
  fs, p = _fs(path)
  fs.put_file(local_path, p)


@_as_oserror
def info(path: str) -> dict[str, Any]:
  """Size of `path` in bytes, as {"size": n} (tests count what a run wrote)."""
  if not is_remote(path):
    return {"size": os.path.getsize(path)}
  fs, p = _fs(path)
  return {"size": int(fs.info(p)["size"])}
