"""Speculative sampling (Chen et al. 2023) as one jitted `lax.while_loop`.

Each iteration, for every row at once:

  1. draft G tokens x_1..x_G autoregressively from the draft model, keeping
     the draft distributions p_1..p_G;
  2. score [current, x_1..x_G] with ONE target pass at the row's own offset,
     giving q_1..q_{G+1};
  3. rejection-sample (decoding/rejection.py): accept a prefix of a tokens and
     emit one more, so 1..G+1 tokens per target call (with
     Sampling(coupling='gumbel') steps 1 and 3 use the noise of each row's
     positions instead, decoding/coupling.py: the output is then the
     autoregressive loop's, token for token);
  4. commit them (cut at eos / max_new_tokens) and roll the caches back to the
     committed length by setting their `lengths`.

Shapes never change inside the loop, so it compiles once per
(batch, prompt, buffer) shape and DecodeSpec.

Cache bookkeeping. Both caches hold the committed tokens except the current
one (common.py). The draft, however, never feeds its own last proposal x_G, so
after a fully accepted block its cache lacks x_G's position. Rather than
spend a whole extra draft step every iteration to write it, the first draft
step of an iteration feeds TWO tokens, [previous, current], at positions
[length - 2, length - 1]: it re-writes the previous token's entry (identical,
up to float rounding, when it was already there) and fills the gap when it
was not. For a row whose length is 1 (a one-token prompt) there is no
previous token: it feeds [current, pad] at [0, 1] and reads the logits of
position 0; the pad entry is overwritten by x_1 right after.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from specsample.decoding import common, coupling
from specsample.models import transformer as tr


@flax.struct.dataclass(kw_only=True)
class SpecState:
  tokens: jax.Array          # [B, L] prompt + generated
  length: jax.Array          # [B] committed tokens
  done: jax.Array            # [B] bool
  target_cache: tr.KVCache   # length - 1 valid positions
  draft_cache: tr.KVCache    # length - 1 or length - 2 valid positions
  key: jax.Array
  target_calls: jax.Array    # [B] target passes while the row was active
  drafted: jax.Array         # [B] draft tokens proposed
  accepted: jax.Array        # [B] draft tokens accepted
  row_keys: jax.Array | None # [B] per-row keys of coupling='gumbel'; None otherwise


def _draft(draft_cfg, spec, draft_params, s: SpecState, key, noise_BXV):
  """Proposes G tokens per row. Returns (tokens [B, G], probs [B, G, V] f32 or None
  under coupling='gumbel', cache). noise_BXV: the block's Gumbel noise, or None."""
  G = spec.num_draft
  keys = jax.random.split(key, G)
  noise_GBV = None if noise_BXV is None else noise_BXV[:, :G].transpose(1, 0, 2)
  start_B = jnp.maximum(s.length - 2, 0)
  pair_B2 = common.read_rows(s.tokens, start_B, 2)      # [previous, current] (or [current, pad])
  logits_B2V, cache = tr.forward(draft_cfg, draft_params, pair_B2, s.draft_cache.with_lengths(start_B))
  read_B = s.length - 1 - start_B                        # 1, or 0 for length-1 rows
  logits_BV = jnp.take_along_axis(logits_B2V, read_B[:, None, None], axis=1)[:, 0]
  token_B, probs_BV = coupling.draw(spec.sampling, logits_BV, keys[0],
                                    None if noise_GBV is None else noise_GBV[0])
  cache = cache.with_lengths(s.length)

  def step(carry, xs):
    cache, token_B = carry
    step_key, noise_BV = xs
    logits_B1V, cache = tr.forward(draft_cfg, draft_params, token_B[:, None], cache)
    next_B, probs_BV = coupling.draw(spec.sampling, logits_B1V[:, 0], step_key, noise_BV)
    return (cache, next_B), (next_B, probs_BV)

  xs = (keys[1:], None if noise_GBV is None else noise_GBV[1:])
  (cache, _), (rest_GB, rest_probs_GBV) = jax.lax.scan(step, (cache, token_B), xs)
  tokens_BG = jnp.concatenate([token_B[:, None], rest_GB.T], axis=1)
  if probs_BV is None:  # coupling='gumbel' verifies tokens, not probabilities
    return tokens_BG, None, cache
  probs_BGV = jnp.concatenate([probs_BV[:, None], rest_probs_GBV.transpose(1, 0, 2)], axis=1)
  return tokens_BG, probs_BGV, cache


