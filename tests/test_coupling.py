"""Sampling(coupling="gumbel"): a row's tokens depend only on its prompt and seed.

A batch of 2,000 rows (two ragged prompts, one seed per row, 10 new tokens)
is decoded autoregressively on one device with temperature, top-k and top-p
all on (Sampling(temperature=0.7, top_k=5, top_p=0.8): one transform that
runs all three; each option alone is checked below on single draws, without a
decode loop); its first two tokens pass the exact-enumeration chi-square of
test_decoding.py. Speculative decoding of 256 of those rows must give each
row's autoregressive tokens exactly, at every K, each K in another setting:

  K=1: rows 0..255 in order, one device (another batch size);
  K=3: rows 256..511 on the data=8 mesh of 8 fake CPU devices;
  K=7: 255 rows picked out of order plus a new 20-token prompt (padded width
       32 instead of 16, a longer buffer), one device.

So four compiles check speculative == autoregressive at K = 1, 3, 7, batch
invariance (rows removed, added, reordered) and mesh == one device; each
decode loop compiles for seconds on 2 cores. The models are a 1-layer pair
with a 16-token vocabulary and host weights (no init compile).

Float rounding: the models may round differently when the batch, the padded
width, the buffer length (it grows with K), the tokens per forward (K + 1
against 1) or the device layout change, and a Gumbel-max whose top two scores
lie within that rounding would flip. These tests assert EXACT equality, and
it holds on every row (also in a 4,000-row, 12-token run of three
(sampling, K) cases on the 2-layer tiny pair while writing them: 144,000
tokens, none differed).

Statistics: 2 chi-square assertions at ALPHA = 1e-4 (2 prompts), 4 on single
Gumbel-max draws and 2 Monte-Carlo checks of the acceptance formula at 5
sigma (6e-7 each): a correct sampler fails this file with probability
< 6e-4 + 2e-6 < 0.07% (union bound). Seeds are fixed, so a given run is
deterministic. Power checks reject the draft's joint and a wrong transform
with the same statistics.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specsample import sharding as sh
from specsample.decoding import LM, Sampling, api, coupling, generate
from specsample.models.presets import get_preset
from test_decoding import ALPHA, chi2_pvalue, exact_joint

import sharding_case as case

PROMPTS = [[1, 2, 3], [7, 5]]
ROWS = 2000                          # 1,000 samples per prompt
NEW = 10
SEEDS = list(range(1000, 1000 + ROWS))
SAMPLING = Sampling(temperature=0.7, top_k=5, top_p=0.8, coupling="gumbel")
LONG_PROMPT = [i % 16 for i in range(20)]
# Big-batch rows decoded speculatively, per K (module docstring).
SPEC_ROWS = {1: list(range(256)), 3: list(range(256, 512)),
             7: list(np.random.default_rng(0).permutation(ROWS)[:255])}


@pytest.fixture(scope="module")
def pair():
  """1-layer target and draft over 16 tokens, host weights (no init compile)."""
  cfg = get_preset("tiny", vocab_size=16, num_layers=1, tie_embeddings=False)
  return LM(cfg, case.random_params(cfg, 0)), LM(cfg, case.random_params(cfg, 1))


@pytest.fixture(scope="module")
def autoregressive(pair):
  batch = [PROMPTS[i % 2] for i in range(ROWS)]
  return generate(pair[0], batch, method="autoregressive", sampling=SAMPLING,
                  max_new_tokens=NEW, seed=SEEDS)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_speculative_equals_autoregressive_in_any_batch(pair, autoregressive, k):
  target, draft = pair
  rows = SPEC_ROWS[k]
  prompts, seeds = [PROMPTS[i % 2] for i in rows], [SEEDS[i] for i in rows]
  run = functools.partial(generate, target, draft=draft, method="speculative", num_draft=k,
                          sampling=SAMPLING, max_new_tokens=NEW)
  if k == 3:
    run = functools.partial(run, mesh=sh.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}))
  if k == 7:
    prompts, seeds = prompts + [LONG_PROMPT], seeds + [7]
  out = run(prompts, seed=seeds)
  assert out.tokens[:len(rows)] == [autoregressive.tokens[i] for i in rows]
  s = out.stats
  assert (s["new_tokens"] == NEW).all()
  assert (s["drafted"] == k * s["target_calls"]).all()
  # Both outcomes occur: drafts accepted and rejected, so accepted prefixes,
  # bonus tokens and rollbacks are all exercised.
  assert 0 < s["accepted"].sum() < s["drafted"].sum()
  assert (s["tokens_per_call"] > 1).any()
  if k == 1:
    # An int seed derives row b's key from (seed, b): moving rows changes their tokens.
    assert run(prompts, seed=3).tokens != run(prompts[::-1], seed=3).tokens[::-1]


def test_first_two_tokens_follow_the_target(pair, autoregressive):
  """The chi-square through the coupling (speculative output is the same tokens)."""
  target, draft = pair
  V = target.config.vocab_size
  codes = np.array([t[:2] for t in autoregressive.tokens]) @ np.array([V, 1])
  for j, prompt in enumerate(PROMPTS):
    observed = np.bincount(codes[j::2], minlength=V ** 2)
    assert chi2_pvalue(observed, exact_joint(target, prompt, SAMPLING, n=2)) > ALPHA, j
    if j == 0:  # power: the draft's joint is rejected by the same statistic
      wrong = exact_joint(draft, prompt, SAMPLING, n=2)
      assert chi2_pvalue(observed, wrong, strict=False) < ALPHA


# ------------------------------------------------------------------ the pure maths

SAMPLINGS = [Sampling(temperature=1.0), Sampling(temperature=0.7, top_k=5), Sampling(top_p=0.8),
             Sampling(temperature=0.5, top_k=9, top_p=0.9)]


@functools.partial(jax.jit, static_argnums=0)
def _transform_and_draw(sampling, logits_V, noise_NV):
  weights = coupling.log_weights(sampling, logits_V)
  tokens = coupling.propose(sampling, jnp.broadcast_to(logits_V, noise_NV.shape), noise_NV)
  return jax.nn.softmax(weights), sampling.probs(logits_V), tokens


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["t1", "t0.7_top5", "top_p0.8", "all"])
def test_gumbel_max_draws_follow_the_transform(sampling):
  """log_weights is log sampling.probs up to a constant, and propose() on
  100,000 noise rows is distributed as sampling.probs (chi-square)."""
  N, V = 100_000, 16
  rng = np.random.default_rng(3)
  logits = (2 * rng.standard_normal(V)).astype(np.float32)
  normalised, probs, tokens = _transform_and_draw(sampling, logits,
                                                  rng.gumbel(size=(N, V)).astype(np.float32))
  np.testing.assert_allclose(normalised, probs, rtol=1e-5, atol=1e-7)
  counts = np.bincount(np.asarray(tokens), minlength=V)
  assert chi2_pvalue(counts, np.asarray(probs, np.float64)) > ALPHA
  # Power: a wrong transform (temperature 2, none of the cases) is rejected.
  wrong = np.exp(logits / 2) / np.exp(logits / 2).sum()
  assert chi2_pvalue(counts, wrong, strict=False) < ALPHA


@pytest.mark.parametrize("seed", [0, 1])
def test_acceptance_probability_formula(seed):
  """Monte Carlo of P(argmax(log p + g) == argmax(log q + g)) against the closed form,
  at 5 sigma; and the closed form is below sum min(p, q), and 1 when p = q."""
  N, V = 200_000, 6
  rng = np.random.default_rng(seed)
  p, q = rng.dirichlet(np.full(V, 0.5)), rng.dirichlet(np.full(V, 0.5))
  g = rng.gumbel(size=(N, V))
  same = np.argmax(np.log(p) + g, -1) == np.argmax(np.log(q) + g, -1)
  alpha = float(jax.jit(coupling.acceptance_probability)(p, q))
  assert abs(same.mean() - alpha) < 5 * np.sqrt(alpha * (1 - alpha) / N)
  assert alpha < np.minimum(p, q).sum() - 0.01
  # The sorted O(V log V) form equals the O(V^2) definition.
  brute = p * q / np.maximum(p[None] * q[:, None], q[None] * p[:, None]).sum(-1)
  np.testing.assert_allclose(alpha, brute.sum(), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(coupling.acceptance_probability)(q, q), 1.0, rtol=1e-5)


def test_verify_contract():
  """Emitted tokens are the target's Gumbel-max tokens; the accepted prefix is the
  draft's longest prefix equal to them."""
  B, G, V = 64, 3, 5
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((B, G + 1, V)).astype(np.float32)
  noise = rng.gumbel(size=(B, G + 1, V)).astype(np.float32)
  target = np.argmax(logits + noise, -1)                  # temperature 1: Gumbel-max
  draft = np.where(rng.random((B, G)) < 0.6, target[:, :G], (target[:, :G] + 1) % V)
  verify = jax.jit(coupling.verify, static_argnums=0)
  num, nxt, toks = (np.asarray(x) for x in verify(Sampling(coupling="gumbel"), draft, logits, noise))
  np.testing.assert_array_equal(toks, target)
  np.testing.assert_array_equal(nxt, target[np.arange(B), num])
  for b in range(B):
    assert (draft[b, :num[b]] == target[b, :num[b]]).all()
    assert num[b] == G or draft[b, num[b]] != target[b, num[b]]
  assert set(num.tolist()) == set(range(G + 1))


