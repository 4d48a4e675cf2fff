"""Sampling transforms: logits -> the probabilities tokens are drawn from.

Both models of a speculative pair go through the SAME transform, and the
rejection step compares the transformed distributions, so whatever is chosen
here (greedy, temperature, top-k, top-p, or a composition) is exactly the
distribution speculative sampling reproduces (Chen et al. 2023, section 1 of
PAPERS.md: "applied to BOTH models' probabilities").

Order of composition, as in most LM samplers: temperature, then top-k on the
scaled logits, then top-p (nucleus) on the resulting distribution.
Temperature 0 means greedy: a one-hot on the argmax (ties to the lowest id),
which the rejection step turns into exact greedy decoding.

Ties: top-k keeps every token whose logit equals the k-th largest, and top-p
keeps every token whose probability equals the smallest kept one. This can keep
a few more than k tokens (or mass above p) on exact ties, but it is a
deterministic function of the logits, which is all exactness needs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How logits become probabilities. Frozen and hashable: a jit static arg.

  Attributes:
    temperature: 0 for greedy, else logits are divided by it. Must be >= 0.
    top_k: keep the k most likely tokens; 0 disables. Must be >= 0.
    top_p: keep the smallest set of tokens whose mass reaches top_p; 1.0
      disables. Must be in (0, 1].
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def validate(self) -> "Sampling":
    if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
      raise ValueError(f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
    if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
      raise ValueError(f"sampling.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
    if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
      raise ValueError(f"sampling.top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
    return self

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  def probs(self, logits: jax.Array) -> jax.Array:
    """[..., V] logits -> [..., V] float32 probabilities."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    if self.greedy:
      return jax.nn.one_hot(jnp.argmax(logits, axis=-1), vocab, dtype=jnp.float32)
    logits = logits / self.temperature
    if 0 < self.top_k < vocab:
      kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
      logits = jnp.where(logits >= kth, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    if self.top_p < 1:
      probs = _nucleus(probs, self.top_p)
    return probs


def _nucleus(probs: jax.Array, top_p: float) -> jax.Array:
  """Zeroes the tail outside the top-p nucleus and renormalises."""
  sorted_desc = -jnp.sort(-probs, axis=-1)
  mass_before = jnp.cumsum(sorted_desc, axis=-1) - sorted_desc
  # A token is in the nucleus if the mass strictly above it is < top_p; the
  # most likely token always is (mass_before = 0).
  in_nucleus = mass_before < top_p
  threshold = jnp.min(jnp.where(in_nucleus, sorted_desc, jnp.inf), axis=-1, keepdims=True)
  kept = jnp.where(probs >= threshold, probs, 0.0)
  return kept / kept.sum(axis=-1, keepdims=True)


def sample(key: jax.Array, probs: jax.Array) -> jax.Array:
  """Draws token ids from [..., V] probabilities (exact for one-hot rows)."""
  return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)
