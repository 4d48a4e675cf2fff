"""The cell store: one JSON record per cell under <workdir>/cells, written atomically.

A record is keyed by a fingerprint of everything it depends on (settings,
items, model and data bytes). A rerun reuses every matching record and redoes
the rest: a killed run resumes, and a half-written, corrupt or stale record is
recomputed, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from specsample import paths
from specsample.eval.table1 import grid
from specsample.eval.table1.grid import Cell
from specsample.utils import write_atomic

SCHEMA_VERSION = 2  # bump when a record's meaning changes: old records are then recomputed


def sha(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def dir_fingerprint(path: str) -> str:
  """sha256 over a folder's relative file names and bytes (a model's identity)."""
  h = hashlib.sha256()
  if paths.is_remote(path):
    files = paths.walk_files(path)
  else:  # the order fingerprints were always taken in: cached cells stay valid
    files = [os.path.relpath(os.path.join(root, name), path)
             for root, dirs, names in sorted(os.walk(path)) for name in sorted(names)]
  for rel in files:
    h.update(rel.encode() + b"\0")
    with paths.open_file(os.path.join(path, rel), "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()


class CellStore:
  """`<workdir>/cells/<cell key>.json`, each holding one complete record."""

  def __init__(self, workdir: str):
    self.directory = os.path.join(workdir, "cells")

  def path(self, cell: Cell) -> str:
    return os.path.join(self.directory, cell.key + ".json")

  def load(self, cell: Cell, fingerprint: str) -> tuple[dict | None, str]:
    """(record, '') if a complete, matching record exists, else (None, why not)."""
    path = self.path(cell)
    if not paths.exists(path):
      return None, "not computed yet"
    try:
      record = json.loads(paths.read_text(path))
    except (OSError, ValueError) as e:
      return None, f"unreadable ({type(e).__name__}); recomputing"
    if not isinstance(record, dict) or record.get("complete") is not True:
      return None, "incomplete record; recomputing"
    if record.get("schema") != SCHEMA_VERSION or record.get("key") != cell.key:
      return None, "written by another version; recomputing"
    if record.get("fingerprint") != fingerprint:
      return None, "settings, items or models changed; recomputing"
    return record, ""

  def save(self, record: dict) -> None:
    write_atomic({os.path.join(self.directory, record["key"] + ".json"):
                  json.dumps(record, indent=1) + "\n"})


def cell_fingerprint(cell: Cell, config, tasks: dict, model_fps: dict) -> str:
  """Everything a cell's record depends on; a change means it is recomputed."""
  c = config[cell.task]
  spec = {"schema": SCHEMA_VERSION, "cell": dataclasses.asdict(cell),
          "data": tasks[cell.task].fingerprint, "target": model_fps["target"],
          "tokenizer": model_fps["tokenizer"]}
  if cell.kind == "generate":
    sampling = dataclasses.asdict(grid.sampling_for(config, cell.task, cell.sampling))
    if sampling.get("coupling") == "rejection":
      # The default, whose output is unchanged bit for bit since the field was
      # added: records written before it stay valid.
      del sampling["coupling"]
    spec.update(sampling=sampling, max_new_tokens=c.max_new_tokens, pad_to=c.pad_to, seed=config.seed)
    if cell.method == "speculative":
      spec["draft"] = model_fps["draft"]
    if cell.num_draft == grid.AUTO and config.auto_choices:  # absent: the default set, as before
      spec["auto_choices"] = tuple(config.auto_choices)
    if cell.task == "humaneval":
      spec.update(stops=grid.code_stops(config.prompt_format), pass_ks=tuple(c.pass_ks),
                  timeout_s=c.timeout_s)
  return sha(spec)
