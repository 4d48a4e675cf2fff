"""Pieces every configs/*.py shares: the colon-argument parser and the device-mesh block.

Config files are loaded by path (ml_collections.config_flags), not as a
package, so what they share lives here, in the installed package.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections


def parse_arg(arg: str | None, config_file: str, switches: Sequence[str] = (),
              options: Mapping[str, str] | None = None) -> dict:
  """Parses the argument after the colon: `--config=configs/x.py:runlocal,model=draft_small`.

  Args:
    arg: the text after the colon (None or '' for none).
    config_file: the config's path, named in errors.
    switches: names that stand alone; each maps to whether it was given.
    options: name -> default of the `name=value` arguments.

  Raises:
    ValueError: an argument that is neither, naming what is allowed.
  """
  options = dict(options or {})
  out = {**{name: False for name in switches}, **options}
  for part in filter(None, (arg or "").split(",")):
    key, eq, value = part.partition("=")
    if key in switches and not eq:
      out[key] = True
    elif key in options and eq:
      out[key] = value
    else:
      allowed = [*switches, *(f"{name}=<value>" for name in options)]
      raise ValueError(f"{config_file}: unknown argument {key!r}; allowed: {', '.join(allowed)}")
  return out


def add_mesh(c: ml_collections.ConfigDict) -> None:
  """c.mesh: the device mesh (specsample/sharding.py). Every axis 1: one device, no sharding."""
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1            # batch split, parameters replicated; -1 = all devices left
  c.mesh.fsdp = 1            # batch split and parameters' embed dim split (ZeRO-3)
  c.mesh.tensor = 1          # heads / kv heads / MLP / vocab split (Megatron)


def add_pair_placement(c: ml_collections.ConfigDict) -> None:
  """The mesh and each model's layout on it, for sampling a target/draft pair.

  On a mesh both models are read shard by shard onto one mesh over all devices
  (of all processes); data x fsdp must divide every batch size.
  """
  add_mesh(c)
  c.target_rules = "tensor_parallel"  # sharding.RULES name: the target's logical axis -> mesh axes
  c.draft_rules = "tensor_parallel"   # the draft's; 'replicated' keeps a small draft whole per device
  c.param_dtype = ""         # "" = each model's saved param_dtype; e.g. "bfloat16" halves weight memory
