"""Drafting with a feature draft (models/feature_draft.py) inside the speculative loop.

The draft reads pairs (f_t, x_{t+1}): the target's feature at t and the token
after it. The verify pass computes the target's features anyway
(transformer.forward_with_hidden), so the loop keeps the last pass's features
and hands them to the next drafting step.

Bookkeeping, for a row of committed length n (tokens x_0 .. x_{n-1}):

  * the target cache holds positions 0 .. n-2 (as for every draft);
  * `feats` [B, X, D], X = G + 1, holds the target features f_s .. f_{s+G} of the
    last verify pass, s = `feat_start` (= that pass's first position); after
    the pass accepted a tokens, n - 2 = s + a, so f_{n-2} is feats[a];
  * the draft cache holds the pairs of positions 0 .. s-1, all with true
    features.

An iteration's first draft step feeds the X pairs at positions s .. s+G (true
features, tokens x_{s+1} ..): it writes the pairs the last pass accepted and
reads its output at position n-2, whose head gives x_n. Entries it writes past
n-2 are stale (masked by position, then overwritten). Each further step feeds
one pair (its own previous output standing for the feature, the token it drew).
The verify pass then sets feats to its features and s to n-1.

After the prompt's prefill, s = P - 2 and only feats[0] = f_{P-2} is read: a
prompt needs at least 2 tokens. With num_draft="auto", X = the largest K + 1;
a K = 0 iteration runs the first draft step only (it keeps the draft cache in
step and gives auto its free acceptance observation) and hands the next one
its single feature.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from specsample.decoding import common
from specsample.models import feature_draft as fd
from specsample.models import transformer as tr


@flax.struct.dataclass(kw_only=True)
class FeatureDraftState:
  cache: tr.KVCache      # 1-layer cache of pairs; positions < feat_start hold true features
  feats: jax.Array       # [B, X, D] raw target features f_{feat_start} .. of the last target pass
  feat_start: jax.Array  # [B]


@flax.struct.dataclass
class Runtime:
  """A feature draft ready for the loop: static config, its params and the target arrays it reads."""
  config: fd.FeatureDraftConfig = flax.struct.field(pytree_node=False)
  params: dict
  shared: dict


def prefill(rt: Runtime, hidden_BPD: jax.Array, tokens_BL: jax.Array, prompt_len_B: jax.Array,
            num_draft: int, buffer_len: int) -> FeatureDraftState:
  """The draft state after the target's prefill, whose features are hidden_BPD."""
  B, P, _ = hidden_BPD.shape
  cache = tr.init_cache(rt.config.block, B, buffer_len)
  if P > 1:  # pairs t = 0 .. P-2; those at t >= prompt_len - 2 are rewritten later
    feats = fd.normalize(rt.shared, hidden_BPD[:, :P - 1], rt.config.block.norm_eps)
    _, _, cache = fd.forward(rt.config, rt.params, rt.shared, tokens_BL[:, 1:P], feats, cache)
  start_B = prompt_len_B - 2
  padded = jnp.pad(hidden_BPD, ((0, 0), (0, num_draft + 1), (0, 0)))
  feats_BXD = jax.vmap(lambda h, s: jax.lax.dynamic_slice_in_dim(h, s, num_draft + 1))(padded, start_B)
  return FeatureDraftState(cache=cache.with_lengths(start_B), feats=feats_BXD, feat_start=start_B)


def first(rt: Runtime, tokens_BL: jax.Array, length_B: jax.Array, state: FeatureDraftState):
  """The iteration's first draft step (module docstring): feeds the last pass's pairs and
  reads position n - 2. Returns (logits [B, V] for x_n, output [B, D], state with the
  cache valid up to n - 2)."""
  X = state.feats.shape[1]
  s_B = state.feat_start
  pair_tokens_BX = common.read_rows(tokens_BL, s_B + 1, X)
  feats_BXD = fd.normalize(rt.shared, state.feats, rt.config.block.norm_eps)
  logits_BXN, out_BXD, cache = fd.forward(rt.config, rt.params, rt.shared, pair_tokens_BX, feats_BXD,
                                          state.cache.with_lengths(s_B))
  read_B = (length_B - 2 - s_B)[:, None, None]
  logits_BN = jnp.take_along_axis(logits_BXN, read_B, axis=1)[:, 0]
  out_BD = jnp.take_along_axis(out_BXD, read_B, axis=1)[:, 0]
  logits_BV = fd.logits_full(rt.shared, logits_BN[:, None], rt.config.block.vocab_size)[:, 0]
  return logits_BV, out_BD, state.replace(cache=cache.with_lengths(length_B - 1))


def propose(rt: Runtime, draw, num_draft: int, tokens_BL: jax.Array, length_B: jax.Array,
            state: FeatureDraftState, keys, noise_GBV):
  """G draft tokens per row. draw(logits_BV, key, noise_BV, g, previous_B) -> (tokens [B],
  probs [B, V] or None), g the draft step and previous_B the token drawn at g - 1.

  Returns (tokens [B, G], probs [B, G, V] or None, the state after drafting).
  """
  vocab = rt.config.block.vocab_size
  logits_BV, out_BD, state = first(rt, tokens_BL, length_B, state)
  noise = lambda g: None if noise_GBV is None else noise_GBV[g]
  token_B, probs_BV = draw(logits_BV, keys[0], noise(0), 0, jnp.zeros_like(length_B))

  def step(carry, xs):
    cache, token_B, out_BD = carry
    step_key, noise_BV, g = xs
    logits_B1N, out_B1D, cache = fd.forward(rt.config, rt.params, rt.shared, token_B[:, None],
                                            out_BD[:, None], cache)
    next_B, probs_BV = draw(fd.logits_full(rt.shared, logits_B1N, vocab)[:, 0], step_key, noise_BV,
                            g, token_B)
    return (cache, next_B, out_B1D[:, 0]), (next_B, probs_BV)

  xs = (keys[1:], None if noise_GBV is None else noise_GBV[1:], jnp.arange(1, num_draft))
  (cache, _, _), (rest_GB, rest_probs_GBV) = jax.lax.scan(step, (state.cache, token_B, out_BD), xs)
  tokens_BG = jnp.concatenate([token_B[:, None], rest_GB.T], axis=1)
  state = state.replace(cache=cache)
  if probs_BV is None:
    return tokens_BG, None, state
  probs_BGV = jnp.concatenate([probs_BV[:, None], rest_probs_GBV.transpose(1, 0, 2)], axis=1)
  return tokens_BG, probs_BGV, state


def after_verify(state: FeatureDraftState, hidden_BTD: jax.Array,
                 length_before_B: jax.Array) -> FeatureDraftState:
  """The state for the next iteration: the verify pass's T features (T <= X; auto's
  smaller K and K = 0 pass fewer), starting at n - 1."""
  start_B = length_before_B - 1
  X, T = state.feats.shape[1], hidden_BTD.shape[1]
  feats_BXD = jnp.pad(hidden_BTD, ((0, 0), (0, X - T), (0, 0))).astype(state.feats.dtype)
  return state.replace(cache=state.cache.with_lengths(start_B), feats=feats_BXD, feat_start=start_B)