def test_row_keys_depend_only_on_the_row_seed():
  keys = coupling.row_key_data([3, 9, 3], 3)
  np.testing.assert_array_equal(keys[0], keys[2])
  np.testing.assert_array_equal(keys[1], coupling.row_key_data([9], 1)[0])
  derived = coupling.row_key_data(3, 4)          # int seed: one key per row index
  assert len({tuple(k) for k in derived}) == 4
  np.testing.assert_array_equal(derived[:2], coupling.row_key_data(3, 2))


# -------------------------------------------------------------------------- bad input

GUMBEL = Sampling(coupling="gumbel")


@pytest.mark.parametrize("kwargs,message", [
    (dict(sampling=Sampling(coupling="gumble")), "sampling.coupling must be one of"),
    (dict(sampling=GUMBEL, seed=[1]), "seed: 1 per-row seeds for 2 prompts"),
    (dict(sampling=GUMBEL, seed=[1, 2, 3]), "seed: 3 per-row seeds for 2 prompts"),
    (dict(sampling=GUMBEL, seed=[1, 2.0]), r"seed\[1\] must be an int in \[0, 2\*\*32\)"),
    (dict(sampling=GUMBEL, seed=[1, -2]), r"seed\[1\] must be an int"),
    (dict(sampling=GUMBEL, seed=[True, 2]), r"seed\[0\] must be an int"),
    (dict(sampling=GUMBEL, seed=2**40), r"seed must be in \[0, 2\*\*32\)"),
    (dict(sampling=GUMBEL, seed="7"), "seed must be an int or"),
    (dict(seed=[1, 2]), "seed: one seed per row needs sampling.coupling='gumbel'"),
])
def test_bad_coupling_settings_raise_before_compiling(pair, kwargs, message):
  target, draft = pair
  before = dict(api.TRACE_COUNT)
  with pytest.raises(ValueError, match=message):
    generate(target, [[1, 2], [3]], draft=draft, max_new_tokens=4, **kwargs)
  assert api.TRACE_COUNT == before
