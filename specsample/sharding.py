"""Device meshes, logical-axis rules, and the shardings of parameters, batches and KV caches.

Mesh axes (slowest first): `data` splits the batch; `fsdp` splits the batch and
every parameter's `embed` dimension (ZeRO-3); `tensor` splits heads, kv heads,
MLP width and vocabulary (Megatron). Parameters carry logical axis names
(models/transformer.py); decode arrays use the same names: prompts [B, L]
('batch', 'seq'), KV cache [B, S, K, H] ('batch', 'seq', 'kv_heads', 'head_dim').
A `Rules` value maps each logical name to None (replicated) or mesh axes; target
and draft may use different rules on one mesh.

A dimension its mesh axes do not divide raises ValueError naming the array and
sizes before anything compiles, except 'kv_heads' (REPLICATE_IF_INDIVISIBLE): a
multi-query model with fewer kv heads than the tensor axis keeps its K/V
replicated over it, the standard MQA layout, while its query heads are split.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from specsample.models import transformer as tr

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "seq", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp")
# Logical axes replicated (not an error) when their size is not divisible by
# their mesh axes; see the module docstring.
REPLICATE_IF_INDIVISIBLE = frozenset({"kv_heads"})

# ((logical name, None | mesh axis | tuple of mesh axes), ...): hashable, so a
# jit cache key.
Rules = tuple[tuple[str, Any], ...]

# FSDP over `embed`, Megatron tensor parallelism over heads / mlp / vocab.
TENSOR_PARALLEL: Rules = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
)
# Parameters replicated on every device, batch split: data parallelism only.
REPLICATED: Rules = tuple((name, ("data", "fsdp") if name == "batch" else None)
                          for name in LOGICAL_AXES)
RULES = {"tensor_parallel": TENSOR_PARALLEL, "replicated": REPLICATED}

AnyMesh = Mesh | AbstractMesh


# ----------------------------------------------------------------------------- meshes

def _mesh_shape(shape, axis_names) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """(sizes, names) from a mapping {axis: size} or a sequence of sizes, validated."""
  if isinstance(shape, Mapping) or hasattr(shape, "items"):
    names, sizes = tuple(shape.keys()), tuple(shape.values())
  else:
    sizes, names = tuple(shape), tuple(axis_names or MESH_AXES)
  if len(sizes) != len(names):
    raise ValueError(f"mesh shape {sizes} has {len(sizes)} axes but axis names {names} "
                     f"have {len(names)}")
  unknown = [n for n in names if n not in MESH_AXES]
  if unknown or len(set(names)) != len(names):
    raise ValueError(f"mesh axis names {names} must be distinct names from {MESH_AXES}; "
                     f"unknown: {unknown}")
  for name, size in zip(names, sizes):
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ValueError(f"mesh axis {name!r} size must be an int >= 1 (or -1 once), got {size!r}")
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"mesh shape {dict(zip(names, sizes))}: at most one axis may be -1")
  return tuple(int(s) for s in sizes), names


def _describe(sizes, names) -> str:
  return "(" + ", ".join(f"{n}={s}" for n, s in zip(names, sizes)) + ")"


def make_mesh(shape, axis_names: Sequence[str] | None = None, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with Auto axes over all (global) devices.

  Args:
    shape: {'data': 2, 'fsdp': 1, 'tensor': 4} (a dict or ConfigDict), or a
      sequence of sizes named by `axis_names`. One size may be -1: the devices
      left over by the others.
    axis_names: names for a sequence `shape`; default MESH_AXES.
    devices: default jax.devices() (every process's devices when multi-host).

  Raises:
    ValueError: unknown or repeated axis names, or a mesh whose size is not
      the number of devices (the message gives both).
  """
  sizes, names = _mesh_shape(shape, axis_names)
  devices = list(jax.devices() if devices is None else devices)
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if len(devices) % known:
      raise ValueError(f"mesh {_describe(sizes, names)}: {len(devices)} devices are not "
                       f"divisible by the fixed axes' product {known}")
    sizes = tuple(len(devices) // known if s == -1 else s for s in sizes)
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {_describe(sizes, names)} has {math.prod(sizes)} devices but "
                     f"{len(devices)} {devices[0].platform} devices are available")
  # Auto axes: XLA propagates shardings from the in/out shardings we give jit.
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(sizes), devices=devices)


