"""Every file the project reads or writes, local or in a bucket (gs://), through etils.epath.

Local paths behave exactly as plain `open`/`os` calls. Object stores have no
atomic rename (gcsfuse and gcsfs copy then delete, object by object), but each
object is written whole or not at all, so writes are built per backend:

  local   temporary sibling, then `os.replace` (a crash leaves the old file);
  bucket  one object per file, written in one upload; appends rewrite the
          object. Folders (checkpoints, model folders) are committed by a
          marker written last: orbax's `commit_success.txt` for checkpoints,
          `config.json` naming its params folder for models (models/io.py).

A bucket path needs the cloud client (gcsfs, which epath uses through fsspec,
or tensorflow); without it the first use raises `MissingClientError`, one line
saying what to install. `check_writable` writes and deletes a probe object, so
a missing or read-only bucket fails before any compile, not at the first
checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import glob as glob_lib
import importlib.util
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Mapping

from etils import epath

# epath's URI schemes -> the fsspec protocol it opens them with.
_FSSPEC_PROTOCOL = {"gs": "gcs", "s3": "s3", "az": "az", "hf": "hf"}
_INSTALL = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


class MissingClientError(ImportError):
  """A bucket path whose client library is not installed."""


def scheme(path: str | os.PathLike) -> str | None:
  """'gs' for 'gs://b/x', None for a local path."""
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else None


def is_remote(path: str | os.PathLike) -> bool:
  return scheme(path) is not None


@functools.lru_cache(maxsize=None)
def _check_client(name: str) -> None:
  if name not in _FSSPEC_PROTOCOL:
    raise ValueError(f"{name}:// paths are not supported; use a local path or gs://")
  if importlib.util.find_spec("tensorflow") is not None:
    return  # epath then reads buckets through tf.io.gfile
  import fsspec  # pylint: disable=g-import-not-at-top
  try:
    fsspec.get_filesystem_class(_FSSPEC_PROTOCOL[name])
  except (ImportError, ValueError) as e:
    raise MissingClientError(
        f"{name}:// paths need the {_INSTALL[name]} package: pip install {_INSTALL[name]}"
        + (" (or pip install -e '.[gcs]')" if name == "gs" else "")) from e


def path(p: str | os.PathLike) -> epath.Path:
  """An epath.Path for `p`, after checking that its backend's client is installed."""
  name = scheme(p)
  if name is not None:
    _check_client(name)
  return epath.Path(p)


def absolute(p: str) -> str:
  """os.path.abspath for local paths; a bucket URI unchanged (abspath would turn
  'gs://b/x' into '<cwd>/gs:/b/x')."""
  return p if is_remote(p) else os.path.abspath(p)


def supports_rename(p: str) -> bool:
  """Whether temporary-and-rename is atomic here: local file systems only."""
  return not is_remote(p)


def exists(p: str) -> bool:
  return os.path.exists(p) if not is_remote(p) else path(p).exists()


def isdir(p: str) -> bool:
  return os.path.isdir(p) if not is_remote(p) else path(p).is_dir()


def isfile(p: str) -> bool:
  if not is_remote(p):
    return os.path.isfile(p)
  q = path(p)
  return q.exists() and not q.is_dir()


def makedirs(p: str) -> None:
  """mkdir -p (a no-op on buckets where folders are only name prefixes)."""
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: str) -> list[str]:
  """The names (not paths) in a folder."""
  return os.listdir(p) if not is_remote(p) else [q.name for q in path(p).iterdir()]


def glob(pattern: str) -> list[str]:
  """Sorted paths matching a glob pattern (gs:// ones keep their scheme)."""
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern))
  parts = pattern.split("/")
  fixed = next(i for i, part in enumerate(parts + ["*"]) if glob_lib.has_magic(part))
  root, rest = "/".join(parts[:fixed]), "/".join(parts[fixed:])
  if not rest:
    return [pattern] if exists(pattern) else []
  return sorted(str(q) for q in path(root).glob(rest))


def walk_files(root: str) -> list[str]:
  """Every file under `root`, as sorted '/'-separated paths relative to it."""
  if not is_remote(root):
    return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                  for d, _, files in os.walk(root) for f in files)
  found, todo = [], [""]
  while todo:  # listing folder by folder: epath refuses '**' on buckets
    rel = todo.pop()
    for name in listdir(os.path.join(root, rel) if rel else root):
      child = f"{rel}/{name}" if rel else name
      (todo if isdir(os.path.join(root, child)) else found).append(child)
  return sorted(found)


