"""Small helpers shared across the package: rounding, int checks, atomic file writes."""

from __future__ import annotations

import os
from typing import Any, Mapping


def round_up(x: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= x."""
  return -(-x // multiple) * multiple


def is_int(value: Any) -> bool:
  """An int that is not a bool (True is an int to Python, never to a config)."""
  return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value: Any) -> bool:
  return is_int(value) and value >= 1


def write_atomic(files: Mapping[str, str]) -> None:
  """Writes {path: text}: every text to a temporary sibling first, then renames each.

  A crash while writing leaves the old files untouched (and no temporaries);
  only the renames, which cannot leave a file half-written, come last.
  """
  tmps = {}
  try:
    for path, text in files.items():
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      tmps[path] = f"{path}.tmp-{os.getpid()}"
      with open(tmps[path], "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    for path, tmp in tmps.items():
      os.replace(tmp, path)
  finally:
    for tmp in tmps.values():
      if os.path.exists(tmp):
        os.remove(tmp)
