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

from specsample.decoding import LM, Sampling, api, generate, loops
from specsample.decoding.rejection import rejection_sample
from specsample.decoding.sampling import TRACED, _nucleus, sample
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

_forward = jax.jit(tr.forward, static_argnums=0)  # one compile per (config, shape)
_probs = jax.jit(Sampling.probs, static_argnums=0)  # eager top-p would compile op by op


def exact_joint(lm: LM, prompt: list[int], sampling: Sampling, n: int = 3) -> np.ndarray:
  """P(x1..xn | prompt) for every continuation, by enumeration: [V**n]."""
  V = lm.config.vocab_size
  conts = np.array(list(itertools.product(range(V), repeat=n)), np.int32)      # [V^n, n]
  seqs = np.concatenate([np.tile(prompt, (len(conts), 1)), conts], axis=1)
  logits, _ = _forward(lm.config, lm.params, jnp.asarray(seqs))
  P = len(prompt)
  probs = np.asarray(_probs(sampling, logits[:, P - 1:P - 1 + n]))             # [V^n, n, V]
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


@pytest.mark.parametrize("num_draft", [None, 3, (0, 2)], ids=["ar", "k3", "auto"])
def test_temperature_and_top_p_are_inputs_of_one_loop(tiny_pair, num_draft):
  """Settings that differ only in their values share a loop, and each call uses its own
  values: the shared loop's tokens equal those of a loop compiled for that setting first."""
  target, draft = tiny_pair
  kwargs = (dict(method="autoregressive") if num_draft is None else
            dict(draft=draft, num_draft=num_draft, iteration_costs=[1.0, 1.5][:len(num_draft)]
                 if isinstance(num_draft, tuple) else None))
  run = lambda sampling: generate(target, GREEDY_PROMPTS, sampling=sampling, max_new_tokens=12,
                                  seed=4, **kwargs).tokens
  first, second = Sampling(temperature=0.8, top_p=0.95), Sampling(temperature=1.3, top_p=0.6)
  run(first)
  before = dict(api.TRACE_COUNT)
  shared = run(second)
  assert api.TRACE_COUNT == before                  # no new trace for new values
  run(Sampling(temperature=1.3))                    # top-p off: its own loop, no nucleus in it
  assert api.TRACE_COUNT != before
  loops.clear_cache()
  assert run(second) == shared                      # compiled for `second` first: the same
  assert run(first) != shared                       # and the values do change the draws


def test_sampling_compile_key_keeps_what_shapes_the_program():
  nucleus = Sampling(temperature=0.8, top_k=7, top_p=0.9, coupling="gumbel")
  key = nucleus.compile_key()
  assert key == Sampling(temperature=TRACED, top_k=7, top_p=TRACED, coupling="gumbel")
  assert Sampling(temperature=1.3, top_k=7, top_p=0.5, coupling="gumbel").compile_key() == key
  assert not key.greedy and key.nucleus
  assert Sampling(temperature=0.8).compile_key() == Sampling(temperature=TRACED, top_p=1.0)
  assert not Sampling(temperature=0.8).compile_key().nucleus
  assert Sampling(temperature=0, top_p=0.9).compile_key() == Sampling(temperature=0, top_p=0.9)
  bound = key.with_values(jnp.asarray(nucleus.values()))
  assert float(bound.temperature) == np.float32(0.8) and float(bound.top_p) == np.float32(0.9)
  with pytest.raises(TypeError):                    # a key's markers cannot be computed with
    key.probs(jnp.zeros((1, 5)))


# ------------------------------------------------------------ 5. sampling transforms

