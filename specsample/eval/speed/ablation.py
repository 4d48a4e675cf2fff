"""Stand-ins for the parts of a speculative iteration, for the ablation cross-check only.

`Ablated(parts)` is a `speculative.Parts` factory (hashable, so a loop per
ablation is compiled once) whose named parts are replaced by stand-ins of the
same shapes and dtypes: what eval/speed/breakdown.py's `ablation` times against the
full loop. Nothing here is used by decoding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specsample.decoding.speculative import SCOPES, Parts

ABLATABLE = SCOPES


def stand_in(inputs, value):
  """`value` (arrays, or ShapeDtypeStructs for zeros) such that XLA can neither
  fold it nor drop `inputs`.

  An optimization barrier keeps the real inputs alive (so their producers
  still run) and hides what the result is (so its consumers still run).
  """
  value = jax.tree.map(
      lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, value)
  return jax.lax.optimization_barrier((inputs, value))[1]


class _AblatedParts(Parts):
  """Parts whose members named in `ablate` are stand-ins (see Ablated)."""

  def __init__(self, ablate: frozenset[str], *args):
    super().__init__(*args)
    self.ablate = ablate

  def _stand_in_forward(self, which, tokens_BT, cache):
    cfg = (self.target_model if which == "target_forward" else self.draft_model)[0]
    B, T = tokens_BT.shape
    logits = jax.ShapeDtypeStruct((B, T, cfg.vocab_size), jnp.float32)
    return stand_in((tokens_BT, cache), logits), cache.with_lengths(cache.lengths + T)

  def draft(self, tokens_BT, cache):
    if "draft_forward" in self.ablate:
      return self._stand_in_forward("draft_forward", tokens_BT, cache)
    return super().draft(tokens_BT, cache)

  def target(self, tokens_BT, cache):
    if "target_forward" in self.ablate:  # (no features: ablation runs with draft models)
      return (*self._stand_in_forward("target_forward", tokens_BT, cache), None)
    return super().target(tokens_BT, cache)

  def probs(self, logits):
    if "transform" in self.ablate:
      return stand_in(logits, jax.ShapeDtypeStruct(logits.shape, jnp.float32))
    return super().probs(logits)

  def verify(self, draft_tokens_BG, draft_probs_BGV, target_logits_BXV, key, noise_BXV):
    if "rejection" not in self.ablate:
      return super().verify(draft_tokens_BG, draft_probs_BGV, target_logits_BXV, key, noise_BXV)
    B, G = draft_tokens_BG.shape
    int32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    like = (int32(B), int32(B), int32(B, G + 1))
    return stand_in((draft_tokens_BG, draft_probs_BGV, target_logits_BXV, key), like)

  def commit(self, s, prompt_len_B, emitted_BX, num_emitted_B):
    if "commit" not in self.ablate:
      return super().commit(s, prompt_len_B, emitted_BX, num_emitted_B)
    # Nothing is committed: the state goes through unchanged.
    return stand_in((emitted_BX, num_emitted_B), (s.tokens, s.length, s.done, num_emitted_B))


@dataclasses.dataclass(frozen=True)
class Ablated:
  """A Parts factory for loops.make_loop(parts=...): `parts` replaced by stand-ins."""
  parts: frozenset[str]

  def __post_init__(self):
    unknown = set(self.parts) - set(ABLATABLE)
    if unknown:
      raise ValueError(f"ablate: unknown parts {sorted(unknown)}; allowed: {ABLATABLE}")

  def __call__(self, *args) -> Parts:
    return _AblatedParts(frozenset(self.parts), *args)