def speculative_loop(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig,
                     spec: common.DecodeSpec, target_params, draft_params,
                     prompts_BP: jax.Array, prompt_len_B: jax.Array, key: jax.Array,
                     row_keys: jax.Array | None = None) -> SpecState:
  """Generates until every row is done. Jit with configs and `spec` static.

  Args:
    target_cfg, draft_cfg: model configs (same vocabulary).
    spec: static decode settings; spec.num_draft is the paper's K.
    target_params, draft_params: parameter pytrees.
    prompts_BP: [B, P] right-padded prompts.
    prompt_len_B: [B] true prompt lengths, each >= 1.
    key: PRNG key.
    row_keys: [B] per-row PRNG keys, for coupling='gumbel' only.

  Returns:
    The final SpecState; generated tokens of row b are
    tokens[b, prompt_len[b] : length[b]].
  """
  B, P = prompts_BP.shape
  G = spec.num_draft
  tokens_BL = common.init_buffer(prompts_BP, spec.buffer_len)
  zeros_B = jnp.zeros((B,), jnp.int32)
  state = SpecState(
      tokens=tokens_BL, length=prompt_len_B, done=jnp.zeros((B,), bool),
      target_cache=common.prefill(target_cfg, target_params, tokens_BL, prompt_len_B, P),
      draft_cache=common.prefill(draft_cfg, draft_params, tokens_BL, prompt_len_B, P),
      key=key, target_calls=zeros_B, drafted=zeros_B, accepted=zeros_B, row_keys=row_keys)

  def body(s: SpecState) -> SpecState:
    key, draft_key, accept_key = jax.random.split(s.key, 3)
    # The noise of positions length .. length + G (None for coupling='rejection').
    noise_BXV = coupling.noise(spec.sampling, s.row_keys, s.length, target_cfg.vocab_size, G + 1)
    draft_tokens_BG, draft_probs_BGV, draft_cache = _draft(draft_cfg, spec, draft_params, s,
                                                           draft_key, noise_BXV)

    # One target pass over [current, x_1..x_G] at each row's own offset.
    current_B1 = common.read_rows(s.tokens, s.length - 1, 1)
    block_BX = jnp.concatenate([current_B1, draft_tokens_BG], axis=1)   # [B, G + 1]
    logits_BXV, target_cache = tr.forward(target_cfg, target_params, block_BX,
                                          s.target_cache.with_lengths(s.length - 1))

    num_accepted_B, _, emitted_BX = coupling.accept(
        spec.sampling, draft_tokens_BG, draft_probs_BGV, logits_BXV, accept_key, noise_BXV)
    tokens, length, done, _ = common.commit(
        s.tokens, s.length, s.done, prompt_len_B, emitted_BX, num_accepted_B + 1, spec)

    active_B = (~s.done).astype(jnp.int32)
    return s.replace(
        tokens=tokens, length=length, done=done, key=key,
        # Roll back: only committed positions stay valid. The draft's next
        # iteration re-sets its own offset (see module docstring).
        target_cache=target_cache.with_lengths(length - 1),
        draft_cache=draft_cache.with_lengths(jnp.maximum(length - 2, 0)),
        target_calls=s.target_calls + active_B,
        drafted=s.drafted + G * active_B,
        accepted=s.accepted + num_accepted_B * active_B)

  return jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, state)
