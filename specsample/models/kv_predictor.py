"""KV Prediction (Horton et al. 2024): a linear map from an auxiliary model's KV cache to the target's.

Per target layer i there is one linear map (with bias) for keys and one for
values, reading the auxiliary layer `layer_map[i]`'s merged kv heads
[B, S, I] (I = K_aux * H_aux) and writing the target's kv heads [B, S, K, H].
Keys are predicted BEFORE rotary and the target's rotary is applied after,
as in the paper. Our caches hold post-rotary keys; rotary is a rotation, so
the auxiliary's pre-rotary keys are recovered by rotating back by the same
angles (`unrope`). That keeps the transformer untouched and works for any
auxiliary model (ours or one imported from Hugging Face), at the price of
float32 rounding (~1e-7 relative) on the keys.

Default layer map (documented, overridable): target layer i reads auxiliary
layer floor(i * L_aux / L_target). For a layer-pruned copy that keeps layers
floor(j * L_target / L_aux) this is the paper's "nearest kept layer at or
below"; for a smaller auxiliary model it spreads the target layers evenly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from specsample.models import transformer as tr


def default_layer_map(target_layers: int, aux_layers: int) -> tuple[int, ...]:
  """Target layer i -> auxiliary layer floor(i * L_aux / L_target)."""
  return tuple(i * aux_layers // target_layers for i in range(target_layers))


@dataclasses.dataclass(frozen=True)
class KVPConfig:
  """Shapes of one predictor. Frozen and hashable: a jit static argument.

  Attributes:
    target: the target's TransformerConfig (whose cache is predicted).
    aux: the auxiliary model's TransformerConfig (whose cache is read).
    layer_map: for each target layer, the auxiliary layer it reads; () means
      `default_layer_map`.
  """
  target: tr.TransformerConfig
  aux: tr.TransformerConfig
  layer_map: tuple[int, ...] = ()

  def __post_init__(self):
    layer_map = tuple(self.layer_map) or default_layer_map(self.target.num_layers,
                                                           self.aux.num_layers)
    object.__setattr__(self, "layer_map", layer_map)

  def validate(self) -> "KVPConfig":
    """Raises ValueError naming the bad field (layer_map, vocabularies); returns self."""
    L_t, L_a = self.target.num_layers, self.aux.num_layers
    if len(self.layer_map) != L_t:
      raise ValueError(f"kvp.layer_map must have one entry per target layer ({L_t}), got "
                       f"{len(self.layer_map)}: {list(self.layer_map)}")
    bad = [j for j in self.layer_map if not isinstance(j, int) or isinstance(j, bool)
           or not 0 <= j < L_a]
    if bad:
      raise ValueError(f"kvp.layer_map entries must be auxiliary layers in [0, {L_a}), got "
                       f"{bad} in {list(self.layer_map)}")
    if self.aux.vocab_size != self.target.vocab_size:
      raise ValueError(f"kvp auxiliary and target vocabularies differ: aux vocab_size="
                       f"{self.aux.vocab_size}, target vocab_size={self.target.vocab_size}")
    return self


def _linear_init(fan_in: int, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=fan_in ** -0.5), axes)


class KVPredictor(nn.Module):
  """Maps pre-rotary auxiliary keys / values to pre-rotary target keys / values.

  Parameters per target layer i (`layer_{i}`): `k`, `v` [I, K, H] and `k_bias`,
  `v_bias` [K, H], with logical axes (None, 'kv_heads', 'head_dim'): the output
  is laid out like the target's KV cache, the (small) input replicated.
  """
  config: KVPConfig

  @nn.compact
  def __call__(self, aux_k: tuple[jax.Array, ...], aux_v: tuple[jax.Array, ...]):
    """Args: per auxiliary layer, PRE-rotary keys and values [B, S, K_aux, H_aux].

    Returns:
      (keys, values): per target layer, PRE-rotary [B, S, K, H] in float32.
    """
    cfg = self.config
    t = cfg.target
    I = cfg.aux.num_kv_heads * cfg.aux.head_dim
    K, H = t.num_kv_heads, t.head_dim
    pdtype = jnp.dtype(t.param_dtype)
    keys, values = [], []
    for i, j in enumerate(cfg.layer_map):
      for name, source, out in (("k", aux_k, keys), ("v", aux_v, values)):
        w_IKH = self.param(f"layer_{i}_{name}", _linear_init(I, (None, "kv_heads", "head_dim")),
                           (I, K, H), pdtype)
        b_KH = self.param(f"layer_{i}_{name}_bias", nn.with_logical_partitioning(
            nn.initializers.zeros, ("kv_heads", "head_dim")), (K, H), pdtype)
        x_BSI = source[j].reshape(*source[j].shape[:2], I).astype(jnp.float32)  # merged heads
        out.append(jnp.einsum("BSI,IKH->BSKH", x_BSI, w_IKH.astype(jnp.float32))
                   + b_KH.astype(jnp.float32))
    return tuple(keys), tuple(values)


def _dummy_inputs(config: KVPConfig):
  a = config.aux
  x = jnp.zeros((1, 1, a.num_kv_heads, a.head_dim), jnp.float32)
  return (x,) * a.num_layers, (x,) * a.num_layers


def init_params(config: KVPConfig, rng: jax.Array) -> Any:
  """Plain (unboxed) predictor parameters."""
  variables = KVPredictor(config.validate()).init(rng, *_dummy_inputs(config))
  return nn.meta.unbox(variables["params"])


def logical_axes(config: KVPConfig) -> Any:
  """PartitionSpecs of logical axis names, one per parameter (for sharding.logical_to_spec)."""
  abstract = jax.eval_shape(
      lambda: KVPredictor(config.validate()).init(jax.random.key(0), *_dummy_inputs(config)))
  return nn.get_partition_spec(abstract)["params"]


def identity_params(config: KVPConfig) -> Any:
  """Weights that copy the auxiliary's K / V through (needs equal kv shapes): for tests."""
  a, t = config.aux, config.target
  if (a.num_kv_heads, a.head_dim) != (t.num_kv_heads, t.head_dim):
    raise ValueError("identity_params needs equal kv heads and head_dim in aux and target")
  eye_IKH = jnp.eye(a.num_kv_heads * a.head_dim).reshape(-1, t.num_kv_heads, t.head_dim)
  zeros_KH = jnp.zeros((t.num_kv_heads, t.head_dim))
  params = {}
  for i in range(t.num_layers):
    for name in ("k", "v"):
      params[f"layer_{i}_{name}"] = eye_IKH.astype(t.param_dtype)
      params[f"layer_{i}_{name}_bias"] = zeros_KH.astype(t.param_dtype)
  return params


