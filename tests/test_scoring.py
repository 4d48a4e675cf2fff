"""eval/tasks/scoring.py against a direct computation: each continuation's scores are
read at its own positions, whatever its prompt's length, chunk or padding."""

import jax
import numpy as np
import pytest

from specsample.decoding.sampling import Sampling
from specsample.eval.tasks import scoring
from specsample.models import transformer as tr


_forward = jax.jit(lambda config, params, tokens: tr.forward(config, params, tokens)[0],
                   static_argnums=0)


def _direct(target, prompt, continuation, sampling):
  """(sum log q(x), sum log s(x) + H(s), tokens outside s) of one continuation, one forward."""
  seq = np.zeros((1, 64), np.int32)  # one width, one compile; causal: the padding after
  seq[0, :len(prompt) + len(continuation)] = list(prompt) + list(continuation)  # is unread
  logits = np.asarray(_forward(target.config, target.params, seq)[0], np.float64)
  rows = np.arange(len(prompt) - 1, len(prompt) - 1 + len(continuation))  # predict c[i] at row i
  x = np.asarray(continuation)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  logq = logp[rows, x].sum()
  s = np.asarray(sampling.probs(logits[rows].astype(np.float32)), np.float64)
  logs = np.log(np.where(s > 0, s, 1.0))
  entropy = -(s * logs).sum(-1)
  inside = s[np.arange(len(x)), x] > 0
  u = (logs[np.arange(len(x)), x] + entropy)[inside].sum()
  outside = int((~inside).sum())
  return logq, u, outside


def test_scores_read_each_continuations_own_positions(tiny_pair):
  target, _ = tiny_pair
  rng = np.random.default_rng(0)
  # 5 rows in chunks of 2 (a padded last chunk); continuations past the span's 32.
  prompts = [rng.integers(0, 16, n).tolist() for n in (1, 7, 3, 12, 5)]
  continuations = [rng.integers(0, 16, n).tolist() for n in (4, 40, 1, 9, 33)]
  sampling = Sampling(temperature=0.7, top_k=6)
  logprobs = scoring.continuation_logprobs(target, prompts, continuations, rows=2,
                                           width_multiple=16)
  terms = scoring.sample_calibration(target, sampling, prompts, continuations, rows=2,
                                     width_multiple=16)
  for p, c, (logq, n), t in zip(prompts, continuations, logprobs, terms):
    want_logq, want_u, want_outside = _direct(target, p, c, sampling)
    assert n == t["tokens"] == len(c)
    assert logq == pytest.approx(want_logq, abs=1e-3)
    assert t["u"] == pytest.approx(want_u, abs=1e-3)
    assert t["outside"] == want_outside
  assert sum(t["outside"] for t in terms) > 0, "top-k 6 of 16 should leave some tokens out"


def test_prompt_caches_are_made_once_and_change_no_score(tiny_pair):
  """Table 1's sampled cells of a task score other continuations of the same prompts:
  the prompts' caches are made by the first call and reused, with the same results."""
  target, _ = tiny_pair
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, 16, n).tolist() for n in (1, 7, 3, 12, 5)]
  sampling = Sampling(temperature=0.9, top_p=0.8)
  score = lambda conts, **kw: scoring.sample_calibration(target, sampling, prompts, conts,
                                                         rows=2, width_multiple=16, **kw)
  caches = {}
  score([rng.integers(0, 16, n).tolist() for n in (3, 9, 1, 4, 2)], prompt_caches=caches)
  assert len(caches) == 3                           # 5 prompts, 2 rows a chunk
  made = dict(caches)
  later = [rng.integers(0, 16, n).tolist() for n in (30, 2, 8, 1, 40)]
  reused = score(later, prompt_caches=caches)
  assert caches.keys() == made.keys() and all(caches[k] is made[k] for k in made)
  assert reused == score(later)                     # made afresh: the same terms
