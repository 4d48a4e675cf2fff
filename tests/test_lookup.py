"""Prompt-lookup drafting (decoding/lookup.py): the proposal equals a plain Python reference."""

import jax
import numpy as np
import pytest

from specsample.decoding.lookup import PromptLookup, propose


def reference(seq, n: int, lookup: PromptLookup, G: int):
  """Longest n-gram first, latest earlier match, copy at most up to the row's end."""
  x = [int(t) for t in seq[:n]]
  for size in range(lookup.max_ngram, lookup.min_ngram - 1, -1):
    if n < size:
      continue
    for j in range(n - size - 1, -1, -1):
      if x[j:j + size] == x[n - size:]:
        got = x[j + size:j + size + G]
        return got + [x[-1]] * (G - len(got)), len(got)
  return [x[-1]] * G, 0


@pytest.mark.parametrize("lookup", [PromptLookup(3, 1), PromptLookup(2, 2), PromptLookup(4, 2)],
                         ids=lambda l: f"{l.max_ngram}-{l.min_ngram}")
def test_proposals_equal_the_reference(lookup):
  rng = np.random.default_rng(lookup.max_ngram * 10 + lookup.min_ngram)
  B, L, G = 64, 40, 5
  tokens = rng.integers(0, 4, (B, L)).astype(np.int32)   # a small alphabet: many matches, some none
  lengths = rng.integers(1, L + 1, B).astype(np.int32)
  proposals, matched = jax.jit(propose, static_argnums=(0, 3))(lookup, tokens, lengths, G)
  counts = []
  for b in range(B):
    want, count = reference(tokens[b], lengths[b], lookup, G)
    assert list(np.asarray(proposals[b])) == want and int(matched[b]) == count, b
    counts.append(count)
  assert 0 in counts and G in counts and any(0 < c < G for c in counts)  # every case was exercised


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_ngram=1, min_ngram=2), "max_ngram=1 must be >= min_ngram=2"),
    (dict(max_ngram=0), "max_ngram must be an int >= 1"),
    (dict(min_ngram=-1), "min_ngram must be an int >= 1"),
])
def test_bad_settings_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    PromptLookup(**kwargs).validate()
