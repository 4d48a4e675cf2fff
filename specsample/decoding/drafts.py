"""Where the speculative loop's proposals come from: a draft model, a feature draft, or prompt lookup.

The loop (speculative.py) is the same for all three; what differs is what the
draft keeps between iterations (its "state"), how it proposes G tokens, and
how it rolls back after verification. The static `draft_cfg` says which:

  tr.TransformerConfig     a draft model (the paper's): state = its KVCache
  WithLookup               a draft model or feature draft whose proposals give
                           way to prompt lookup where the row has a match
                           (the inner draft's state)
  fd.FeatureDraftConfig    a feature draft (models/feature_draft.py) reading the
                           target's last features: state = FeatureDraftState,
                           draft_params = {"params", "shared"}
  lookup.PromptLookup      n-gram lookup in the row's own tokens
                           (decoding/lookup.py): state = None, no parameters

Model draft cache bookkeeping. The draft cache holds the committed tokens
except the current one, like the target's. The draft, however, never feeds
its own last proposal x_G, so after a fully accepted block its cache lacks
x_G's position. Rather than spend a whole extra draft step every iteration to
write it, the first draft step of an iteration feeds TWO tokens, [previous,
current], at positions [length - 2, length - 1]: it re-writes the previous
token's entry (identical, up to float rounding, when it was already there)
and fills the gap when it was not. For a row whose length is 1 (a one-token
prompt) there is no previous token: it feeds [current, pad] at [0, 1] and
reads the logits of position 0; the pad entry is overwritten by x_1 right
after. The feature draft's bookkeeping is in decoding/feature_drafting.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from specsample.decoding import common, feature_drafting, lookup
from specsample.models import feature_draft as fd
from specsample.models import transformer as tr


@dataclasses.dataclass(frozen=True)
class WithLookup:
  """A draft model or feature draft combined with prompt lookup. Static (hashable).

  At draft step g, a row whose lookup copied more than g tokens, and whose
  draft so far follows the copy, proposes the copied token (a point mass) and
  the model reads it as its next input; otherwise the model draws as usual.
  Under sampling, with lookup.min_draft_prob > 0, a copy is used only where the
  model's sampling distribution gives it at least that probability: a point
  mass is accepted with probability q(x), the model's draw with sum min(p, q),
  so a copy the model finds unlikely is the worse proposal. Which one proposes
  depends only on the committed tokens and the tokens drafted before it, so
  every proposal is drawn from a distribution the rejection step knows: as
  lossless as either part. The model runs for the whole batch, so this costs
  what the model draft costs, except in a "copy-only" iteration: when every
  live row copies all G tokens and no gate applies (greedy, or
  min_draft_prob = 0), the proposals are the G copies whatever the model
  draws, so its G steps are skipped and one pass keeps its state in step
  (`_copy_only`); the proposals, hence the outputs, are the same.

  `model` is a draft model's TransformerConfig or a feature draft's
  FeatureDraftConfig (then the draft reads the copied token like its own draw,
  with its own output standing for the feature, as for every drafted token).
  """
  model: tr.TransformerConfig | fd.FeatureDraftConfig
  lookup: lookup.PromptLookup

  @property
  def vocab_size(self) -> int:
    return getattr(self.model, "block", self.model).vocab_size


def kind(draft_cfg) -> str:
  """'model', 'model+lookup', 'feature', 'feature+lookup' or 'lookup'."""
  if isinstance(draft_cfg, tr.TransformerConfig):
    return "model"
  if isinstance(draft_cfg, WithLookup):
    return kind(draft_cfg.model) + "+lookup"
  if isinstance(draft_cfg, fd.FeatureDraftConfig):
    return "feature"
  if isinstance(draft_cfg, lookup.PromptLookup):
    return "lookup"
  raise TypeError(f"unknown draft config {type(draft_cfg).__name__}")


def needs_features(draft_cfg) -> bool:
  """True when the target passes must hand their last hidden states to the draft."""
  return kind(draft_cfg) in ("feature", "feature+lookup")


def _runtime(draft_cfg, draft_params) -> feature_drafting.Runtime:
  config = draft_cfg.model if isinstance(draft_cfg, WithLookup) else draft_cfg
  return feature_drafting.Runtime(config, draft_params["params"], draft_params["shared"])


def prefill(draft_cfg, draft_params, tokens_BL, prompt_len_B, prompt_width: int,
            spec: common.DecodeSpec, target_hidden_BPD=None) -> Any:
  """The draft's state after the prompt (target_hidden_BPD: the target prefill's features)."""
  which = kind(draft_cfg)
  if which in ("model", "model+lookup"):
    return common.prefill(model_config(draft_cfg), draft_params, tokens_BL, prompt_len_B,
                          prompt_width)
  if needs_features(draft_cfg):
    with jax.named_scope("draft_forward"):
      return feature_drafting.prefill(_runtime(draft_cfg, draft_params), target_hidden_BPD,
                                      tokens_BL, prompt_len_B, spec.num_draft, spec.buffer_len)
  return None


def model_config(draft_cfg) -> tr.TransformerConfig:
  """The draft model's config (of a model or model+lookup draft)."""
  return draft_cfg.model if isinstance(draft_cfg, WithLookup) else draft_cfg


