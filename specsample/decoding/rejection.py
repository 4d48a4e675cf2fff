"""The modified rejection sampler of speculative sampling: pure maths, no models.

Chen et al. 2023 (PAPERS.md section 1), with q the target and p the draft:
for t = 1..G accept draft token x_t while r_t < min(1, q_t(x_t) / p_t(x_t));
at the first rejection emit a token from norm(max(0, q_t - p_t)); if all G are
accepted emit a bonus token from q_{G+1}. The emitted sequence is distributed
exactly as the target's.

Vectorised over the batch: each row accepts its own number of tokens.
Everything is float32 whatever the models computed in.

Greedy (both distributions one-hot): x_t is the draft's argmax, accepted iff it
is the target's, and the residual max(0, q - p) (or its fallback q) is the
one-hot on the target's argmax, so with `greedy=True` the emitted token is read
by argmax instead of drawn: the same token, without V random numbers per row.

Numerical guards (it must never produce NaN):
  * acceptance is tested as `r * p < q`, which needs no division by p(x);
    p(x) = 0 (impossible in exact arithmetic, since x was drawn from p) then
    accepts iff q(x) > 0;
  * when max(0, q - p) has no mass (q == p up to rounding, or q's support
    inside p's), the residual falls back to q itself. In exact arithmetic a
    rejection never happens in that case, so this changes nothing there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from specsample.decoding.sampling import sample


def rejection_sample(draft_tokens_BG: jax.Array, draft_probs_BGV: jax.Array,
                     target_probs_BXV: jax.Array, key: jax.Array, *, greedy: bool = False
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Accepts a prefix of the draft and emits one more token per row.

  Args:
    draft_tokens_BG: [B, G] int, the draft's proposals x_1..x_G.
    draft_probs_BGV: [B, G, V], p_t, the draft distribution x_t was drawn from.
    target_probs_BXV: [B, G + 1, V], q_1..q_{G+1} from one target pass.
    key: PRNG key.
    greedy: static; True promises one-hot p and q (Sampling.greedy): the
      emitted token is then the residual's argmax, exactly the one drawn.

  Returns:
    num_accepted_B: [B] int32 in [0, G], accepted draft tokens.
    next_token_B: [B] int32, the token emitted after them (a residual sample
      on rejection, a bonus sample from q_{G+1} when all were accepted).
    tokens_BX: [B, G + 1] int32; row b's first num_accepted[b] + 1 entries are
      its emitted tokens, the rest is padding.
  """
  B, G, V = draft_probs_BGV.shape
  draft_probs_BGV = draft_probs_BGV.astype(jnp.float32)
  target_probs_BXV = target_probs_BXV.astype(jnp.float32)
  key_accept, key_residual = jax.random.split(key)

  index = draft_tokens_BG[..., None]
  p_BG = jnp.take_along_axis(draft_probs_BGV, index, axis=-1)[..., 0]
  q_BG = jnp.take_along_axis(target_probs_BXV[:, :G], index, axis=-1)[..., 0]
  r_BG = jax.random.uniform(key_accept, (B, G), jnp.float32)
  accept_BG = r_BG * p_BG < q_BG  # r < q/p without dividing
  # Accepted prefix length: position of the first rejection (G if none).
  num_accepted_B = jnp.sum(jnp.cumprod(accept_BG.astype(jnp.int32), axis=1), axis=1)

  # Residual at the stopping position. Padding p with a zero row makes
  # position G (all accepted) fall out as max(0, q_{G+1} - 0) = q_{G+1}.
  p_pad_BXV = jnp.concatenate([draft_probs_BGV, jnp.zeros((B, 1, V), jnp.float32)], axis=1)
  pick = lambda x_BXV: jnp.take_along_axis(x_BXV, num_accepted_B[:, None, None], axis=1)[:, 0]
  q_BV, p_BV = pick(target_probs_BXV), pick(p_pad_BXV)
  residual_BV = jnp.maximum(q_BV - p_BV, 0.0)
  mass_B1 = residual_BV.sum(axis=-1, keepdims=True)
  residual_BV = jnp.where(mass_B1 > 0, residual_BV / jnp.where(mass_B1 > 0, mass_B1, 1.0), q_BV)
  next_token_B = sample(key_residual, residual_BV, greedy=greedy)

  # Emitted tokens: accepted draft prefix, then next_token at index num_accepted.
  positions_X = jnp.arange(G + 1)
  draft_pad_BX = jnp.concatenate([draft_tokens_BG, jnp.zeros((B, 1), jnp.int32)], axis=1)
  tokens_BX = jnp.where(positions_X[None] == num_accepted_B[:, None],
                        next_token_B[:, None], draft_pad_BX.astype(jnp.int32))
  return num_accepted_B.astype(jnp.int32), next_token_B, tokens_BX