def abstract_mesh(shape, axis_names: Sequence[str] | None = None) -> AbstractMesh:
  """A device-free mesh of any size, for dry runs (shard shapes, no allocation)."""
  sizes, names = _mesh_shape(shape, axis_names)
  if -1 in sizes:
    raise ValueError("an abstract mesh needs every axis size; -1 is only for make_mesh")
  return AbstractMesh(sizes, names, axis_types=(AxisType.Auto,) * len(sizes))


# ----------------------------------------------------------------------------- rules

def get_rules(base: str | Rules = "tensor_parallel", overrides: Mapping | None = None) -> Rules:
  """Named rules (RULES) or a rules tuple, with some logical names remapped.

  Example: get_rules('tensor_parallel', {'batch': 'data', 'embed': None}).
  """
  if isinstance(base, str):
    if base not in RULES:
      raise ValueError(f"sharding rules {base!r} are unknown; choose one of {sorted(RULES)}")
    base = RULES[base]
  table = dict(canonical_rules(base))
  for name, value in dict(overrides or {}).items():
    table[name] = value
  return canonical_rules(tuple(table.items()))


def canonical_rules(rules) -> Rules:
  """Rules as a hashable tuple; mesh axes as None or a tuple of names. Checks names."""
  out, seen = [], set()
  for item in rules:
    if len(item) != 2:
      raise ValueError(f"a rule is a (logical name, mesh axes) pair, got {item!r}")
    name, axes = item
    if name not in LOGICAL_AXES:
      raise ValueError(f"rule for unknown logical axis {name!r}; logical axes are {LOGICAL_AXES}")
    if name in seen:
      raise ValueError(f"two rules for logical axis {name!r}")
    seen.add(name)
    if axes is None or axes == ():
      axes = None
    elif isinstance(axes, str):
      axes = (axes,)
    else:
      axes = tuple(axes)
    for a in axes or ():
      if a not in MESH_AXES:
        raise ValueError(f"rule {name!r} -> {a!r}: unknown mesh axis; mesh axes are {MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def _table(rules: Rules, mesh: AnyMesh) -> dict[str, tuple[str, ...] | None]:
  table = dict(canonical_rules(rules))
  for name, axes in table.items():
    missing = [a for a in axes or () if a not in mesh.axis_names]
    if missing:
      raise ValueError(f"rule {name!r} -> {axes} names mesh axes {missing} that this mesh "
                       f"{dict(mesh.shape)} does not have")
  return table


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: AnyMesh,
                    rules: Rules, *, what: str) -> PartitionSpec:
  """PartitionSpec of one array from its logical axis names.

  Args:
    names: one logical name (or None) per dimension.
    shape: the array's global shape.
    mesh: the mesh (concrete or abstract).
    rules: logical name -> mesh axes.
    what: the array, for error messages (e.g. 'parameter layer_0/attn/q').

  Raises:
    ValueError: a logical name without a rule, a mesh axis used by two
      dimensions, or a dimension its mesh axes do not divide (except
      REPLICATE_IF_INDIVISIBLE names, which fall back to replication).
  """
  table = _table(rules, mesh)
  if len(names) != len(shape):
    raise ValueError(f"{what}: {len(names)} logical names {tuple(names)} for shape {tuple(shape)}")
  spec, used = [], set()
  for dim, (name, size) in enumerate(zip(names, shape)):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"{what}: logical axis {name!r} (dimension {dim}) has no rule; the rules "
                       f"cover {sorted(table)}")
    axes = table[name]
    if not axes:
      spec.append(None)
      continue
    if used & set(axes):
      raise ValueError(f"{what}: mesh axes {sorted(used & set(axes))} would split two dimensions "
                       f"(rule {name!r} -> {axes} at dimension {dim}); give them different axes")
    parts = math.prod(mesh.shape[a] for a in axes)
    if size % parts:
      if name in REPLICATE_IF_INDIVISIBLE:
        spec.append(None)  # documented fallback: replicate (MQA / GQA kv heads)
        continue
      raise ValueError(f"{what}: dimension {dim} ({name!r}, size {size}) is not divisible by mesh "
                       f"axes {axes} of size {parts}; change the mesh or the rule for {name!r}")
    used |= set(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


# ----------------------------------------------------------------------------- shardings

@functools.lru_cache(maxsize=64)
def _axes_and_shapes(config: tr.TransformerConfig):
  # Two abstract traces of the flax model: seconds for an 80-layer preset, and
  # every helper here needs them, so once per (hashable, frozen) config.
  return tr.logical_axes(config), tr.param_shapes(config)


def param_shapes(config: tr.TransformerConfig):
  """transformer.param_shapes, cached per config (do not mutate the tree)."""
  return _axes_and_shapes(config)[1]


def param_shardings(config: tr.TransformerConfig, mesh: AnyMesh, rules: Rules = TENSOR_PARALLEL):
  """NamedSharding of every parameter (same tree as the params). No allocation.

  Raises:
    ValueError: see logical_to_spec; messages name the parameter path.
  """
  names, shapes = _axes_and_shapes(config)
  is_spec = lambda x: isinstance(x, PartitionSpec)

  def one(path, spec, shape):
    return NamedSharding(mesh, logical_to_spec(tuple(spec), shape.shape, mesh, rules,
                                               what=f"parameter {_path(path)}"))

  return jax.tree_util.tree_map_with_path(one, names, shapes, is_leaf=is_spec)


def batch_sharding(mesh: AnyMesh, rules: Rules, shape: Sequence[int], *,
                   what: str = "batch") -> NamedSharding:
  """Sharding of a [B] or [B, L] array: ('batch',) or ('batch', 'seq')."""
  names = ("batch", "seq")[:len(shape)]
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules, what=what))


