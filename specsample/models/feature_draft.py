"""A draft that reads the target's features (EAGLE, Li et al. 2024) with a frequent-token head (FR-Spec).

The target already knows the next token; its last hidden state says so. The
draft is one decoder block over pairs

    (feature f_t of the target at position t, token x_{t+1})  ->  g_{t+1}

predicting the target's feature one position ahead; the target's own final
norm and embedding (shared, frozen) turn norm(g_{t+1}) into logits for x_{t+2}.
Drafting G tokens runs the block G times, each on its previous output in
place of the feature it does not have yet.

    in_BTD  = fc([embed(x_{t+1}) ; norm(f_t)])           fc: [2D, D] + bias
    g_BTD   = Block(in_BTD)                              one Llama block, own KV cache
    logits  = norm(g) @ embedding[head_ids].T            only the N head tokens

Features enter normalised by the target's final norm (the scale its head
reads). The head scores only `head_ids`, the N tokens the target most often
predicts (FR-Spec, Zhao et al. 2025): with a 49,152-token vocabulary the full
head would cost 7x the block. Every other token gets probability 0, which the
rejection step corrects like any other draft error, so the output is still the
target's. `logits_full` scatters the N logits into the vocabulary (-inf elsewhere).

Parameters of the draft: fc (weight, bias) and block (one transformer.Block).
head_ids is data, saved beside them; the embedding and final norm scale are
read from the target's parameters at call time.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from specsample import paths
from specsample.models import transformer as tr

KIND = "feature_draft"  # config.json's "kind": what tells this folder from a model folder


@dataclasses.dataclass(frozen=True)
class FeatureDraftConfig:
  """Static shape of a feature draft. Frozen and hashable: a jit static arg.

  block: the one block's TransformerConfig (d_model = the target's, num_layers = 1,
    vocab_size = the target's); head_size: N, the number of head tokens.
  """
  block: tr.TransformerConfig
  head_size: int

  def validate(self, target: tr.TransformerConfig | None = None) -> "FeatureDraftConfig":
    self.block.validate()
    if self.block.num_layers != 1:
      raise ValueError(f"feature draft: block.num_layers must be 1, got {self.block.num_layers}")
    if not 1 <= self.head_size <= self.block.vocab_size:
      raise ValueError(f"feature draft: head_size must be in [1, {self.block.vocab_size}], "
                       f"got {self.head_size}")
    if target is not None and (target.d_model, target.vocab_size) != (self.block.d_model,
                                                                       self.block.vocab_size):
      raise ValueError(f"feature draft made for d_model={self.block.d_model}, vocab="
                       f"{self.block.vocab_size}; the target has d_model={target.d_model}, "
                       f"vocab={target.vocab_size}")
    return self


def config_for(target: tr.TransformerConfig, head_size: int) -> FeatureDraftConfig:
  """A draft block shaped like one of the target's blocks."""
  return FeatureDraftConfig(target.replace(num_layers=1), head_size).validate(target)


class _Draft(nn.Module):
  config: FeatureDraftConfig

  @nn.compact
  def __call__(self, embeds_BTD, feats_BTD, positions_BT, layer_cache, mask_TS=None):
    cfg = self.config.block
    D = cfg.d_model
    w_fc = self.param("fc", nn.initializers.normal(stddev=(2 * D) ** -0.5), (2 * D, D),
                      jnp.dtype(cfg.param_dtype))
    b_fc = self.param("fc_bias", nn.initializers.zeros, (D,), jnp.dtype(cfg.param_dtype))
    x_BTD = jnp.concatenate([embeds_BTD, feats_BTD], axis=-1) @ w_fc.astype(cfg.dtype) + b_fc
    return tr.Block(cfg, name="block")(x_BTD.astype(cfg.dtype), positions_BT, layer_cache, mask_TS)


def init_params(config: FeatureDraftConfig, rng: jax.Array, target_params=None) -> Any:
  """Draft parameters. With target_params, the block starts as the target's last
  block and fc as [I; I] (input = embedding + feature), else at random."""
  B, T, D = 1, 1, config.block.d_model
  zeros = jnp.zeros((B, T, D), jnp.float32)
  params = _Draft(config).init(rng, zeros, zeros, jnp.zeros((B, T), jnp.int32), None)["params"]
  params = nn.meta.unbox(params)
  if target_params is not None:
    last = max(int(k.split("_")[1]) for k in target_params if k.startswith("layer_"))
    params = dict(params, block=jax.tree_util.tree_map(jnp.array, target_params[f"layer_{last}"]),
                  fc=jnp.concatenate([jnp.eye(D), jnp.eye(D)]).astype(params["fc"].dtype))
  return params


