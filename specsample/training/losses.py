"""Losses as pure functions of logits. Everything here runs in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array,
                  mask_BT: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy (nats) and the number of counted tokens.

  Args:
    logits_BTV: [B, T, V] unnormalised scores.
    targets_BT: [B, T] int token ids.
    mask_BT: [B, T] 1 where the position counts; None counts all.

  Returns:
    (mean loss over counted tokens, count).
  """
  logits_BTV = logits_BTV.astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  nll_BT = log_z_BT - target_logit_BT
  if mask_BT is None:
    mask_BT = jnp.ones_like(nll_BT)
  mask_BT = mask_BT.astype(jnp.float32)
  count = jnp.maximum(mask_BT.sum(), 1.0)
  return (nll_BT * mask_BT).sum() / count, count


def argmax_agreement(logits_a_BTV: jax.Array, logits_b_BTV: jax.Array) -> jax.Array:
  """Fraction of positions where two models' argmax tokens agree."""
  same = jnp.argmax(logits_a_BTV, -1) == jnp.argmax(logits_b_BTV, -1)
  return same.astype(jnp.float32).mean()
