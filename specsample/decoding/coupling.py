"""The Gumbel-max coupling: tokens keyed by (row seed, absolute position), pure maths, no models.

With `Sampling(coupling="gumbel")` every sampled token of row b at absolute
position t (its index in the row's token buffer, prompt included) is

    x_t = argmax_v (log s_t(v) + g_t(v)),   g_t = Gumbel(0, 1)^V drawn from fold_in(key_b, t),

an exact sample from the transformed target distribution s_t (Gumbel-max),
because g_t is fresh at every position and independent of the prefix, which
was built from g_{<t} only. The noise of a (row, position) depends on nothing
else: not the batch, K, the method or the mesh (threefry is partitionable).

Speculative decoding with the same noise: the draft proposes
d_t = argmax(log p_t + g_t), and the target accepts d_t exactly when it equals
its own x_t; at the first mismatch it emits x_t. Every emitted token is an
x_t, so the output is the autoregressive one token for token, for any K, and
the draft only decides how many tokens one target call yields.

Acceptance. With E_v = exp(-g_v) ~ Exp(1) i.i.d., argmax(log p + g) =
argmin E_v / p_v, so both pick i iff E_j > E_i max(p_j / p_i, q_j / q_i) for
every j; integrating over E_i,

    P(d = x) = sum_i p_i q_i / sum_j max(p_j q_i, q_j p_i)  <=  sum_i min(p_i, q_i),

the acceptance of the optimal coupling of standard speculative sampling
(`acceptance_probability`; both are 1 when p = q).

Only the argmax matters, so log s_t is needed up to a per-row constant:
`log_weights` gives logits / T (masked to -inf outside the top-k / nucleus
support), without a softmax or a log except for top-p, whose nucleus is a
property of the probabilities. The draft's distributions are not needed at
all (verification compares tokens), so the draft runs only `propose`.
Temperature 0 (greedy) takes the plain argmax: the Gumbel-max of a one-hot,
without noise, so greedy output is the same under both couplings.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample.decoding.rejection import rejection_sample
from specsample.decoding.sampling import COUPLINGS, Sampling, sample  # noqa: F401 (re-export)

# Row seeds become threefry keys; with 32-bit JAX ints a larger Python int is
# silently truncated (jax.random.key(2**40) == jax.random.key(0)).
SEED_LIMIT = 2**32


@jax.jit
def _keys_from_seed(seed: jax.Array, rows_B: jax.Array) -> jax.Array:
  return jax.vmap(lambda b: jax.random.key_data(jax.random.fold_in(jax.random.key(seed), b)))(rows_B)


@jax.jit
def _keys_from_row_seeds(seeds_B: jax.Array) -> jax.Array:
  return jax.vmap(lambda s: jax.random.key_data(jax.random.key(s)))(seeds_B)


def row_key_data(seed: int | Sequence[int], num_rows: int) -> np.ndarray:
  """[B, 2] uint32 key data, one threefry key per row (seeds checked by api.check_settings).

  An int seed gives row b the key fold_in(key(seed), b): it depends on the
  row's index, so batch invariance needs the sequence form, key(seed[b]).
  """
  if isinstance(seed, (int, np.integer)):
    keys = _keys_from_seed(np.uint32(seed), np.arange(num_rows, dtype=np.uint32))
  else:
    keys = _keys_from_row_seeds(np.asarray(seed, dtype=np.uint32))
  return np.asarray(keys)


def gumbel_noise(row_keys_B: jax.Array, positions_BX: jax.Array, vocab: int) -> jax.Array:
  """[B, X, V] float32 Gumbel(0, 1) noise of each row at each absolute position.

  Entry [b, x] is jax.random.gumbel(fold_in(row_keys[b], positions[b, x]), (V,)):
  the same numbers whatever else is in the batch or the block.
  """
  def one(key, position):
    return jax.random.gumbel(jax.random.fold_in(key, position), (vocab,), jnp.float32)
  return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(row_keys_B, positions_BX)


def log_weights(sampling: Sampling, logits: jax.Array) -> jax.Array:
  """[..., V] logits -> log of sampling.probs up to a per-row constant (-inf off its support).

  Temperature and top-k need no softmax: softmax(l / T) is proportional to
  exp(l / T). Top-p needs the probabilities for its nucleus and keeps the
  tokens where sampling.probs is > 0. (Tokens whose softmax underflows to 0,
  about 100 nats below the top, keep a finite weight here when top_p is 1:
  a difference of probability below e^-100.) Not for greedy: see `propose`.
  """
  logits = logits.astype(jnp.float32)
  scaled = logits / sampling.temperature
  if sampling.nucleus:
    return jnp.where(sampling.probs(logits) > 0, scaled, -jnp.inf)
  if 0 < sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(scaled, sampling.top_k)[0][..., -1:]  # as Sampling.probs: ties kept
    return jnp.where(scaled >= kth, scaled, -jnp.inf)
  return scaled


def propose(sampling: Sampling, logits: jax.Array, noise: jax.Array) -> jax.Array:
  """Gumbel-max tokens: [..., V] logits and noise -> [...] int32 argmax(log s + g)."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jnp.argmax(log_weights(sampling, logits) + noise, axis=-1).astype(jnp.int32)