def first_logits(parts, draft_cfg, draft_params, tokens_BL, length_B, state):
  """The draft's distribution for position `length` (auto's K = 0 observation).
  Returns (logits [B, V], the draft's state after it)."""
  if needs_features(draft_cfg):
    with jax.named_scope("draft_forward"):
      logits_BV, _, state = feature_drafting.first(_runtime(draft_cfg, draft_params), tokens_BL,
                                                   length_B, state)
    return logits_BV, state
  return _model_first(parts, tokens_BL, length_B, state)


def _model_first(parts, tokens_BL, length_B, cache: tr.KVCache):
  """A draft model's distribution for position `length` (feeding [previous, current],
  module docstring). Returns (logits [B, V], cache at length)."""
  start_B = jnp.maximum(length_B - 2, 0)
  pair_B2 = common.read_rows(tokens_BL, start_B, 2)      # [previous, current] (or [current, pad])
  logits_B2V, cache = parts.draft(pair_B2, cache.with_lengths(start_B))
  read_B = length_B - 1 - start_B                         # 1, or 0 for length-1 rows
  logits_BV = jnp.take_along_axis(logits_B2V, read_B[:, None, None], axis=1)[:, 0]
  return logits_BV, cache.with_lengths(length_B)


def propose(parts, draft_cfg, draft_params, num_draft: int, tokens_BL, length_B, state, key,
            noise_BXV, live_B=None):
  """G proposals per row: (tokens [B, G], probs [B, G, V] f32 or None under
  coupling='gumbel', the draft's state). noise_BXV: the block's Gumbel noise, or None;
  live_B: the rows not done (None: all), for WithLookup's copy-only iterations."""
  if isinstance(draft_cfg, lookup.PromptLookup):
    with jax.named_scope("draft_forward"):
      tokens_BG, _ = lookup.propose(draft_cfg, tokens_BL, length_B, num_draft)
    return tokens_BG, _point_masses(parts, tokens_BG), None
  if not isinstance(draft_cfg, WithLookup):
    draw = lambda logits_BV, key, noise_BV, g, previous_B: parts.draw(logits_BV, key, noise_BV)
    return _propose_model(parts, draft_cfg, draft_params, draw, num_draft, tokens_BL, length_B,
                          state, key, noise_BXV)
  with jax.named_scope("draft_forward"):
    copied_BG, matched_B = lookup.propose(draft_cfg.lookup, tokens_BL, length_B, num_draft)
  gate = draft_cfg.lookup.min_draft_prob > 0 and not parts.spec.sampling.greedy
  draw = _draw_with_lookup(parts, draft_cfg.lookup, gate, copied_BG, matched_B)
  with_model = lambda: _propose_model(parts, draft_cfg, draft_params, draw, num_draft, tokens_BL,
                                      length_B, state, key, noise_BXV)
  if gate:
    return with_model()
  full_B = matched_B >= num_draft
  all_copied = jnp.all(full_B if live_B is None else full_B | ~live_B)
  copy_only = lambda: _copy_only(parts, draft_cfg, draft_params, tokens_BL, length_B, state,
                                 copied_BG)
  return jax.lax.cond(all_copied, copy_only, with_model)


def _point_masses(parts, tokens_BG):
  """A copy's proposal distribution, one-hot (None under coupling='gumbel'): the
  rejection step accepts x with probability q(x)."""
  return None if parts.gumbel else jax.nn.one_hot(tokens_BG, parts.vocab_size, dtype=jnp.float32)