def rms_norm(x_BTD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """The target's final RMSNorm (transformer.RMSNorm) as a function, float32."""
  x = x_BTD.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale_D.astype(jnp.float32)


def shared_from(target_cfg: tr.TransformerConfig, target_params, head_ids) -> dict:
  """The target arrays a feature draft uses, as a pytree (jit-friendly): embedding,
  final norm scale, the gathered head and head_ids."""
  if not target_cfg.tie_embeddings:
    head_VD = jnp.asarray(target_params["unembed"]).T
  else:
    head_VD = target_params["embedding"]
  head_ids = jnp.asarray(head_ids, jnp.int32)
  return {"embedding": target_params["embedding"], "norm": target_params["final_norm"]["scale"],
          "head": jnp.take(head_VD, head_ids, axis=0).T.astype(jnp.float32), "head_ids": head_ids}


def normalize(shared: dict, feats_BTD: jax.Array, eps: float) -> jax.Array:
  """A target feature as the draft reads it: the target's final norm applied."""
  return rms_norm(feats_BTD, shared["norm"], eps)


def forward(config: FeatureDraftConfig, params, shared: dict, tokens_BT: jax.Array,
            norm_feats_BTD: jax.Array, cache: tr.KVCache | None = None):
  """One or more pair positions: (head logits [B, T, N], normalised outputs [B, T, D], cache).

  tokens_BT: x_{t+1}; norm_feats_BTD: normalize(f_t) (or the draft's own previous
  output); cache: a 1-layer KVCache (transformer.init_cache(config.block, ...)),
  positions written at cache.lengths.. as in transformer.forward.
  """
  cfg = config.block
  B, T = tokens_BT.shape
  embeds_BTD = jnp.take(shared["embedding"], tokens_BT, axis=0).astype(cfg.dtype)
  start_B = jnp.zeros((B,), jnp.int32) if cache is None else cache.lengths
  positions_BT = start_B[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
  layer_cache = None if cache is None else (cache.k[0], cache.v[0], start_B)
  out_BTD, new = _Draft(config).apply({"params": params}, embeds_BTD,
                                      norm_feats_BTD.astype(cfg.dtype), positions_BT, layer_cache)
  norm_out_BTD = rms_norm(out_BTD, shared["norm"], cfg.norm_eps)
  logits_BTN = jnp.einsum("BTD,DN->BTN", norm_out_BTD, shared["head"])
  new_cache = None if cache is None else tr.KVCache(k=(new[0],), v=(new[1],), lengths=start_B + T)
  return logits_BTN, norm_out_BTD, new_cache


def unroll_masks(T: int, steps: int) -> np.ndarray:
  """[steps, T, steps * T] attention patterns of `unrolled_forward`.

  Step k's query at position p stands for drafting's (k+1)-th step from the
  committed pair p - k: it sees the true pairs at positions <= p - k (key block
  0) and, of each earlier step i = 1..k, the one key at position p - (k - i)
  that its own chain wrote (key block i).
  """
  p, j = np.arange(T)[:, None], np.arange(T)[None, :]
  masks = np.zeros((steps, T, steps * T), bool)
  for k in range(steps):
    masks[k, :, :T] = j <= p - k
    for i in range(1, k + 1):
      masks[k, :, i * T:(i + 1) * T] = j == p - (k - i)
  return masks


def unrolled_forward(config: FeatureDraftConfig, params, shared: dict, tokens_BT: jax.Array,
                     norm_feats_BTD: jax.Array, steps: int) -> list[tuple[jax.Array, jax.Array]]:
  """Drafting's first `steps` steps from every position of a window at once
  (training-time test, as in EAGLE-3): [(head logits [B, T, N], outputs [B, T, D])] per step.

  Step 0 is `forward` on true features. Step k reads, at position p, step k-1's
  output at p - 1 in place of the feature, the same token x_{p+1}, and attends as
  in `unroll_masks`, so it sees exactly what the loop's (k+1)-th draft step
  sees; its output at p predicts the same target as step 0's at p. Positions
  p < k have no chain and are the caller's to weight out.
  """
  cfg = config.block
  B, T = tokens_BT.shape
  embeds_BTD = jnp.take(shared["embedding"], tokens_BT, axis=0).astype(cfg.dtype)
  positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  cache = tr.init_cache(cfg, B, steps * T)
  keys, values = cache.k[0], cache.v[0]
  masks = unroll_masks(T, steps)
  feats_BTD, outs = norm_feats_BTD, []
  for k in range(steps):
    start_B = jnp.full((B,), k * T, jnp.int32)
    out_BTD, (keys, values) = _Draft(config).apply({"params": params}, embeds_BTD,
                                                   feats_BTD.astype(cfg.dtype), positions_BT,
                                                   (keys, values, start_B), jnp.asarray(masks[k]))
    norm_out_BTD = rms_norm(out_BTD, shared["norm"], cfg.norm_eps)
    outs.append((jnp.einsum("BTD,DN->BTN", norm_out_BTD, shared["head"]), norm_out_BTD))
    feats_BTD = jnp.pad(norm_out_BTD[:, :-1], ((0, 0), (1, 0), (0, 0)))
  return outs


def logits_full(shared: dict, logits_BTN: jax.Array, vocab: int) -> jax.Array:
  """Head logits placed in the full vocabulary [B, T, V]; -inf outside head_ids."""
  full = jnp.full(logits_BTN.shape[:-1] + (vocab,), -jnp.inf, jnp.float32)
  return full.at[..., shared["head_ids"]].set(logits_BTN.astype(jnp.float32))


def frequent_tokens(counts_V: np.ndarray, size: int) -> np.ndarray:
  """The `size` ids with the highest counts (ties by id), sorted by id."""
  order = np.lexsort((np.arange(len(counts_V)), -counts_V))
  return np.sort(order[:size]).astype(np.int32)


@dataclasses.dataclass
class FeatureDraft:
  """A loaded feature draft: what generate(..., draft=...) takes."""
  config: FeatureDraftConfig
  params: Any
  head_ids: np.ndarray
  tokenizer_id: str | None = None
  meta: dict = dataclasses.field(default_factory=dict)


def is_feature_draft(directory: str) -> bool:
  path = os.path.join(directory, "config.json")
  return paths.isfile(path) and json.loads(paths.read_text(path)).get("kind") == KIND


def save(directory: str, config: FeatureDraftConfig, params, head_ids, *,
         tokenizer_id: str | None = None, extra: dict | None = None) -> str:
  """params.npz (float32 leaves and head_ids), then config.json, the commit marker:
  an interrupted save leaves the previous draft (or none), never half of one."""
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf, np.float32)
          for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(params))}
  buf = io.BytesIO()
  np.savez(buf, head_ids=np.asarray(head_ids, np.int32), **flat)
  paths.write_atomic({os.path.join(directory, "params.npz"): buf.getvalue()})
  meta = {"kind": KIND, "block": dataclasses.asdict(config.block), "head_size": config.head_size,
          "tokenizer_id": tokenizer_id, **(extra or {})}
  paths.write_atomic({os.path.join(directory, "config.json"): json.dumps(meta, indent=2)})
  return directory


def load(directory: str) -> FeatureDraft:
  """A folder written by `save`."""
  meta = json.loads(paths.read_text(os.path.join(directory, "config.json")))
  if meta.get("kind") != KIND:
    raise ValueError(f"{directory} is not a feature draft (config.json kind {meta.get('kind')!r})")
  config = FeatureDraftConfig(tr.TransformerConfig(**meta["block"]), meta["head_size"]).validate()
  with np.load(io.BytesIO(paths.read_bytes(os.path.join(directory, "params.npz")))) as f:
    arrays = {k: f[k] for k in f.files}
  head_ids = arrays.pop("head_ids")
  template = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  leaves = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(template):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name not in arrays or arrays[name].shape != leaf.shape:
      raise ValueError(f"{directory}: parameter {name} missing or of another shape")
    leaves.append(jnp.asarray(arrays[name], config.block.param_dtype))
  params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
  return FeatureDraft(config, params, head_ids, meta.get("tokenizer_id"), meta)