def verify(sampling: Sampling, draft_tokens_BG: jax.Array, target_logits_BXV: jax.Array,
           noise_BXV: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Accepts the draft's prefix that equals the target's own Gumbel-max tokens.

  Args:
    sampling: the transform (coupling 'gumbel').
    draft_tokens_BG: [B, G] the draft's proposals, made with noise_BXV[:, :G].
    target_logits_BXV: [B, G + 1, V] one target pass over [current, x_1..x_G].
    noise_BXV: [B, G + 1, V] the noise of the G + 1 positions being decided.

  Returns:
    As rejection.rejection_sample: num_accepted_B [B] int32 in [0, G],
    next_token_B [B] int32 and tokens_BX [B, G + 1], whose first
    num_accepted + 1 entries are the emitted tokens. Here tokens_BX is the
    target's Gumbel-max token at every position: the accepted prefix equals it.
  """
  G = draft_tokens_BG.shape[1]
  target_BX = propose(sampling, target_logits_BXV, noise_BXV)
  accept_BG = draft_tokens_BG == target_BX[:, :G]
  num_accepted_B = jnp.sum(jnp.cumprod(accept_BG.astype(jnp.int32), axis=1), axis=1)
  next_token_B = jnp.take_along_axis(target_BX, num_accepted_B[:, None], axis=1)[:, 0]
  return num_accepted_B.astype(jnp.int32), next_token_B, target_BX


def acceptance_probability(p: jax.Array, q: jax.Array) -> jax.Array:
  """P(Gumbel-max of p == Gumbel-max of q) with shared noise, over the last axis (derivation above).

  With r = p / q, max(p_j q_i, q_j p_i) is q_i p_j where r_j >= r_i and p_i q_j
  elsewhere, so after sorting by r every denominator is two cumulative sums:
  O(V log V) instead of O(V^2). Ties in r give equal terms either way.

  Args:
    p, q: [..., V] probabilities (draft, target).

  Returns:
    [...] float32 in [0, sum min(p, q)].
  """
  p, q = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
  ratio = jnp.where(q > 0, p / jnp.where(q > 0, q, 1), jnp.inf)      # p > 0 = q: +inf
  order = jnp.argsort(ratio, axis=-1)
  p_s, q_s = (jnp.take_along_axis(x, order, axis=-1) for x in (p, q))
  p_at_or_above = jnp.flip(jnp.cumsum(jnp.flip(p_s, -1), -1), -1)      # sum of p_j, j >= i
  q_below = jnp.cumsum(q_s, -1) - q_s                                  # sum of q_j, j < i
  both = p_s * q_s
  denominator = q_s * p_at_or_above + p_s * q_below
  return jnp.where(both > 0, both / jnp.where(both > 0, denominator, 1), 0).sum(-1)


# -------------------------------------------- dispatch used by the decode loops (static)

def noise(sampling: Sampling, row_keys_B: jax.Array | None, start_B: jax.Array, vocab: int,
          size: int | None = None) -> jax.Array | None:
  """Noise at positions start..start + size - 1 ([B, size, V]; [B, V] at start when size is
  None), or None for coupling 'rejection' (and greedy), which draws from the loop's key."""
  if sampling.coupling != "gumbel" or sampling.greedy:
    return None
  positions_BX = start_B[:, None] + jnp.arange(1 if size is None else size)[None]
  noise_BXV = gumbel_noise(row_keys_B, positions_BX, vocab)
  return noise_BXV[:, 0] if size is None else noise_BXV


def draw(sampling: Sampling, logits_BV: jax.Array, key: jax.Array,
         noise_BV: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
  """One token per row: (tokens [B], probs [B, V] the rejection step needs, or None).

  'rejection': a categorical draw with `key` from sampling.probs (today's
  behaviour, bit for bit). 'gumbel': Gumbel-max with the position's noise,
  no probabilities.
  """
  if sampling.coupling == "gumbel":
    return propose(sampling, logits_BV, noise_BV), None
  probs_BV = sampling.probs(logits_BV)
  return sample(key, probs_BV, greedy=sampling.greedy), probs_BV


def accept(sampling: Sampling, draft_tokens_BG: jax.Array, draft_probs_BGV: jax.Array | None,
           target_logits_BXV: jax.Array, key: jax.Array, noise_BXV: jax.Array | None
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The verification step of either coupling; returns as rejection.rejection_sample."""
  if sampling.coupling == "gumbel":
    return verify(sampling, draft_tokens_BG, target_logits_BXV, noise_BXV)
  return rejection_sample(draft_tokens_BG, draft_probs_BGV, sampling.probs(target_logits_BXV),
                          key, greedy=sampling.greedy)
