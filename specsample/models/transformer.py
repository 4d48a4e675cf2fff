"""Chinchilla-style decoder-only transformer with an explicit KV cache.

Dimension letters, used in every einsum and shape comment of the package:

  B batch          T new tokens in this call    S cache length (max positions)
  D model width    F MLP width                  V vocabulary
  N query heads    K key/value heads            H head dim
  R query heads per kv head (N = K * R)         G draft lookahead (the paper's K)

Architecture (Chinchilla / Gopher family, modernised where noted):
  * pre-norm RMSNorm, no biases (optional q/k/v biases, `attn_bias`, for Qwen2);
  * rotary position embeddings on queries and keys (split-half form);
  * MLP is SwiGLU (`down(silu(gate x) * up x)`) or GELU (`down(gelu(up x))`);
  * optional grouped-query attention (`num_kv_heads < num_heads`);
  * tied or untied input/output embeddings;
  * compute in `config.dtype` (float32 on CPU, bfloat16 on accelerators),
    parameters in `config.param_dtype`, logits always float32.

One forward serves every use:
  * training: `forward(params, tokens)` with no cache, causal over T;
  * prefill, 1-token decode and T-token extension: `forward(params, tokens,
    cache)` writes the T new keys/values of row b at positions
    `cache.lengths[b] .. cache.lengths[b] + T - 1` and attends to every cached
    position <= its own. Rows may sit at different offsets, which is what
    speculative verification needs after rows accepted different numbers of
    draft tokens.

The cache is a pytree (`KVCache`) passed in and returned. Entries past a row's
length are stale, not zeroed: they are masked by position, and rolling back a
rejected suffix is just lowering `lengths`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16", "float16")
_MLP_TYPES = ("swiglu", "gelu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of one decoder. Frozen and hashable: a jit static arg."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  mlp_type: str = "swiglu"
  tie_embeddings: bool = True
  max_seq_len: int = 1024  # positions a KV cache may hold (S upper bound)
  rope_base: float = 10_000.0
  # Llama 3 rope scaling: (factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings); () is plain rotary.
  rope_llama3: tuple[float, ...] = ()
  attn_bias: bool = False  # q/k/v biases (Qwen2); off keeps old param trees
  norm_eps: float = 1e-6
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"

  def __post_init__(self):
    # config.json stores tuples as lists; a list would make the config unhashable.
    object.__setattr__(self, "rope_llama3", tuple(self.rope_llama3))

  def validate(self) -> "TransformerConfig":
    """Raises ValueError naming the first invalid field; returns self."""
    for name in ("vocab_size", "d_model", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"model.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"model.num_kv_heads={self.num_kv_heads} must divide "
          f"model.num_heads={self.num_heads}")
    if self.num_heads * self.head_dim != self.d_model:
      raise ValueError(
          f"model.num_heads * model.head_dim must equal model.d_model: "
          f"{self.num_heads} * {self.head_dim} != {self.d_model}")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim must be even (rotary), got {self.head_dim}")
    if self.mlp_type not in _MLP_TYPES:
      raise ValueError(f"model.mlp_type must be one of {_MLP_TYPES}, got {self.mlp_type!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"model.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")
    if not self.rope_base > 0:
      raise ValueError(f"model.rope_base must be > 0, got {self.rope_base!r}")
    if len(self.rope_llama3) not in (0, 4):
      raise ValueError("model.rope_llama3 must be () or (factor, low_freq_factor, "
                       f"high_freq_factor, original_max_position_embeddings), got {self.rope_llama3!r}")
    return self

  def replace(self, **kwargs) -> "TransformerConfig":
    return dataclasses.replace(self, **kwargs)


@flax.struct.dataclass
class KVCache:
  """Per-layer keys and values plus per-row lengths.

  Attributes:
    k: one array per layer, [B, S, K, H].
    v: one array per layer, [B, S, K, H].
    lengths: [B] int32, valid positions per row; the next write goes there.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  lengths: jax.Array

  @property
  def max_len(self) -> int:
    return self.k[0].shape[1]

  def with_lengths(self, lengths: jax.Array) -> "KVCache":
    """Rollback or advance: entries at positions >= lengths become stale."""
    return self.replace(lengths=lengths.astype(jnp.int32))

  def padded_to(self, max_len: int) -> "KVCache":
    """The same entries in a longer cache (positions >= the old max_len empty)."""
    pad = lambda x: jnp.pad(x, ((0, 0), (0, max_len - x.shape[1]), (0, 0), (0, 0)))
    return self.replace(k=tuple(map(pad, self.k)), v=tuple(map(pad, self.v)))


def init_cache(config: TransformerConfig, batch: int, max_len: int) -> KVCache:
  """An empty cache for `batch` rows and `max_len` positions."""
  if max_len > config.max_seq_len:
    raise ValueError(
        f"cache length {max_len} exceeds model.max_seq_len={config.max_seq_len}")
  shape = (batch, max_len, config.num_kv_heads, config.head_dim)
  dtype = jnp.dtype(config.dtype)
  zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(k=zeros(), v=zeros(), lengths=jnp.zeros((batch,), jnp.int32))


