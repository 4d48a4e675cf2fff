"""Adaptive K: the acceptance estimate and the rule that picks K every iteration.

speculative.py keeps, per row, exponentially discounted counts of accepted
draft tokens and of acceptance trials (alpha_hat = their ratio), and before
every iteration of num_draft="auto" asks `choose` for the K that finishes the
batch soonest given each K's measured iteration cost (decoding/calibrate.py).
Prompt lookup alone asks the same rule, with each row's gain capped at the
tokens its lookup copies (`matched_B`): past its match a row proposes a token
that is rarely accepted, so a larger K buys that row nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Discount of the acceptance statistics per iteration (an effective window of
# ~10 iterations), and their prior: alpha = 0.5 worth 2 trials.
ALPHA_DECAY = 0.9
ALPHA_PRIOR = (1.0, 2.0)


def expected_tokens(alpha, num_draft: int):
  """E(alpha, K) = 1 + alpha + ... + alpha^K, tokens per iteration (PAPERS.md section 2);
  alpha a float or an array (elementwise). eval/speed/bound.py checks and reuses it."""
  return sum(alpha ** i for i in range(num_draft + 1))


def capped_expected_tokens(alpha_B: jax.Array, num_draft: int, cap_B: jax.Array) -> jax.Array:
  """E(alpha_b, min(K, cap_b)): expected tokens of an iteration at K whose row b can have
  at most cap_b proposals accepted (lookup: the tokens it copied)."""
  return sum(jnp.where(i <= cap_B, alpha_B ** i, 0.0) for i in range(num_draft + 1))


def choose(s, choices: tuple[int, ...], cost_C: jax.Array, remaining_B: jax.Array,
           matched_B: jax.Array | None = None) -> jax.Array:
  """Index into `choices` of the K that finishes the batch soonest, one step ahead.

  s: the loop state (speculative.SpecState: done, accept_ema, trials_ema).

  A batch of fixed rows runs until its slowest row is done, so the rate that
  matters is not the mean tokens per iteration but how fast the bottleneck
  row advances: with E(alpha_b, K) expected tokens per iteration for row b
  and remaining_b tokens to go, the batch needs about max_b remaining_b /
  E(alpha_b, K) more iterations, each costing cost_K. The choice minimises
  that product (at batch 1: maximises E(alpha, K) / cost_K). Done rows are
  ignored; an all-done batch (never run: the loop has stopped) picks by the
  prior. With `matched_B` (prompt lookup alone), row b's expected tokens are
  E(alpha_b, min(K, matched_b)): a row without a match gains nothing from any
  K, so while it is the bottleneck K = 0 (the cheapest iteration) wins.
  """
  alpha_B = s.accept_ema / s.trials_ema
  remaining_B = jnp.where(s.done, 0.0, jnp.maximum(remaining_B, 1).astype(jnp.float32))
  gain = ((lambda k: expected_tokens(alpha_B, k)) if matched_B is None
          else (lambda k: capped_expected_tokens(alpha_B, k, matched_B)))
  iterations_C = jnp.stack([jnp.max(remaining_B / gain(k)) for k in choices])
  return jnp.argmin(iterations_C * cost_C)