def cache_shardings(config: tr.TransformerConfig, mesh: AnyMesh, rules: Rules, batch: int,
                    max_len: int) -> tr.KVCache:
  """A KVCache whose leaves are the NamedShardings of a [batch, max_len] cache."""
  shape = (batch, max_len, config.num_kv_heads, config.head_dim)
  kv = NamedSharding(mesh, logical_to_spec(("batch", "seq", "kv_heads", "head_dim"), shape, mesh,
                                           rules, what="KV cache [B, S, K, H]"))
  lengths = batch_sharding(mesh, rules, (batch,), what="KV cache lengths [B]")
  return tr.KVCache(k=(kv,) * config.num_layers, v=(kv,) * config.num_layers, lengths=lengths)


def replicated(mesh: AnyMesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def bytes_per_device(shapes, shardings) -> int:
  """Bytes of the largest shard on one device, summed over a tree (no allocation).

  Args:
    shapes: tree of ShapeDtypeStructs (or arrays).
    shardings: matching tree of NamedShardings (concrete or abstract mesh).
  """
  sizes = jax.tree_util.tree_map(
      lambda s, sh: math.prod(sh.shard_shape(s.shape)) * np.dtype(s.dtype).itemsize,
      shapes, shardings)
  return int(sum(jax.tree_util.tree_leaves(sizes)))


# ----------------------------------------------------------------------------- placing data

def put_global(x, sharding: NamedSharding) -> jax.Array:
  """One global array from a host value that every process holds in full.

  Single-process this is jax.device_put. Multi-host, each process keeps only
  the shards of its own devices (jax.make_array_from_callback), so `x` must be
  identical on every process (prompts, a seed, a batch computed from (seed, step)).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)  # already global: reshard on device
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_params(params, config: tr.TransformerConfig, mesh: Mesh,
                 rules: Rules = TENSOR_PARALLEL):
  """Places loaded (host or single-device) parameters on the mesh by `rules`.

  Leaves whose sharding already matches are returned as they are.
  """
  shardings = param_shardings(config, mesh, rules)
  expected = jax.tree_util.tree_structure(shardings)
  if jax.tree_util.tree_structure(params) != expected:
    raise ValueError(f"params do not match model config {config}: tree structure differs")
  place = lambda x, s: (x if isinstance(x, jax.Array) and x.sharding == s
                        else put_global(x, s))
  return jax.tree_util.tree_map(place, params, shardings)


def init_params(config: tr.TransformerConfig, mesh: Mesh, rules: Rules, rng: jax.Array):
  """Random parameters created already sharded: no device ever holds them whole.

  With JAX's partitionable threefry (the default) the values equal
  `transformer.init_params(config, rng)`, whatever the mesh.
  """
  shardings = param_shardings(config, mesh, rules)
  init = jax.jit(tr.init_params, static_argnums=0, out_shardings=shardings)
  return init(config, rng)
