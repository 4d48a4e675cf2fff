"""Opening a GGUF file (llama.cpp's format) and reading its metadata, with one-line errors.

Both the model importer (models/gguf.py) and the tokenizer (gguf_tokenizer.py)
read through here: a file that is not GGUF, truncated or on a bucket is one
GGUFError naming the file, before anything is parsed further.
"""

from __future__ import annotations

import os

import gguf

from specsample import paths

MAGIC = b"GGUF"


class GGUFError(ValueError):
  """A GGUF file that cannot be imported: the message names the file and what is wrong."""


def is_gguf(path: str) -> bool:
  """True for a local file that starts with the GGUF magic (or is named *.gguf)."""
  if path.endswith(".gguf"):
    return True
  if paths.is_remote(path) or not os.path.isfile(path):
    return False
  with open(path, "rb") as f:
    return f.read(4) == MAGIC


def open_reader(path: str):
  """A gguf.GGUFReader over a local file.

  Raises:
    GGUFError: not a local file, not GGUF, or truncated (names the file).
  """
  if paths.is_remote(path):
    raise GGUFError(f"{path}: GGUF files are read from local disk (they are memory-mapped); "
                    "copy it first: gcloud storage cp <file> <local dir>")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no GGUF file at {path}")
  with open(path, "rb") as f:
    if f.read(4) != MAGIC:
      raise GGUFError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises IndexError/ValueError deep in its parser
    raise GGUFError(f"{path}: truncated or corrupt GGUF file ({os.path.getsize(path)} bytes; "
                    f"{type(e).__name__}: {e})") from e


def field(reader, key: str, default=None):
  """The value of one metadata key (a str, number or list), or `default`."""
  f = reader.fields.get(key)
  return default if f is None else f.contents()