def open_file(p: str, mode: str = "r", **kwargs):
  """open() for local paths (kwargs such as encoding pass through); epath's open
  for buckets (text is UTF-8)."""
  if not is_remote(p):
    return open(p, mode, **kwargs)  # pylint: disable=unspecified-encoding
  return path(p).open(mode)


def read_text(p: str) -> str:
  with open_file(p, encoding="utf-8") as f:
    return f.read()


def read_bytes(p: str) -> bytes:
  with open_file(p, "rb") as f:
    return f.read()


def write_atomic(files: Mapping[str, str | bytes]) -> None:
  """Writes {path: text or bytes}, each whole or not at all.

  Local: every file to a temporary sibling first (fsynced), then renamed, so a
  crash leaves the old files untouched and no temporaries. Bucket: one upload
  per object, which the store publishes only once complete.
  """
  tmps = {}
  try:
    for p, data in files.items():
      mode = "wb" if isinstance(data, bytes) else "w"
      if is_remote(p):
        with path(p).open(mode) as f:
          f.write(data)
        continue
      os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
      tmps[p] = f"{p}.tmp-{os.getpid()}"
      with open(tmps[p], mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    for p, tmp in tmps.items():
      os.replace(tmp, p)
  finally:
    for tmp in tmps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def append_line(p: str, line: str) -> None:
  """Appends one line (metrics.jsonl). Objects cannot be appended to, so on a
  bucket the object is rewritten whole: readers see the old or the new file."""
  if not is_remote(p):
    with open(p, "a", encoding="utf-8") as f:
      f.write(line.rstrip("\n") + "\n")
    return
  old = read_text(p) if exists(p) else ""
  write_atomic({p: old + line.rstrip("\n") + "\n"})


def copy(src: str, dst: str) -> None:
  """Copies one file (either side local or in a bucket); the destination is written atomically."""
  if not is_remote(src) and not is_remote(dst):
    shutil.copy(src, dst)
  else:
    write_atomic({dst: read_bytes(src)})


def rmtree(p: str) -> None:
  """Removes a folder and everything in it; a missing folder is fine."""
  if not is_remote(p):
    shutil.rmtree(p, ignore_errors=True)
  elif exists(p):
    path(p).rmtree()


@contextlib.contextmanager
def local_file(p: str) -> Iterator[str]:
  """A local filename to write `p` through, for writers that need one (parquet,
  numpy, safetensors, matplotlib). Local: a temporary sibling renamed onto `p`
  on success; bucket: a local temporary uploaded as one object. An exception
  leaves `p` as it was."""
  suffix = os.path.splitext(p)[1]  # writers such as np.save and savefig key on it
  if is_remote(p):
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
  else:
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}{suffix}"
  try:
    yield tmp
    if is_remote(p):
      with open(tmp, "rb") as f:
        write_atomic({p: f.read()})
    else:
      os.replace(tmp, p)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def swap_in_folder(tmp: str, directory: str) -> None:
  """Replaces local `directory` (if any) by the finished folder `tmp`: two renames,
  so a reader sees the old folder or the new one, never a half-written one."""
  old = f"{directory}.old-{uuid.uuid4().hex[:8]}"
  if os.path.exists(directory):
    os.rename(directory, old)
  os.rename(tmp, directory)
  shutil.rmtree(old, ignore_errors=True)


def check_writable(directory: str, field: str = "workdir") -> None:
  """Creates `directory` and writes then deletes a probe file in it.

  Raises:
    ValueError: naming `field` when the folder or bucket cannot be written
      (missing bucket, no permission), before anything expensive starts.
    MissingClientError: a bucket path without its client library.
  """
  probe = os.path.join(directory, f".write-probe-{uuid.uuid4().hex[:8]}")
  try:
    makedirs(directory)
    write_atomic({probe: "probe\n"})
    path(probe).unlink()
  except MissingClientError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # each backend raises its own
    reason = " ".join(str(e).split())[:200] or type(e).__name__
    raise ValueError(f"{field}: cannot write to {directory} ({type(e).__name__}: {reason}); "
                     "check that the folder or bucket exists and is writable") from e
