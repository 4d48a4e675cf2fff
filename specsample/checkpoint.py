"""Orbax checkpoints: save every N steps, keep the last few, resume, fail clearly.

On a local disk orbax writes each step into a temporary folder and renames it
only once every file is on disk (and, multi-host, once every process has
finished), so a save killed half-way leaves a `*.orbax-checkpoint-tmp-*` folder
that `latest_step()` never returns. A bucket (gs://) has no atomic folder
rename: there orbax writes the step folder in place and a `commit_success.txt`
last, and `latest_step()` skips a step without it (paths.supports_rename picks
the mode; orbax writes gs:// itself, through tensorstore). A step folder whose
files were later damaged raises `CheckpointError` naming the folder instead of
an opaque tensorstore traceback.

Process 0 alone writes the JSON metadata; orbax coordinates the array writes of
all processes itself.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from specsample import paths


class CheckpointError(RuntimeError):
  """A checkpoint that should exist is missing, unreadable or mismatched."""


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for {'state': pytree, 'meta': json}."""

  def __init__(self, directory: str, *, save_every: int = 0, keep: int = 3):
    self.directory = paths.absolute(directory)
    paths.path(self.directory)  # a bucket without its client library: one clear line
    # Local: orbax's default (rename). Elsewhere: the commit marker, whatever the scheme.
    atomicity = None if paths.supports_rename(self.directory) else ocp.options.AtomicityOptions(
        mode=ocp.options.AtomicityMode.COMMIT_FILE)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, save_every), create=True,
        atomicity_options=atomicity)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict | None = None, *, force: bool = False) -> bool:
    """Saves asynchronously when `step` is due (or `force`). Returns whether it saved."""
    args = {"state": ocp.args.StandardSave(state)}
    if meta is not None:
      args["meta"] = ocp.args.JsonSave(meta)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """Restores `step` (default: latest) into the structure of `abstract_state`.

    Args:
      abstract_state: pytree of arrays or ShapeDtypeStructs (with shardings) to
        restore into; its structure must match what was saved.
      step: which step; None for the latest complete one.

    Returns:
      (step, state, meta).

    Raises:
      CheckpointError: no checkpoint, missing step, or unreadable files.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no complete checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise CheckpointError(
          f"checkpoint step {step} not found in {self.directory}; have {self.all_steps()}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many types; name the folder
      raise CheckpointError(
          f"checkpoint {os.path.join(self.directory, str(step))} is corrupt or does not "
          f"match the expected structure: {type(e).__name__}: {e}") from e
    return step, restored["state"], dict(restored.get("meta") or {})

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