def _copy_only(parts, draft_cfg: WithLookup, draft_params, tokens_BL, length_B, state, copied_BG):
  """A WithLookup iteration whose proposals are all copies: the copies as point masses,
  and the model's state kept in step without its G draft steps. A feature draft runs
  its first step only (it writes the pairs the last pass accepted; what it drafts past
  them is rewritten by the next one, feature_drafting.py). A draft model feeds
  [previous, current, copies] in one pass, so its cache holds every copy that the
  target accepts (its next iteration re-feeds [previous, current] from length - 2)."""
  G = copied_BG.shape[1]
  with jax.named_scope("draft_forward"):
    if needs_features(draft_cfg):
      _, _, state = feature_drafting.first(_runtime(draft_cfg, draft_params), tokens_BL, length_B,
                                           state)
    else:
      start_B = jnp.maximum(length_B - 2, 0)
      block_BX = common.read_rows(common.write_rows(tokens_BL, copied_BG, length_B), start_B, G + 1)
      _, state = parts.draft(block_BX, state.with_lengths(start_B))
  return copied_BG, _point_masses(parts, copied_BG), state


def _propose_model(parts, draft_cfg, draft_params, draw, num_draft: int, tokens_BL, length_B,
                   state, key, noise_BXV):
  """G proposals of a draft model or feature draft, each step's token from `draw`."""
  keys = jax.random.split(key, num_draft)
  noise_GBV = None if noise_BXV is None else noise_BXV[:, :num_draft].transpose(1, 0, 2)
  if needs_features(draft_cfg):
    with jax.named_scope("draft_forward"):
      return feature_drafting.propose(_runtime(draft_cfg, draft_params), draw, num_draft,
                                      tokens_BL, length_B, state, keys, noise_GBV)

  logits_BV, cache = _model_first(parts, tokens_BL, length_B, state)
  token_B, probs_BV = draw(logits_BV, keys[0], None if noise_GBV is None else noise_GBV[0], 0,
                           jnp.zeros_like(length_B))  # step 0 has no previous draft token

  def step(carry, xs):
    cache, token_B = carry
    step_key, noise_BV, g = xs
    logits_B1V, cache = parts.draft(token_B[:, None], cache)
    next_B, probs_BV = draw(logits_B1V[:, 0], step_key, noise_BV, g, token_B)
    return (cache, next_B), (next_B, probs_BV)

  xs = (keys[1:], None if noise_GBV is None else noise_GBV[1:], jnp.arange(1, num_draft))
  (cache, _), (rest_GB, rest_probs_GBV) = jax.lax.scan(step, (cache, token_B), xs)
  tokens_BG = jnp.concatenate([token_B[:, None], rest_GB.T], axis=1)
  if probs_BV is None:  # coupling='gumbel' verifies tokens, not probabilities
    return tokens_BG, None, cache
  probs_BGV = jnp.concatenate([probs_BV[:, None], rest_probs_GBV.transpose(1, 0, 2)], axis=1)
  return tokens_BG, probs_BGV, cache


def _draw_with_lookup(parts, settings: lookup.PromptLookup, gate: bool, copied_BG, matched_B):
  """draw(logits [B, V], key, noise [B, V] | None, g, previous [B]) -> (tokens [B], probs):
  the draft's own draw, or, at step g, the copied token where the row copied more than
  g, its previous draft token (if any) was the copy's and the gate (if on) lets it
  (WithLookup's docstring)."""

  def draw(logits_BV, key, noise_BV, g, previous_B):
    token_B, probs_BV = parts.draw(logits_BV, key, noise_BV)
    use_B = (g < matched_B) & ((g == 0) | (previous_B == copied_BG[:, jnp.maximum(g - 1, 0)]))
    if gate:
      p_BV = parts.probs(logits_BV) if probs_BV is None else probs_BV
      p_copy_B = jnp.take_along_axis(p_BV, copied_BG[:, g][:, None], axis=1)[:, 0]
      use_B &= p_copy_B >= settings.min_draft_prob
    token_B = jnp.where(use_B, copied_BG[:, g], token_B)
    if probs_BV is not None:  # a copy is a point mass
      point_BV = jax.nn.one_hot(token_B, probs_BV.shape[-1], dtype=probs_BV.dtype)
      probs_BV = jnp.where(use_B[:, None], point_BV, probs_BV)
    return token_B, probs_BV

  return draw


def rollback(draft_cfg, state, length_B, length_before_B, target_hidden_BXD=None):
  """The draft's state after an iteration that committed up to `length_B`; the target
  pass started at length_before - 1 and its features are target_hidden_BXD."""
  which = kind(draft_cfg)
  if which in ("model", "model+lookup"):  # its next iteration re-sets its own offset (docstring)
    return state.with_lengths(jnp.maximum(length_B - 2, 0))
  if needs_features(draft_cfg) and target_hidden_BXD is not None:  # (None: a draft-free target step)
    return feature_drafting.after_verify(state, target_hidden_BXD, length_before_B)
  return state
