"""Autoregressive sampling: the reference for correctness and speed.

Prefill, then one jitted `lax.while_loop` emitting one target token per row
per iteration, with the same buffers, stopping rules and sampling transforms
as the speculative loop. With Sampling(coupling='gumbel') each token is the
Gumbel-max of its row's noise at its position (decoding/coupling.py), the
same noise the speculative loop uses.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from specsample.decoding import common, coupling
from specsample.models import transformer as tr


@flax.struct.dataclass(kw_only=True)
class ARState:
  tokens: jax.Array        # [B, L] prompt + generated
  length: jax.Array        # [B] committed tokens
  done: jax.Array          # [B] bool
  cache: tr.KVCache        # target cache, length - 1 valid positions
  key: jax.Array
  target_calls: jax.Array  # [B] iterations in which the row was active
  row_keys: jax.Array | None  # [B] per-row keys of coupling='gumbel'; None otherwise


def autoregressive_loop(target_cfg: tr.TransformerConfig, spec: common.DecodeSpec,
                        target_params, prompts_BP: jax.Array, prompt_len_B: jax.Array,
                        key: jax.Array, cache: tr.KVCache | None = None,
                        row_keys: jax.Array | None = None,
                        max_iterations: jax.Array | int = 2**31 - 1) -> ARState:
  """Generates until every row is done. Jit with `spec` and configs static.

  Args:
    target_cfg: the model's config.
    spec: static decode settings (num_draft is ignored).
    target_params: parameter pytree.
    prompts_BP: [B, P] right-padded prompts.
    prompt_len_B: [B] true prompt lengths, each >= 1.
    key: PRNG key.
    cache: a precomputed prompt cache in the loop's convention (length - 1
      valid positions, [B, spec.buffer_len]), e.g. from KV Prediction
      (decoding/kv_prediction.py); None runs a full prefill.
    row_keys: [B] per-row PRNG keys, for coupling='gumbel' only.
    max_iterations: stop after this many iterations even if rows are left
      (api.warm_up runs one); the default never binds.

  Returns:
    The final ARState; generated tokens of row b are
    tokens[b, prompt_len[b] : length[b]].
  """
  B, P = prompts_BP.shape
  tokens_BL = common.init_buffer(prompts_BP, spec.buffer_len)
  state = ARState(
      tokens=tokens_BL, length=prompt_len_B, done=jnp.zeros((B,), bool),
      cache=(common.prefill(target_cfg, target_params, tokens_BL, prompt_len_B, P)
             if cache is None else cache),
      key=key, target_calls=jnp.zeros((B,), jnp.int32), row_keys=row_keys)

  def body(s: ARState) -> ARState:
    key, step_key = jax.random.split(s.key)
    current_B1 = common.read_rows(s.tokens, s.length - 1, 1)
    logits_B1V, cache = tr.forward(target_cfg, target_params, current_B1,
                                   s.cache.with_lengths(s.length - 1))
    noise_BV = coupling.noise(spec.sampling, s.row_keys, s.length, target_cfg.vocab_size)
    token_B, _ = coupling.draw(spec.sampling, logits_B1V[:, 0], step_key, noise_BV)
    tokens, length, done, _ = common.commit(
        s.tokens, s.length, s.done, prompt_len_B, token_B[:, None], jnp.ones((B,), jnp.int32), spec)
    return s.replace(tokens=tokens, length=length, done=done, cache=cache, key=key,
                     target_calls=s.target_calls + (~s.done).astype(jnp.int32))

  go_on = lambda carry: ~jnp.all(carry[0].done) & (carry[1] < max_iterations)
  step = lambda carry: (body(carry[0]), carry[1] + 1)
  return jax.lax.while_loop(go_on, step, (state, jnp.int32(0)))[0]