def rope(x_BSKH: jax.Array, config: tr.TransformerConfig, sign: int = 1) -> jax.Array:
  """Applies (sign=1) or undoes (sign=-1) `config`'s rotary at positions 0..S-1.

  Rotating by -angle is the exact inverse rotation: cos(-a) = cos a, sin(-a) = -sin a.
  """
  B, S = x_BSKH.shape[:2]
  positions_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  # pylint: disable-next=protected-access
  return tr._rope(x_BSKH, sign * positions_BS, tr.rope_frequencies(config))


def pre_rotary(cache: tr.KVCache, config: tr.TransformerConfig
               ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
  """(keys, values) of every layer of `config`'s cache in float32, keys with rotary undone."""
  return (tuple(rope(k.astype(jnp.float32), config, -1) for k in cache.k),
          tuple(v.astype(jnp.float32) for v in cache.v))


def predict_cache(config: KVPConfig, params, aux_cache: tr.KVCache) -> tr.KVCache:
  """The target's predicted cache from an auxiliary cache of the same [B, S].

  Every position is mapped; positions at or beyond `aux_cache.lengths` are
  stale in both caches (masked by position), and the lengths carry over.

  Returns:
    KVCache with the target's layers, post-rotary keys, dtype target.dtype.
  """
  aux_k, aux_v = pre_rotary(aux_cache, config.aux)
  keys, values = KVPredictor(config).apply({"params": params}, aux_k, aux_v)
  dtype = jnp.dtype(config.target.dtype)
  keys = tuple(rope(k, config.target).astype(dtype) for k in keys)
  values = tuple(v.astype(dtype) for v in values)
  return tr.KVCache(k=keys, v=values, lengths=aux_cache.lengths)


def prune_layers(config: tr.TransformerConfig, params, keep: tuple[int, ...]
                 ) -> tuple[tr.TransformerConfig, Any]:
  """A layer-pruned copy of a model: layers `keep` (renumbered 0..), everything else shared."""
  if not keep or any(not 0 <= j < config.num_layers for j in keep) or list(keep) != sorted(set(keep)):
    raise ValueError(f"kvp.keep_layers must be increasing layers in [0, {config.num_layers}), "
                     f"got {list(keep)}")
  pruned = {k: v for k, v in params.items() if not k.startswith("layer_")}
  for new, old in enumerate(keep):
    pruned[f"layer_{new}"] = params[f"layer_{old}"]
  # Copies, not views: training donates the auxiliary's buffers, never the target's.
  return config.replace(num_layers=len(keep)), jax.tree_util.tree_map(jnp.copy, pruned)