def nucleus_reference(probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
  """The nucleus by its definition, in float64, row by row.

  threshold = min{p_i : S(p_i) < top_p}, S(v) = sum of p_j over p_j > v; kept = p >= threshold.

  Returns:
    kept: [R, V] bool. margin: [R], how far S of the threshold and of the next
    smaller value lie from top_p: below float32 rounding, either side is right.
  """
  top_p = float(np.float32(top_p))  # the transform compares in float32
  kept, margin = [], []
  for row in probs.astype(np.float64):
    values, counts = np.unique(row, return_counts=True)                 # ascending
    mass_above = np.cumsum((values * counts)[::-1])[::-1] - values * counts  # S(values)
    i = np.flatnonzero(mass_above < top_p)[0]
    kept.append(row >= values[i])
    margin.append(min(top_p - mass_above[i], mass_above[i - 1] - top_p if i else np.inf))
  return np.array(kept), np.array(margin)


def _nucleus_rows(V: int = 4096) -> np.ndarray:
  """[R, V] float32 rows from flat to one-hot, with ties and zeros."""
  rng = np.random.default_rng(0)
  softmax = lambda x: np.exp(x - x.max()) / np.exp(x - x.max()).sum()
  rows = [softmax(scale * rng.standard_normal(V))
          for scale in (0.1, 0.5, 1, 2, 3, 5, 8, 30) for _ in range(3)]
  rows += [np.eye(V)[7], np.full(V, 1 / V)]             # one-hot; flat (all tied)
  for levels in (2, 3, 8):                               # a few levels: ties everywhere
    r = rng.integers(1, levels + 1, V).astype(float) ** 4
    rows.append(r / r.sum())
  for support in (5, 50, 500):                           # zeros outside, as after top-k
    r = np.zeros(V)
    r[rng.choice(V, support, replace=False)] = softmax(2 * rng.standard_normal(support))
    rows.append(r)
  return np.asarray(rows, np.float32)


_nucleus_jit = jax.jit(_nucleus)  # top_p traced: one compile for every top_p


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.999])
def test_nucleus_matches_definition(top_p):
  probs = _nucleus_rows()
  out = np.asarray(_nucleus_jit(jnp.asarray(probs), jnp.float32(top_p)))
  kept, margin = nucleus_reference(probs, top_p)
  # Float32 sums of a row are within ~1e-7 of the float64 ones: rows whose
  # margin is above 1e-6 must match exactly, and they must be most rows.
  tol = 1e-6
  clear = margin > tol
  assert clear.mean() > 0.8, "too few rows test the threshold exactly"
  np.testing.assert_array_equal((out > 0)[clear], (kept & (probs > 0))[clear])
  # Other rows: the threshold may move by one distinct value, but the kept set
  # is {p >= t} with t (nearly) inside and the next smaller value (nearly) out.
  top_p = float(np.float32(top_p))
  for row, out_row in zip(probs[~clear].astype(np.float64), out[~clear]):
    t = row[out_row > 0].min()
    np.testing.assert_array_equal(out_row > 0, (row >= t) & (row > 0))
    assert row[row > t].sum() < top_p + tol
    below = row[row < t]
    if below.size:
      assert row[row > below.max()].sum() >= top_p - tol
  # Renormalised over the kept set.
  expected = np.where(out > 0, probs, 0) / np.where(out > 0, probs, 0).sum(-1, keepdims=True)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-9)


def test_nucleus_keeps_ties_with_the_smallest_kept_value():
  # Dyadic values: every sum is exact in float32, so the boundaries are sharp.
  V = 64
  cases = [  # (nonzero probabilities, top_p, how many of them are kept)
      ([.5, .25, .25], .5, 1),            # S(.25) = .5 is not < .5
      ([.5, .25, .25], .6, 3),            # S(.25) = .5 < .6: both tied .25s
      ([.25] * 4, .1, 4),                 # all tied with the most likely
      ([.5] + [.125] * 4, .55, 5),        # S(.125) = .5 < .55: all four .125s
      ([.5] + [.125] * 4, .5, 1),
  ]
  for nonzero, top_p, count in cases:
    probs = np.zeros(V, np.float32)
    probs[np.arange(len(nonzero)) * 7] = nonzero
    out = np.asarray(_nucleus_jit(jnp.asarray(probs[None]), jnp.float32(top_p)))[0]
    assert (out > 0).sum() == count, (nonzero, top_p)
    np.testing.assert_allclose(out.sum(), 1, rtol=1e-6)


def test_greedy_argmax_draws_equal_categorical_draws():
  """On one-hot rows, sample(greedy=True) and the greedy rejection step give
  exactly the tokens the random draws give."""
  B, G, V = 256, 3, 50
  k_draft, k_target, k_same, k_draw = jax.random.split(jax.random.key(4), 4)
  draft_BG = jax.random.randint(k_draft, (B, G), 0, V)
  other_BX = jax.random.randint(k_target, (B, G + 1), 0, V)
  same_BX = jax.random.bernoulli(k_same, 0.7, (B, G + 1))  # mixes acceptance lengths
  target_BX = jnp.where(same_BX, jnp.pad(draft_BG, ((0, 0), (0, 1))), other_BX)
  p_BGV, q_BXV = jax.nn.one_hot(draft_BG, V), jax.nn.one_hot(target_BX, V)
  jitted = jax.jit(rejection_sample, static_argnames="greedy")
  drawn = jitted(draft_BG, p_BGV, q_BXV, k_draw)
  greedy = jitted(draft_BG, p_BGV, q_BXV, k_draw, greedy=True)
  for a, b in zip(drawn, greedy):
    np.testing.assert_array_equal(a, b)
  assert len(set(np.asarray(greedy[0]).tolist())) == G + 1  # every acceptance length occurs
  np.testing.assert_array_equal(sample(k_draw, q_BXV, greedy=True), sample(k_draw, q_BXV))


def test_inverse_cdf_draws_follow_the_probabilities_and_never_a_zero():
  """sample() by inverse CDF on a row with zeros inside and at both ends, and
  unnormalised. Chi-square at ALPHA = 1e-4 (false failure 1e-4); the power
  check shifts 1% of the mass and must be rejected."""
  probs = np.array([0, 0.3, 0, 0.05, 0.25, 0, 0.1, 0.2, 0.1, 0], np.float32) * 3
  keys = jax.random.split(jax.random.key(8), 200_000)
  draws = np.asarray(jax.jit(jax.vmap(lambda k: sample(k, jnp.asarray(probs))))(keys))
  counts = np.bincount(draws, minlength=len(probs))
  assert counts[probs == 0].sum() == 0
  expected = probs / probs.sum()
  assert chi2_pvalue(counts, expected) > ALPHA
  shifted = expected.copy()
  shifted[[1, 4]] += [0.01, -0.01]
  assert chi2_pvalue(counts, shifted, strict=False) < ALPHA


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
