"""Per-device memory of a target/draft pair on a mesh, without a device or an allocation.

    report = dry_run.memory_report(config)          # config: configs/tpu.py
    print(dry_run.format_report(report))
    dry_run.check_fits(report)                      # raises DoesNotFitError

Everything is abstract: parameter and KV-cache shapes come from
`jax.eval_shape` (models/transformer.py `param_shapes`, `init_cache`), the
mesh is a `jax.sharding.AbstractMesh` of the slice's size, and each array's
bytes on one device are those of its shard (`NamedSharding.shard_shape`). So a
laptop CPU can size a 70B model on 256 chips, and the same divisibility checks
as a real run (specsample/sharding.py) fail first, naming the array.

What is counted: parameters (param_dtype) and both KV caches (compute dtype,
[B, S, K, H] per layer for keys and values, plus [B] lengths) at the full
`seq_len`. What is not: activations of one decode step, logits, XLA
temporaries and the runtime's own reserve; keep a margin (`min_free_gib`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax

from specsample import sharding as sh
from specsample.models import presets
from specsample.models import transformer as tr

GIB = 2 ** 30


class DoesNotFitError(ValueError):
  """The pair's parameters and caches need more than a device's HBM."""


@dataclasses.dataclass(frozen=True)
class ModelMemory:
  """Bytes of one model on one device (largest shard) and in total.

  Attributes:
    role: 'target' or 'draft'.
    preset: name in models/presets.py.
    rules: description of its sharding rules.
    num_params: parameter count.
    param_bytes, cache_bytes: on one device.
    param_total_bytes, cache_total_bytes: over the whole mesh, unsharded.
  """
  role: str
  preset: str
  rules: str
  num_params: int
  param_bytes: int
  cache_bytes: int
  param_total_bytes: int
  cache_total_bytes: int


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  """The whole dry run: mesh, shapes, both models, and the device's HBM."""
  mesh: dict[str, int]
  batch_size: int
  seq_len: int
  models: tuple[ModelMemory, ...]
  hbm_bytes: int
  min_free_bytes: int

  @property
  def total_bytes(self) -> int:
    return sum(m.param_bytes + m.cache_bytes for m in self.models)

  @property
  def fits(self) -> bool:
    return self.total_bytes + self.min_free_bytes <= self.hbm_bytes


def _total_bytes(shapes) -> int:
  return sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree_util.tree_leaves(shapes))


def model_memory(role: str, preset: str, config: tr.TransformerConfig, mesh, rules: sh.Rules,
                 batch_size: int, seq_len: int, rules_name: str = "") -> ModelMemory:
  """Per-device and total bytes of one model's parameters and KV cache.

  Args:
    role, preset, rules_name: labels for the table.
    config: the model.
    mesh: a jax.sharding.AbstractMesh (or a concrete Mesh).
    rules: its logical-axis rules.
    batch_size, seq_len: the KV cache is [batch_size, seq_len, K, H] per layer.

  Raises:
    ValueError: an array dimension its mesh axes do not divide (named), or
      seq_len above config.max_seq_len.
  """
  try:
    param_shapes = sh.param_shapes(config)
    param_shardings = sh.param_shardings(config, mesh, rules)
    cache_shapes = jax.eval_shape(lambda: tr.init_cache(config, batch_size, seq_len))
    cache_shardings = sh.cache_shardings(config, mesh, rules, batch_size, seq_len)
  except ValueError as e:  # say which model: both have e.g. `layer_0/attn/o`
    raise ValueError(f"{role} {preset}: {e}") from e
  return ModelMemory(
      role=role, preset=preset, rules=rules_name or "custom",
      num_params=tr.count_params(param_shapes),
      param_bytes=sh.bytes_per_device(param_shapes, param_shardings),
      cache_bytes=sh.bytes_per_device(cache_shapes, cache_shardings),
      param_total_bytes=_total_bytes(param_shapes),
      cache_total_bytes=_total_bytes(cache_shapes))


def model_from(section: Mapping[str, Any]) -> tuple[str, tr.TransformerConfig]:
  """(preset, TransformerConfig) from a config section with `preset` and `overrides`."""
  return section["preset"], presets.get_preset(section["preset"], **dict(section["overrides"]))