def rope_frequencies(config: TransformerConfig) -> jax.Array:
  """Rotary inverse frequencies [H / 2], float32, with Llama 3 scaling if set."""
  half = config.head_dim // 2
  freq = config.rope_base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if not config.rope_llama3:
    return freq
  # As transformers' _compute_llama3_parameters: long wavelengths are divided
  # by `factor`, short ones kept, the band between interpolated smoothly.
  factor, low, high, old_len = config.rope_llama3
  wavelen = 2 * jnp.pi / freq
  smooth = (old_len / wavelen - low) / (high - low)
  scaled = jnp.where(wavelen > old_len / low, freq / factor, freq)
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return jnp.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def _rope(x_BTNH: jax.Array, positions_BT: jax.Array, freq_H: jax.Array) -> jax.Array:
  """Rotary embedding, split-half form, computed in float32."""
  angle_BTH = positions_BT[..., None].astype(jnp.float32) * freq_H
  sin, cos = jnp.sin(angle_BTH)[:, :, None], jnp.cos(angle_BTH)[:, :, None]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def _write_rows(cache_BSKH: jax.Array, new_BTKH: jax.Array, start_B: jax.Array) -> jax.Array:
  """cache[b, start[b]:start[b]+T] = new[b], each row at its own offset.

  dynamic_update_slice clamps starts that would overflow; callers size the
  cache so that never happens (decoding validates it before compiling).
  """
  write = lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (s, 0, 0))
  return jax.vmap(write)(cache_BSKH, new_BTKH.astype(cache_BSKH.dtype), start_B)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BTD):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x_BTD.shape[-1],), self.param_dtype)
    x = x_BTD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * scale.astype(jnp.float32)).astype(self.dtype)


EMBED_INIT_STD = 0.02


def _dense_init(fan_in: int, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=fan_in ** -0.5), axes)


class Attention(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, layer_cache, mask_TS=None):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    D, N, K, H = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    w_q = self.param("q", _dense_init(D, ("embed", "heads", "head_dim")), (D, N, H), pdtype)
    w_k = self.param("k", _dense_init(D, ("embed", "kv_heads", "head_dim")), (D, K, H), pdtype)
    w_v = self.param("v", _dense_init(D, ("embed", "kv_heads", "head_dim")), (D, K, H), pdtype)
    w_o = self.param("o", _dense_init(N * H, ("heads", "head_dim", "embed")), (N, H, D), pdtype)

    q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, w_q.astype(dtype))
    k_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, w_k.astype(dtype))
    v_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, w_v.astype(dtype))
    if cfg.attn_bias:
      bias = lambda name, axes, shape: self.param(
          name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape, pdtype)
      q_BTNH += bias("q_bias", ("heads", "head_dim"), (N, H)).astype(dtype)
      k_BTKH += bias("k_bias", ("kv_heads", "head_dim"), (K, H)).astype(dtype)
      v_BTKH += bias("v_bias", ("kv_heads", "head_dim"), (K, H)).astype(dtype)
    freq_H = rope_frequencies(cfg)
    q_BTNH = _rope(q_BTNH, positions_BT, freq_H)
    k_BTKH = _rope(k_BTKH, positions_BT, freq_H)

    if layer_cache is None:
      # Training / full forward: attend within the T new tokens.
      keys_BSKH, values_BSKH, key_pos_BS = k_BTKH, v_BTKH, positions_BT
      new_cache = None
    else:
      k_cache, v_cache, start_B = layer_cache
      keys_BSKH = _write_rows(k_cache, k_BTKH, start_B)
      values_BSKH = _write_rows(v_cache, v_BTKH, start_B)
      S = keys_BSKH.shape[1]
      key_pos_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (x_BTD.shape[0], S))
      new_cache = (keys_BSKH, values_BSKH)

    # Grouped-query attention: each kv head serves R query heads.
    R = N // K
    q_BTKRH = q_BTNH.reshape(*q_BTNH.shape[:2], K, R, H)
    logits_BKRTS = jnp.einsum("BTKRH,BSKH->BKRTS", q_BTKRH, keys_BSKH.astype(dtype))
    logits_BKRTS = logits_BKRTS.astype(jnp.float32) * (H ** -0.5)
    # Causal by absolute position; also hides stale cache entries, which always
    # sit at positions beyond the newest query of their row.
    mask_BTS = key_pos_BS[:, None, :] <= positions_BT[:, :, None]
    if mask_TS is not None:  # an explicit pattern (feature-draft unrolled training), all rows
      mask_BTS = jnp.broadcast_to(mask_TS, mask_BTS.shape)
    logits_BKRTS = jnp.where(mask_BTS[:, None, None], logits_BKRTS, -1e30)
    probs_BKRTS = jax.nn.softmax(logits_BKRTS, axis=-1).astype(dtype)
    out_BTKRH = jnp.einsum("BKRTS,BSKH->BTKRH", probs_BKRTS, values_BSKH.astype(dtype))
    # One contraction over N * H: written as "BTNH,NHD->BTD", XLA:CPU transposed
    # w_o to its attention output's layout every call, a D x D copy per layer.
    out_BTE = out_BTKRH.reshape(*q_BTNH.shape[:2], N * H)
    return jnp.einsum("BTE,ED->BTD", out_BTE, w_o.reshape(N * H, D).astype(dtype)), new_cache


