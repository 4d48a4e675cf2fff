"""Where a sampling config's models run: its device mesh (or none) and its loaded models.

Shared by configs/sample.py and configs/benchmark.py (fields mesh.{data,fsdp,tensor},
target_rules, draft_rules, param_dtype, target_dir, draft_dir).
"""

from __future__ import annotations

from typing import Sequence

from specsample import sharding as sh
from specsample.models import io as model_io
from specsample.models.lm import LM

RULES_FIELDS = {"target_dir": "target_rules", "draft_dir": "draft_rules"}


def mesh_from_config(config, batch_sizes: Sequence[int]):
  """The mesh of a sampling config, or None.

  Every `config.mesh` axis 1 means one device, as without meshes. Call after
  distributed.maybe_initialize(): the mesh spans every process's devices.

  Args:
    config: a ConfigDict with mesh.{data,fsdp,tensor}, target_rules and
      draft_rules (sharding.RULES names).
    batch_sizes: the global batch sizes the loops will run with.

  Raises:
    ValueError: an unknown rules name, a bad axis size, a mesh whose size is
      not the device count, or a batch size that the 'batch' rule's mesh axes
      (data x fsdp) do not divide; the message names the config field.
      Nothing is loaded or compiled.
  """
  for field in RULES_FIELDS.values():
    if config[field] not in sh.RULES:
      raise ValueError(f"{field} must be one of {sorted(sh.RULES)} (sharding.RULES), got "
                       f"{config[field]!r}")
  sizes = config.mesh.to_dict()
  if all(size == 1 for size in sizes.values()):
    return None
  try:
    mesh = sh.make_mesh(sizes)  # checks the sizes and the device count
  except ValueError as e:
    raise ValueError(f"mesh: {e}; set --config.mesh.data / fsdp / tensor (ints >= 1, one of "
                     "them may be -1 = the devices left)") from e
  for field in RULES_FIELDS.values():
    for batch in batch_sizes:
      # sharding's own divisibility check, on the global batch (prompts [B, P]).
      sh.batch_sharding(mesh, sh.get_rules(config[field]), (batch,),
                        what=f"batch size {batch} with {field}={config[field]!r}")
  return mesh


def rules_from_config(config, mesh) -> dict:
  """generate's placement keywords: {} without a mesh, else mesh, rules and draft_rules."""
  if mesh is None:
    return {}
  return dict(mesh=mesh, rules=sh.get_rules(config.target_rules),
              draft_rules=sh.get_rules(config.draft_rules))


def load_lm_from_config(config, field: str, mesh) -> LM:
  """Loads the model folder config[field] ('target_dir' or 'draft_dir').

  Whole on one device (models.io.load_lm) when `mesh` is None, else shard by
  shard on the mesh by config[RULES_FIELDS[field]] (every divisibility is
  checked before anything is read). config.param_dtype, when not "",
  replaces the saved param_dtype.
  """
  overrides = {"param_dtype": config.param_dtype} if config.param_dtype else {}
  if mesh is None:
    return model_io.load_lm(config[field], **overrides)
  rules_field = RULES_FIELDS[field]
  try:
    return model_io.load_sharded_lm(config[field], mesh, sh.get_rules(config[rules_field]),
                                    **overrides)
  except ValueError as e:
    raise ValueError(f"{field}={config[field]!r} with {rules_field}={config[rules_field]!r} on "
                     f"mesh {dict(mesh.shape)}: {e}") from e