def rules_from(section: Mapping[str, Any]) -> tuple[str, sh.Rules]:
  """(description, Rules) from a config section with `rules` and `rule_overrides`."""
  overrides = dict(section["rule_overrides"])
  name = section["rules"] + (f" + {overrides}" if overrides else "")
  return name, sh.get_rules(section["rules"], overrides)


def memory_report(config, hbm_gib: float | None = None,
                  min_free_gib: float | None = None) -> MemoryReport:
  """The dry run of a configs/tpu.py config.

  Args:
    config: a ConfigDict with mesh, batch_size, seq_len, hbm_gib, min_free_gib,
      and target / draft sections (preset, overrides, rules, rule_overrides).
    hbm_gib, min_free_gib: override config.hbm_gib / config.min_free_gib.

  Raises:
    ValueError: a bad mesh, rules or shape (see model_memory), before any
      number is printed.
  """
  mesh = sh.abstract_mesh(dict(config.mesh))
  models = []
  for role in ("target", "draft"):
    preset, model_cfg = model_from(config[role])
    rules_name, rules = rules_from(config[role])
    models.append(model_memory(role, preset, model_cfg, mesh, rules, config.batch_size,
                               config.seq_len, rules_name))
  hbm = config.hbm_gib if hbm_gib is None else hbm_gib
  free = config.min_free_gib if min_free_gib is None else min_free_gib
  if not hbm > 0 or not free >= 0:
    raise ValueError(f"hbm_gib must be > 0 and min_free_gib >= 0, got {hbm} and {free}")
  return MemoryReport(mesh={k: int(v) for k, v in mesh.shape.items()},
                      batch_size=config.batch_size, seq_len=config.seq_len, models=tuple(models),
                      hbm_bytes=int(hbm * GIB), min_free_bytes=int(free * GIB))


def _gib(x: int) -> str:
  return f"{x / GIB:.2f}"


def format_report(report: MemoryReport) -> str:
  """A markdown table of per-device GiB, one row per model and a total row."""
  devices = math.prod(report.mesh.values())
  lines = [
      f"mesh {report.mesh} ({devices} devices), batch {report.batch_size}, "
      f"seq_len {report.seq_len} (KV cache positions)",
      "",
      "| model | rules | params | params / device | KV cache / device | total / device |",
      "|---|---|---:|---:|---:|---:|",
  ]
  for m in report.models:
    lines.append(f"| {m.role} {m.preset} | {m.rules} | {m.num_params / 1e9:.2f}B "
                 f"({_gib(m.param_total_bytes)} GiB) | {_gib(m.param_bytes)} GiB | "
                 f"{_gib(m.cache_bytes)} GiB | {_gib(m.param_bytes + m.cache_bytes)} GiB |")
  params = sum(m.param_bytes for m in report.models)
  caches = sum(m.cache_bytes for m in report.models)
  lines.append(f"| **pair** | | | {_gib(params)} GiB | {_gib(caches)} GiB | "
               f"**{_gib(report.total_bytes)} GiB** |")
  lines.append("")
  verdict = "fits" if report.fits else "DOES NOT FIT"
  lines.append(f"HBM per device {_gib(report.hbm_bytes)} GiB, kept free "
               f"{_gib(report.min_free_bytes)} GiB for activations and XLA: {verdict} "
               f"({100 * report.total_bytes / report.hbm_bytes:.0f}% of HBM used by parameters and "
               "caches).")
  return "\n".join(lines)


def check_fits(report: MemoryReport) -> None:
  """Raises DoesNotFitError naming the sizes when the pair does not fit one device."""
  if report.fits:
    return
  biggest = max(report.models, key=lambda m: m.param_bytes + m.cache_bytes)
  raise DoesNotFitError(
      f"does not fit: parameters + KV caches need {_gib(report.total_bytes)} GiB per device "
      f"(+ {_gib(report.min_free_bytes)} GiB kept free) but a device has "
      f"{_gib(report.hbm_bytes)} GiB of HBM, on mesh {report.mesh} with batch "
      f"{report.batch_size} and seq_len {report.seq_len}; the largest is the {biggest.role} "
      f"{biggest.preset} ({_gib(biggest.param_bytes)} GiB params + {_gib(biggest.cache_bytes)} "
      "GiB cache). Use a larger slice, a larger 'tensor' or 'fsdp' axis, or a smaller batch or "
      "seq_len.")