class Mlp(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    D, F = cfg.d_model, cfg.mlp_dim
    w_up = self.param("up", _dense_init(D, ("embed", "mlp")), (D, F), pdtype)
    w_down = self.param("down", _dense_init(F, ("mlp", "embed")), (F, D), pdtype)
    up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, w_up.astype(dtype))
    if cfg.mlp_type == "swiglu":
      w_gate = self.param("gate", _dense_init(D, ("embed", "mlp")), (D, F), pdtype)
      gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, w_gate.astype(dtype))
      hidden_BTF = jax.nn.silu(gate_BTF) * up_BTF
    else:
      hidden_BTF = jax.nn.gelu(up_BTF)
    return jnp.einsum("BTF,FD->BTD", hidden_BTF, w_down.astype(dtype))


class Block(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, layer_cache, mask_TS=None):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name=name)
    attn_out, new_cache = Attention(cfg, name="attn")(norm("attn_norm")(x_BTD), positions_BT, layer_cache,
                                                      mask_TS)
    x_BTD = x_BTD + attn_out
    x_BTD = x_BTD + Mlp(cfg, name="mlp")(norm("mlp_norm")(x_BTD))
    return x_BTD, new_cache


class Transformer(nn.Module):
  """Decoder-only LM. Call with tokens [B, T] and an optional KVCache."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BT: jax.Array, cache: KVCache | None = None,
               return_hidden: bool = False):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    B, T = tokens_BT.shape
    embedding_VD = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(EMBED_INIT_STD),
                                                  ("vocab", "embed")),
        (cfg.vocab_size, cfg.d_model), pdtype)
    # Small embeddings, unscaled (GPT-2 / Megatron): the blocks' outputs, not the
    # input token, dominate the residual stream, so a tied unembedding does not
    # start out predicting the current token. Measured on draft_small, 100 steps:
    # val loss 5.96 here vs 7.25 with unit-variance embeddings scaled by sqrt(D).
    x_BTD = jnp.take(embedding_VD, tokens_BT, axis=0).astype(dtype)

    start_B = jnp.zeros((B,), jnp.int32) if cache is None else cache.lengths
    positions_BT = start_B[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]

    new_k, new_v = [], []
    for i in range(cfg.num_layers):
      layer_cache = None if cache is None else (cache.k[i], cache.v[i], start_B)
      x_BTD, layer_new = Block(cfg, name=f"layer_{i}")(x_BTD, positions_BT, layer_cache)
      if layer_new is not None:
        new_k.append(layer_new[0])
        new_v.append(layer_new[1])
    hidden_BTD = x_BTD  # the residual stream after the last block, before the final norm
    x_BTD = RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype), pdtype, name="final_norm")(x_BTD)

    # Logits in float32 whatever the compute dtype: sampling maths needs it.
    if cfg.tie_embeddings:
      unembed_DV = embedding_VD.T
    else:
      unembed_DV = self.param(
          "unembed", _dense_init(cfg.d_model, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size), pdtype)
    logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD.astype(jnp.float32), unembed_DV.astype(jnp.float32))

    new_cache = None if cache is None else KVCache(k=tuple(new_k), v=tuple(new_v), lengths=start_B + T)
    return (logits_BTV, new_cache, hidden_BTD) if return_hidden else (logits_BTV, new_cache)


def init_params(config: TransformerConfig, rng: jax.Array) -> Any:
  """Plain (unboxed) parameter pytree."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = Transformer(config.validate()).init(rng, tokens)
  return nn.meta.unbox(variables["params"])


def param_shapes(config: TransformerConfig) -> Any:
  """ShapeDtypeStructs of the parameters, without allocating (jax.eval_shape)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def logical_axes(config: TransformerConfig) -> Any:
  """Logical axis names of every parameter, e.g. PartitionSpec('embed', 'mlp')."""
  abstract = jax.eval_shape(
      lambda: Transformer(config.validate()).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  return nn.get_partition_spec(abstract)["params"]


def count_params(tree: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def forward(config: TransformerConfig, params: Any, tokens_BT: jax.Array,
            cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
  """Logits [B, T, V] float32 and the updated cache (lengths advanced by T)."""
  return Transformer(config).apply({"params": params}, tokens_BT, cache)


def forward_with_hidden(config: TransformerConfig, params: Any, tokens_BT: jax.Array,
                        cache: KVCache | None = None
                        ) -> tuple[jax.Array, KVCache | None, jax.Array]:
  """forward, plus the last block's output [B, T, D] (before the final norm): the
  features a feature-conditioned draft reads."""
  return Transformer(config).apply({"params": params}, tokens_BT, cache, return_hidden=True)
