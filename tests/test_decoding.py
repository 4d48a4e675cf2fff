"""Correctness of the sampler: the product.

Statistical tests use chi-square goodness of fit against EXACT distributions
(computed by enumeration), with cells of expected count < 5 pooled. Each test
asserts p-value > ALPHA = 1e-4. This file makes 21 such assertions (6
rejection pairs; 3 samplings x 2 methods x 2 prompts; 3 draft self-checks)
plus 6 acceptance-rate checks at 5 sigma (false failure 6e-7 each), so a
correct sampler fails the file for a random seed with probability at most
21e-4 + 4e-6 < 0.22% (union bound). Seeds are fixed, so a given run is
deterministic. Each statistical test also checks that it CAN fail: the same
statistic computed on samples from a wrong distribution is rejected.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from specsample.decoding import LM, Sampling, api, generate
from specsample.decoding.rejection import rejection_sample
from specsample.models import transformer as tr

ALPHA = 1e-4


def chi2_pvalue(observed: np.ndarray, expected_probs: np.ndarray, strict: bool = True) -> float:
  """GOF p-value; cells with expected count < 5 are pooled into one.

  A sample in a cell of zero expected mass is impossible under the null: an
  assertion failure when `strict`, else p-value 0 (for power checks).
  """
  n = observed.sum()
  expected = expected_probs * n
  if observed[expected_probs == 0].sum():
    assert not strict, "sampled a token of zero probability"
    return 0.0
  big = expected >= 5
  obs = np.append(observed[big], observed[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  if len(obs) < 2:
    return 1.0  # all mass in one cell, and zero-mass cells were checked exactly
  exp = exp * obs.sum() / exp.sum()
  return float(stats.chisquare(obs, exp).pvalue)


# ----------------------------------------------------------------- 1. rejection step alone

def _dirichlet(key, shape, conc=0.5):
  return jax.random.dirichlet(key, jnp.full(shape[-1:], conc), shape[:-1])


def _pairs(V=6):
  """(name, q, p) over V tokens: random and adversarial pairs."""
  k1, k2 = jax.random.split(jax.random.key(0))
  q_rand, p_rand = np.asarray(_dirichlet(k1, (V,))), np.asarray(_dirichlet(k2, (V,)))
  disjoint_q = np.array([.6, .4, 0, 0, 0, 0]); disjoint_p = np.array([0, 0, .5, .5, 0, 0])
  q_no3 = np.array([.3, .3, .2, 0., .1, .1]); p_one_hot3 = np.eye(V)[3]
  uniform = np.full(V, 1 / V)
  return [("random", q_rand, p_rand), ("disjoint", disjoint_q, disjoint_p),
          ("p_one_hot_where_q_zero", q_no3, p_one_hot3), ("p_uniform", q_rand, uniform),
          ("q_one_hot", np.eye(V)[2], p_rand), ("equal", q_rand, q_rand)]


@pytest.mark.parametrize("name,q,p", _pairs(), ids=[n for n, _, _ in _pairs()])
def test_rejection_emits_target_distribution(name, q, p):
  N, G, V = 200_000, 3, len(q)
  kd, kr = jax.random.split(jax.random.key(hash(name) % 2**31))
  q_BXV = jnp.broadcast_to(jnp.asarray(q, jnp.float32), (N, G + 1, V))
  p_BGV = jnp.broadcast_to(jnp.asarray(p, jnp.float32), (N, G, V))
  draft = jax.random.categorical(kd, jnp.log(p_BGV)).astype(jnp.int32)
  num_acc, nxt, toks = jax.jit(rejection_sample)(draft, p_BGV, q_BXV, kr)
  first = np.asarray(toks[:, 0])
  assert not np.isnan(np.asarray(q_BXV)).any()
  counts = np.bincount(first, minlength=V)
  assert chi2_pvalue(counts, q) > ALPHA
  # Emitted token at index num_accepted is next_token; accepted prefix is the draft.
  np.testing.assert_array_equal(np.asarray(toks)[np.arange(N), np.asarray(num_acc)], np.asarray(nxt))
  # Acceptance rate matches alpha = sum_x min(p, q) for the first position.
  alpha = np.minimum(p, q).sum()
  rate = float((np.asarray(num_acc) >= 1).mean())
  assert abs(rate - alpha) < 5 * np.sqrt(alpha * (1 - alpha) / N) + 1e-9


def test_rejection_statistic_can_fail():
  """The raw draft samples (no rejection) are caught by the same test."""
  _, q, p = _pairs()[0]
  draft = np.asarray(jax.random.categorical(jax.random.key(1), jnp.log(jnp.asarray(p)), shape=(200_000,)))
  assert chi2_pvalue(np.bincount(draft, minlength=len(q)), q) < ALPHA


def test_rejection_never_nan_on_degenerate_inputs():
  V = 4
  q = jnp.array([[[1., 0, 0, 0], [0.25] * 4]])          # [1, 2, V]
  p = jnp.array([[[1., 0, 0, 0]]])                      # residual max(0, q - p) = 0
  _, nxt, _ = rejection_sample(jnp.array([[1]]), p, q, jax.random.key(0))  # p(x)=0 for x=1
  assert 0 <= int(nxt[0]) < V


# ------------------------------------------------------- 2. end to end, joint of 3 tokens

def exact_joint(lm: LM, prompt: list[int], sampling: Sampling, n: int = 3) -> np.ndarray:
  """P(x1..xn | prompt) for every continuation, by enumeration: [V**n]."""
  V = lm.config.vocab_size
  conts = np.array(list(itertools.product(range(V), repeat=n)), np.int32)      # [V^n, n]
  seqs = np.concatenate([np.tile(prompt, (len(conts), 1)), conts], axis=1)
  logits, _ = jax.jit(lambda p, t: tr.forward(lm.config, p, t))(lm.params, jnp.asarray(seqs))
  P = len(prompt)
  probs = np.asarray(sampling.probs(logits[:, P - 1:P - 1 + n]))               # [V^n, n, V]
  step = probs[np.arange(len(conts))[:, None], np.arange(n)[None], conts]      # [V^n, n]
  return step.prod(axis=1)


SAMPLINGS = [Sampling(temperature=1.0), Sampling(temperature=0.7, top_k=5), Sampling(top_p=0.8)]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["t1", "t0.7_top5", "top_p0.8"])
def test_joint_of_first_three_tokens_matches_target(tiny_pair, sampling):
  target, draft = tiny_pair
  V = target.config.vocab_size
  prompts = [[1, 2, 3], [7, 5]]             # different lengths in one batch
  rows = 8000                               # samples per prompt
  batch = [prompts[i % 2] for i in range(2 * rows)]
  for method, kwargs in (("speculative", dict(draft=draft, num_draft=2)), ("autoregressive", {})):
    out = generate(target, batch, method=method, sampling=sampling, max_new_tokens=3,
                   seed=11, **kwargs)
    for j, prompt in enumerate(prompts):
      seqs = np.array([out.tokens[i] for i in range(j, len(batch), 2)])
      assert seqs.shape == (rows, 3)
      codes = seqs @ (V ** np.arange(2, -1, -1))
      expected = exact_joint(target, prompt, sampling)
      assert chi2_pvalue(np.bincount(codes, minlength=V ** 3), expected) > ALPHA, (method, j)
  # Power check: the draft's own joint distribution is rejected by the same test.
  wrong = exact_joint(draft, prompts[0], sampling)
  out = generate(draft, batch[::2], method="autoregressive", sampling=sampling, max_new_tokens=3, seed=3)
  codes = np.array(out.tokens) @ (V ** np.arange(2, -1, -1))
  assert chi2_pvalue(np.bincount(codes, minlength=V ** 3), exact_joint(target, prompts[0], sampling),
                     strict=False) < ALPHA
  assert chi2_pvalue(np.bincount(codes, minlength=V ** 3), wrong) > ALPHA


# ------------------------------------------------------------------------- 3. greedy

GREEDY_PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [3, 3], [9, 1, 4, 1, 5, 9, 2, 6, 5]]


@pytest.fixture(scope="module")
def greedy_reference(tiny_pair):
  target, _ = tiny_pair
  return generate(target, GREEDY_PROMPTS, method="autoregressive", sampling=Sampling(temperature=0),
                  max_new_tokens=24, eos_id=14)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_greedy_speculative_equals_autoregressive(tiny_pair, greedy_reference, k):
  target, draft = tiny_pair
  out = generate(target, GREEDY_PROMPTS, draft=draft, method="speculative", num_draft=k,
                 sampling=Sampling(temperature=0), max_new_tokens=24, eos_id=14)
  assert out.tokens == greedy_reference.tokens
  lengths = {len(t) for t in greedy_reference.tokens}
  assert len(lengths) > 1, "rows should stop at different times (eos) in this test"
  assert all(t[-1] == 14 for t in greedy_reference.tokens if len(t) < 24)
  s = out.stats
  np.testing.assert_array_equal(s["new_tokens"], [len(t) for t in out.tokens])
  assert (s["drafted"] == k * s["target_calls"]).all()
  assert (s["tokens_per_call"] >= 1).all() and (s["tokens_per_call"] <= k + 1).all()


def test_self_draft_accepts_everything(tiny_pair):
  target, _ = tiny_pair
  out = generate(target, GREEDY_PROMPTS, draft=target, method="speculative", num_draft=3,
                 sampling=Sampling(temperature=1.0), max_new_tokens=24, seed=5)
  # q == p exactly: r * p < q always holds (r < 1), so every draft is kept.
  assert (out.stats["acceptance_rate"] == 1).all()


# ---------------------------------------------------------- 4. compile once per shape

def test_new_prompts_same_shape_do_not_recompile(tiny_pair, greedy_reference):
  target, draft = tiny_pair
  kwargs = dict(draft=draft, method="speculative", num_draft=4, sampling=Sampling(temperature=0),
                max_new_tokens=24, eos_id=14)
  generate(target, GREEDY_PROMPTS, **kwargs)
  before = dict(api.TRACE_COUNT)
  other = [[2, 2, 2], [5, 1], [3, 4, 5, 6, 7, 8, 9], [1], [8] * 9]   # same padded shape
  generate(target, other, seed=123, **kwargs)
  assert api.TRACE_COUNT == before


# -------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,field", [
    (dict(num_draft=0), "num_draft"),
    (dict(sampling=Sampling(temperature=-1.0)), "temperature"),
    (dict(sampling=Sampling(top_p=0.0)), "top_p"),
    (dict(sampling=Sampling(top_p=1.5)), "top_p"),
    (dict(sampling=Sampling(top_k=-1)), "top_k"),
    (dict(max_new_tokens=60), "max_seq_len"),
    (dict(method="beam"), "method"),
])
def test_bad_settings_raise_before_compiling(tiny_pair, kwargs, field):
  target, draft = tiny_pair
  before = dict(api.TRACE_COUNT)
  args = dict(draft=draft, method="speculative", max_new_tokens=8) | kwargs
  with pytest.raises(ValueError, match=field):
    generate(target, [[1, 2]], **args)
  assert api.TRACE_COUNT == before


def test_mismatched_pairs_and_prompts_raise(tiny_pair):
  target, draft = tiny_pair
  other_vocab = LM(draft.config.replace(vocab_size=32), None)
  with pytest.raises(ValueError, match="vocab"):
    generate(target, [[1]], draft=other_vocab)
  with pytest.raises(ValueError, match="tokenizer"):
    generate(LM(target.config, target.params, "tokA"), [[1]], draft=LM(draft.config, draft.params, "tokB"))
  with pytest.raises(ValueError, match="empty"):
    generate(target, [[1, 2], []], draft=draft)
  with pytest.raises(ValueError, match="empty"):
    generate(target, [], draft=draft)
