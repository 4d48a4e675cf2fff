"""Sampling(coupling="gumbel"): a row's tokens depend only on its prompt and seed.

One batch of 4,000 rows (two ragged prompts, one seed per row, 12 new tokens)
is decoded autoregressively and speculatively for three (sampling, K) pairs:
every sampling option once and every K in {1, 3, 7} once (a Latin design
rather than the 3 x 3 grid: each speculative compile costs seconds on 2
cores, and the coupling treats K and the sampling transform independently).
On it: speculative == autoregressive token for token on every row, and the
first two tokens pass the exact-enumeration chi-square of test_decoding.py.
Then eight of those rows in another batch (reordered, with a longer prompt
added: another shape), on one device and on a mesh of 8 fake CPU devices.
Every sampling option's Gumbel-max draw is also checked alone, on [N, V].

Float rounding: the models round differently when the batch, the padded
width, the buffer length or the tokens per forward change, and a Gumbel-max
whose top two scores lie within that rounding would flip. These tests assert
EXACT equality and it holds on every row: over the 3 x 4,000 rows x 12
tokens here no token differs (a flip needs two scores within ~1e-6, about
one token in 10^5 to 10^6 for these 16-token vocabularies).

Statistics: 6 chi-square assertions at ALPHA = 1e-4 (3 samplings x 2
prompts), 4 more on single draws, and 2 Monte-Carlo checks of the acceptance
formula at 5 sigma (6e-7 each): a correct sampler fails this file with
probability < 10e-4 + 2e-6 < 0.11% (union bound). Seeds are fixed, so a given
run is deterministic. Power checks reject the draft's joint and a wrong
transform with the same statistic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specsample import sharding as sh
from specsample.decoding import Sampling, api, coupling, generate
from test_decoding import ALPHA, chi2_pvalue, exact_joint

PROMPTS = [[1, 2, 3], [7, 5]]
ROWS = 4000                          # 2,000 samples per prompt
NEW = 12
SEEDS = list(range(1000, 1000 + ROWS))
# (sampling, K): each sampling option once, each K once.
CASES = [(Sampling(temperature=1.0, coupling="gumbel"), 1),
         (Sampling(temperature=0.7, top_k=5, coupling="gumbel"), 3),
         (Sampling(top_p=0.8, coupling="gumbel"), 7)]
IDS = ["t1_K1", "t0.7_top5_K3", "top_p0.8_K7"]


def _batch():
  return [PROMPTS[i % 2] for i in range(ROWS)]


@pytest.fixture(scope="module", params=range(len(CASES)), ids=IDS)
def decoded(request, tiny_pair):
  """(sampling, K, autoregressive output, speculative output) on the big batch."""
  target, draft = tiny_pair
  sampling, k = CASES[request.param]
  kwargs = dict(sampling=sampling, max_new_tokens=NEW, seed=SEEDS)
  ar = generate(target, _batch(), method="autoregressive", **kwargs)
  spec = generate(target, _batch(), draft=draft, method="speculative", num_draft=k, **kwargs)
  return sampling, k, ar, spec


def test_speculative_equals_autoregressive(decoded):
  sampling, k, ar, spec = decoded
  assert spec.tokens == ar.tokens          # every row, every token (4,000 seeds)
  s = spec.stats
  assert (s["new_tokens"] == NEW).all()
  assert (s["drafted"] == k * s["target_calls"]).all()
  # Both outcomes occur: some drafts accepted, some rejected (the tiny random
  # pair agrees rarely, so this spans accepted prefixes and rollbacks).
  assert 0 < s["accepted"].sum() < s["drafted"].sum()
  assert (s["tokens_per_call"] > 1).any()


def test_first_two_tokens_follow_the_target(tiny_pair, decoded):
  target, draft = tiny_pair
  sampling, _, _, spec = decoded
  V = target.config.vocab_size
  codes = np.array([t[:2] for t in spec.tokens]) @ np.array([V, 1])
  for j, prompt in enumerate(PROMPTS):
    observed = np.bincount(codes[j::2], minlength=V ** 2)
    assert chi2_pvalue(observed, exact_joint(target, prompt, sampling, n=2)) > ALPHA, j
    if j == 0:  # power: the draft's joint is rejected by the same statistic
      wrong = exact_joint(draft, prompt, sampling, n=2)
      assert chi2_pvalue(observed, wrong, strict=False) < ALPHA


PICKED = [11, 4, 7, 0, 2, 9, 5]          # rows of the big batch, reordered


@pytest.fixture(scope="module")
def other_batch(tiny_pair):
  """Seven big-batch rows, reordered, plus a 20-token prompt (padded width 32
  instead of 16, a longer buffer): the K=3 case, decoded on one device."""
  target, draft = tiny_pair
  sampling, k = CASES[1]
  prompts = [_batch()[i] for i in PICKED] + [[i % 16 for i in range(20)]]
  kwargs = dict(draft=draft, num_draft=k, sampling=sampling, max_new_tokens=NEW)
  seeds = [SEEDS[i] for i in PICKED] + [7]
  return prompts, seeds, kwargs, generate(target, prompts, seed=seeds, **kwargs)


def test_row_output_independent_of_the_batch(tiny_pair, decoded, other_batch):
  target, _ = tiny_pair
  _, k, _, spec = decoded
  if k != CASES[1][1]:
    pytest.skip("the other batch is decoded for the K=3 case only (one more compile)")
  prompts, _, kwargs, out = other_batch
  assert out.tokens[:-1] == [spec.tokens[i] for i in PICKED]
  # An int seed derives row b's key from (seed, b): moving a row changes its tokens.
  rows = generate(target, prompts, seed=3, **kwargs).tokens
  moved = generate(target, prompts[::-1], seed=3, **kwargs).tokens[::-1]
  assert rows != moved


def test_mesh_equals_one_device(tiny_pair, other_batch):
  """The same 8 rows on the (fsdp=2, tensor=4) mesh of 8 fake CPU devices: batch
  split in two, heads and vocabulary in four (kv heads replicated)."""
  target, _ = tiny_pair
  prompts, seeds, kwargs, single = other_batch
  mesh = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  sharded = generate(target, prompts, seed=seeds, mesh=mesh, **kwargs)
  assert sharded.tokens == single.tokens


# ------------------------------------------------------------------ the pure maths

def test_log_weights_are_the_transformed_distribution():
  logits = 3 * jax.random.normal(jax.random.key(0), (64, 50))
  for sampling in (Sampling(temperature=0.7), Sampling(temperature=1.3, top_k=7),
                   Sampling(top_p=0.6), Sampling(temperature=0.5, top_k=20, top_p=0.9)):
    np.testing.assert_allclose(jax.nn.softmax(coupling.log_weights(sampling, logits)),
                               sampling.probs(logits), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), Sampling(temperature=0.7, top_k=5),
                                      Sampling(top_p=0.8), Sampling(temperature=0.5, top_k=9, top_p=0.9)])
def test_gumbel_max_draws_follow_the_transform(sampling):
  """propose() on 100,000 rows of one logit vector is distributed as sampling.probs."""
  N, V = 100_000, 16
  logits = 2 * jax.random.normal(jax.random.key(3), (V,))
  noise = jax.random.gumbel(jax.random.key(4), (N, V))
  tokens = np.asarray(jax.jit(coupling.propose, static_argnums=0)(
      sampling, jnp.broadcast_to(logits, (N, V)), noise))
  counts = np.bincount(tokens, minlength=V)
  assert chi2_pvalue(counts, np.asarray(sampling.probs(logits), np.float64)) > ALPHA
  # Power: a wrong transform (temperature 2, none of the cases) is rejected.
  assert chi2_pvalue(counts, np.asarray(jax.nn.softmax(logits / 2), np.float64), strict=False) < ALPHA


@pytest.mark.parametrize("seed", [0, 1])
def test_acceptance_probability_formula(seed):
  """Monte Carlo of P(argmax(log p + g) == argmax(log q + g)) against the closed form,
  at 5 sigma; and the closed form is below sum min(p, q), equal to it when p = q."""
  N, V = 200_000, 6
  kp, kq, kg = jax.random.split(jax.random.key(seed), 3)
  p = np.asarray(jax.random.dirichlet(kp, jnp.full(V, 0.5)), np.float64)
  q = np.asarray(jax.random.dirichlet(kq, jnp.full(V, 0.5)), np.float64)
  g = jax.random.gumbel(kg, (N, V))
  same = np.asarray(jnp.argmax(jnp.log(p) + g, -1) == jnp.argmax(jnp.log(q) + g, -1))
  alpha = coupling.acceptance_probability(p, q)
  assert abs(same.mean() - alpha) < 5 * np.sqrt(alpha * (1 - alpha) / N)
  assert alpha < np.minimum(p, q).sum() - 0.01
  np.testing.assert_allclose(coupling.acceptance_probability(q, q), 1.0, rtol=1e-12)


def test_verify_contract():
  """Emitted tokens are the target's Gumbel-max tokens; the accepted prefix is the
  draft's longest prefix equal to them."""
  B, G, V = 64, 3, 5
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  logits = jax.random.normal(k1, (B, G + 1, V))
  noise = jax.random.gumbel(k2, (B, G + 1, V))
  sampling = Sampling(coupling="gumbel")
  target = np.asarray(coupling.propose(sampling, logits, noise))
  draft = np.where(np.asarray(jax.random.bernoulli(k3, 0.6, (B, G))), target[:, :G],
                   (target[:, :G] + 1) % V)
  num, nxt, toks = coupling.verify(sampling, jnp.asarray(draft), logits, noise)
  num, nxt, toks = np.asarray(num), np.asarray(nxt), np.asarray(toks)
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
def test_bad_coupling_settings_raise_before_compiling(tiny_pair, kwargs, message):
  target, draft = tiny_pair
  before = dict(api.TRACE_COUNT)
  with pytest.raises(ValueError, match=message):
    generate(target, [[1, 2], [3]], draft=draft, max_new_tokens=4, **kwargs)
  assert api.TRACE_COUNT == before
