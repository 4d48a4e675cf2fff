"""An in-memory stand-in for Google Cloud Storage that tests start themselves.

`fake_gcs()` registers it as fsspec's `gs`/`gcs` filesystem, which is what
etils.epath opens gs:// paths with (when tensorflow is absent, forced here),
so `specsample.paths` runs its bucket code path with no network. Like a real
bucket it has no rename (gcsfs copies object by object), no append, and only
the buckets it was given exist; a read-only bucket refuses writes.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import fsspec
from fsspec.registry import _registry as fsspec_registry  # the mutable one
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from specsample import paths


class FakeGCS(MemoryFileSystem):
  """MemoryFileSystem with GCS's restrictions (see the module docstring)."""

  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict = {}
  pseudo_dirs = [""]
  buckets: set = set()
  read_only: set = set()
  renames = 0  # attempts; a test asserts none happened

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    return path.rstrip("/")

  def _check_bucket(self, path: str, write: bool) -> None:
    bucket = self._strip_protocol(path).split("/", 1)[0]
    if bucket not in self.buckets:
      raise FileNotFoundError(f"bucket {bucket} does not exist")
    if write and bucket in self.read_only:
      raise PermissionError(f"403: no storage.objects.create permission on bucket {bucket}")

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise NotImplementedError("objects cannot be appended to")
    self._check_bucket(path, write="w" in mode)
    return super()._open(path, mode=mode, **kwargs)

  def mkdir(self, path, create_parents=True, **kwargs):
    self._check_bucket(path, write=True)
    return super().mkdir(path, create_parents=create_parents, **kwargs)

  def makedirs(self, path, exist_ok=False):
    self._check_bucket(path, write=True)
    return super().makedirs(path, exist_ok=exist_ok)

  def mv(self, *args, **kwargs):
    type(self).renames += 1
    raise OSError("the fake bucket has no rename")


@contextlib.contextmanager
def fake_gcs(buckets=("bucket",), read_only=()) -> Iterator[type[FakeGCS]]:
  """Serves gs:// from memory inside the block; restores fsspec and epath after."""
  saved = {name: fsspec_registry.get(name) for name in ("gs", "gcs")}
  saved_tf = gpath._is_tf_installed  # pylint: disable=protected-access
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  FakeGCS.buckets, FakeGCS.read_only, FakeGCS.renames = set(buckets), set(read_only), 0
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  gpath._is_tf_installed = lambda: False  # pylint: disable=protected-access
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  paths._check_client.cache_clear()  # pylint: disable=protected-access
  try:
    yield FakeGCS
  finally:
    for name, cls in saved.items():
      fsspec_registry.pop(name, None)  # pylint: disable=protected-access
      if cls is not None:
        fsspec.register_implementation(name, cls, clobber=True)
    gpath._is_tf_installed = saved_tf  # pylint: disable=protected-access
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    paths._check_client.cache_clear()  # pylint: disable=protected-access
    FakeGCS.clear_instance_cache()
