"""Sampling transforms: logits -> the probabilities tokens are drawn from.

Both models of a speculative pair go through the SAME transform, and the
rejection step compares the transformed distributions, so whatever is chosen
here (greedy, temperature, top-k, top-p, or a composition) is exactly the
distribution speculative sampling reproduces (Chen et al. 2023, section 1 of
PAPERS.md: "applied to BOTH models' probabilities").

Order of composition, as in most LM samplers: temperature, then top-k on the
scaled logits, then top-p (nucleus) on the resulting distribution.
Temperature 0 means greedy: a one-hot on the argmax (ties to the lowest id),
which the rejection step turns into exact greedy decoding. Greedy tokens are
read by argmax (`sample(..., greedy=True)`): the token a draw from a one-hot
returns, without a cumulative sum over V.

Ties: top-k keeps every token whose logit equals the k-th largest, and top-p
keeps every token whose probability equals the smallest kept one. This can keep
a few more than k tokens (or mass above p) on exact ties, but it is a
deterministic function of the logits, which is all exactness needs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# How sampled tokens are drawn and verified (decoding/coupling.py): 'rejection'
# is the modified rejection sampler of rejection.py, 'gumbel' the Gumbel-max
# coupling keyed by (row seed, position) that makes speculative output equal
# autoregressive output token for token.
COUPLINGS = ("rejection", "gumbel")

# A Sampling field that a compiled loop takes as an input rather than as a constant
# (Sampling.compile_key): settings that differ only in temperature or top-p then
# share one compiled loop. Any arithmetic on it fails loudly (it is a str).
TRACED = "traced"


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How logits become probabilities. Frozen and hashable: a jit static arg.

  Attributes:
    temperature: 0 for greedy, else logits are divided by it. Must be >= 0.
    top_k: keep the k most likely tokens; 0 disables. Must be >= 0.
    top_p: keep the smallest set of tokens whose mass reaches top_p; 1.0
      disables. Must be in (0, 1].
    coupling: 'rejection' (standard speculative sampling) or 'gumbel' (each
      row's tokens fixed by its seed and positions: the same whatever the
      method, K, batch or mesh; decoding/coupling.py). Both sample exactly
      from `probs`; greedy output is the same under both.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  coupling: str = "rejection"

  def validate(self) -> "Sampling":
    if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
      raise ValueError(f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
    if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
      raise ValueError(f"sampling.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
    if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
      raise ValueError(f"sampling.top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
    if self.coupling not in COUPLINGS:
      raise ValueError(f"sampling.coupling must be one of {COUPLINGS}, got {self.coupling!r}")
    return self

  @property
  def greedy(self) -> bool:
    return _is_number(self.temperature) and self.temperature == 0

  @property
  def nucleus(self) -> bool:
    """Whether top-p is on (static even when its value is an input: compile_key)."""
    return not (_is_number(self.top_p) and self.top_p >= 1)

  def compile_key(self) -> "Sampling":
    """What a compiled loop depends on: temperature and top-p become TRACED inputs.

    Greedy stays as it is (no values), and so does top-p 1 (off: its nucleus
    step is not compiled in); top-k and the coupling shape the program.
    """
    if self.greedy:
      return self
    return dataclasses.replace(self, temperature=TRACED, top_p=TRACED if self.nucleus else 1.0)

  def values(self) -> np.ndarray:
    """[temperature, top_p] float32: the inputs that compile_key leaves out."""
    return np.array([self.temperature, self.top_p], np.float32)

  def with_values(self, values_2: jax.Array) -> "Sampling":
    """A compile key's TRACED fields taken from values [2] (inside the compiled loop).

    float32 like the constants they replace (a Python float meets float32
    logits as float32), so the loop computes the same numbers either way.
    """
    pick = lambda field, i: values_2[i] if isinstance(field, str) else field
    return dataclasses.replace(self, temperature=pick(self.temperature, 0),
                               top_p=pick(self.top_p, 1))

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
    if self.nucleus:
      probs = _nucleus(probs, self.top_p)
    return probs


# Non-negative float32 values below 2 (probabilities, rounding included) have
# bit patterns below 0x40000000 = 2**30, and each bisection step at least
# halves the candidate range of patterns: 30 steps pin it to one.
_BISECTION_STEPS = 30


def _nucleus(probs: jax.Array, top_p: float) -> jax.Array:
  """Zeroes the tail outside the top-p nucleus and renormalises.

  The nucleus is every token with p >= threshold, where

      threshold = min{p_i : S(p_i) < top_p},   S(v) = sum of p_j over p_j > v,

  i.e. a token is in if the mass strictly above its value is < top_p (the most
  likely token always is: S = 0), and tokens tied with the smallest kept one
  are all kept.

  S is non-increasing and only steps at the values p_i, so {t >= 0 : S(t) <
  top_p} is [threshold, inf) (or all t >= 0, when everything is kept), and its
  lowest float is found by bisecting over float32 bit patterns, which order
  non-negative floats like their values. Each step is one masked O(V) sum
  instead of an O(V log V) sort: on a 2-core CPU, [1, 4096] rows take 0.06 ms
  instead of 1.0 ms and [8, 4096] 0.27 ms instead of 7.2 ms.

  Versus a sort and cumulative sum, only float rounding differs: S is summed
  in XLA's reduction order over the unsorted row rather than as a cumsum over
  the sorted one, so a value whose S is within rounding (~1e-6) of top_p may
  fall on the other side. The computed S is still monotone in t (rounding is
  monotone and the summation order is fixed), so the bisection is exact for
  the S it computes, and the result is a deterministic function of the row.

  Args:
    probs: [..., V] float32 probabilities.
    top_p: in (0, 1); a Python float or a scalar array.

  Returns:
    [..., V] float32, the renormalised nucleus.
  """
  bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
  # Invariant: the answer's bit pattern lies in [lo, hi]; S(max p) = 0 < top_p.
  lo = jnp.zeros(probs.shape[:-1] + (1,), jnp.int32)
  hi = jnp.max(bits, axis=-1, keepdims=True)

  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    mid_value = jax.lax.bitcast_convert_type(mid, jnp.float32)
    mass_above = jnp.sum(jnp.where(probs > mid_value, probs, 0.0), axis=-1, keepdims=True)
    inside = mass_above < top_p          # mid >= threshold
    return jnp.where(inside, lo, mid + 1), jnp.where(inside, mid, hi)

  _, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, step, (lo, hi))
  threshold = jax.lax.bitcast_convert_type(hi, jnp.float32)
  kept = jnp.where(probs >= threshold, probs, 0.0)
  return kept / kept.sum(axis=-1, keepdims=True)


def sample(key: jax.Array, probs: jax.Array, *, greedy: bool = False) -> jax.Array:
  """Draws token ids from [..., V] probabilities, by inverse CDF.

  One uniform u per row picks the first token whose cumulative mass exceeds
  u times the row's total: token v has probability exactly the width of its
  interval of the float32 cumulative sum, i.e. probs[v] / sum(probs) up to the
  sum's rounding (~1e-7 relative), and a token of zero mass is never drawn
  (u * total is kept strictly below the total, so the token found always
  starts a non-empty interval). jax.random.categorical would draw V Gumbel
  numbers per row instead, which on a 2-core CPU cost 0.7 ms per [1, 4096]
  row against 0.016 ms (2.6 ms against 0.024 ms at [8, 4096]): more than a
  draft forward, once per draft step and once per verification.

  Args:
    key: PRNG key (unused when greedy).
    probs: [..., V] non-negative, each row with positive mass (e.g. from
      Sampling.probs); rows need not sum to 1.
    greedy: static; True promises one-hot rows (Sampling.greedy). The argmax is
      then exactly the token the draw returns, without a cumulative sum.

  Returns:
    [...] int32 token ids.
  """
  if greedy:
    return jnp.argmax(probs, axis=-1).astype(jnp.int32)
  cdf = jnp.cumsum(probs.astype(jnp.float32), axis=-1)
  total = cdf[..., -1:]
  u = jax.random.uniform(key, total.shape, jnp.float32)
  point = jnp.minimum(u * total, jnp.nextafter(total, 0.0))   # < total despite rounding
  return jnp.sum(cdf <= point, axis=-1).astype(jnp.int32)
