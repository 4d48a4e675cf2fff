"""Prompt-lookup (n-gram) proposals: the tokens that followed the last n-gram's latest earlier match.

Saxena 2023; transformers' `prompt_lookup_num_tokens`, vLLM's `ngram` proposer.
For each row, with committed tokens x_0 .. x_{n-1}: for n-gram sizes from
`max_ngram` down to `min_ngram`, find the largest j with j + size < n and
x_j .. x_{j+size-1} equal to the row's last `size` tokens; propose
x_{j+size} .. x_{j+size+G-1}, cut at n (only committed tokens are copied).
The first size with a match wins. All of it is vectorised over rows and
buffer positions with static shapes, for the jitted loop.

The proposal is a point mass, p = onehot(x): the rejection step then accepts x
with probability q(x) and otherwise samples norm(max(0, q - onehot(x))), which
is exactly as lossless as a model draft's. Positions past the match (or every
position of a row with none) still carry some token, by convention the row's
last one; they are proposals like any other, only rarely accepted.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specsample.decoding import adaptive


@dataclasses.dataclass(frozen=True)
class PromptLookup:
  """Settings of the lookup draft. Frozen and hashable: a jit static arg.

  Attributes:
    max_ngram: the longest suffix searched for (tried first).
    min_ngram: the shortest suffix that counts as a match.
    min_draft_prob: beside a draft model, under sampling (temperature > 0), a
      copied token replaces the model's draw only where the model's sampling
      distribution gives it at least this probability (drafts.WithLookup);
      0 = every copy. Ignored by lookup alone and by greedy decoding. The
      default 0.2: on the toy pair under nucleus, every copy made the pair
      0.65-0.71x of autoregressive against the draft alone's 0.74-0.85x, a
      gate of 0.2 or 0.4 0.81-0.88x, never below the draft alone
      (results/toy/lookup_gate/drafting.md).
  """
  max_ngram: int = 3
  min_ngram: int = 1
  min_draft_prob: float = 0.2

  def validate(self) -> "PromptLookup":
    for name in ("max_ngram", "min_ngram"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"PromptLookup.{name} must be an int >= 1, got {value!r}")
    p = self.min_draft_prob
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
      raise ValueError(f"PromptLookup.min_draft_prob must be a number in [0, 1], got {p!r}")
    if self.max_ngram < self.min_ngram:
      raise ValueError(f"PromptLookup.max_ngram={self.max_ngram} must be >= "
                       f"min_ngram={self.min_ngram}")
    return self


def propose(lookup: PromptLookup, tokens_BL: jax.Array, length_B: jax.Array, num_draft: int
            ) -> tuple[jax.Array, jax.Array]:
  """(proposals [B, G] int32, matched [B] int32: how many of them were copied from a match, 0..G)."""
  B, L = tokens_BL.shape
  G = num_draft
  positions_L = jnp.arange(L, dtype=jnp.int32)
  last_B = jnp.take_along_axis(tokens_BL, jnp.maximum(length_B - 1, 0)[:, None], axis=1)[:, 0]
  found_B = jnp.zeros((B,), bool)
  source_B = jnp.zeros((B,), jnp.int32)   # where the copied tokens start: j + size
  for size in range(lookup.max_ngram, lookup.min_ngram - 1, -1):
    # equal_BL[b, j]: x_{j+i} == x_{n-size+i} for every i < size.
    equal_BL = jnp.ones((B, L), bool)
    for i in range(size):
      suffix_B = jnp.take_along_axis(tokens_BL, jnp.maximum(length_B - size + i, 0)[:, None], 1)[:, 0]
      shifted_BL = jnp.roll(tokens_BL, -i, axis=1)  # shifted[b, j] = x_{j+i} (wraps past L: masked)
      equal_BL &= shifted_BL == suffix_B[:, None]
    valid_BL = (positions_L[None] + size < length_B[:, None]) & (length_B[:, None] >= size)
    hit_BL = equal_BL & valid_BL
    latest_B = jnp.max(jnp.where(hit_BL, positions_L[None], -1), axis=1)
    new_B = ~found_B & (latest_B >= 0)
    source_B = jnp.where(new_B, latest_B + size, source_B)
    found_B |= new_B
  offsets_G = jnp.arange(G, dtype=jnp.int32)
  index_BG = source_B[:, None] + offsets_G[None]
  copied_BG = found_B[:, None] & (index_BG < length_B[:, None])
  gathered_BG = jnp.take_along_axis(tokens_BL, jnp.minimum(index_BG, L - 1), axis=1)
  proposals_BG = jnp.where(copied_BG, gathered_BG, last_B[:, None])
  return proposals_BG.astype(jnp.int32), copied_BG.sum(axis=1).astype(jnp.int32)


def choose_index(lookup: PromptLookup, choices: tuple[int, ...], s, cost_C: jax.Array,
                 remaining_B: jax.Array) -> jax.Array:
  """num_draft="auto" for lookup alone: the index in `choices` (sorted) of the K that
  finishes the batch soonest (adaptive.choose), each row's expected tokens capped
  at the tokens its lookup copies. Copies are what lookup proposes well; past a
  match it proposes the row's last token, which the target rarely accepts. So no
  K above the longest live match is picked, and while a row without a match is
  the batch's bottleneck, K = 0 (an autoregressive step) is: at batch > 1, the
  longest match alone would make every row pay a wide verify for one row's copy.
  s: the loop state (speculative.SpecState; its acceptance statistics count
  copied positions only). The rule reads only committed tokens: lossless."""
  _, matched_B = propose(lookup, s.tokens, s.length, choices[-1])
  return adaptive.choose(s, choices, cost_C, remaining_B, matched_B)
