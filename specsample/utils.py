"""Small helpers shared across the package: rounding, int checks, atomic file writes."""

from __future__ import annotations

from typing import Any, Mapping

from specsample import paths


def round_up(x: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= x."""
  return -(-x // multiple) * multiple


def is_int(value: Any) -> bool:
  """An int that is not a bool (True is an int to Python, never to a config)."""
  return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value: Any) -> bool:
  return is_int(value) and value >= 1


def write_atomic(files: Mapping[str, str]) -> None:
  """Writes {path: text}, each file whole or not at all, local or in a bucket
  (temporary-and-rename locally, one object upload per file on gs://): see
  paths.write_atomic."""
  paths.write_atomic(files)
