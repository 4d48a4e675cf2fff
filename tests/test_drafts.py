"""The feature draft and prompt lookup in the speculative loop: as lossless as a draft model.

Greedy identity, the features the loop hands the draft, the lookup gate and bad
input here; the sampled tests (chi-square, Gumbel invariance) in
tests/test_drafts_sampled.py. The kinds: tests/draft_kinds.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from draft_kinds import (AUTO_COSTS, AUTO_SET, GREEDY, PROMPTS, draft_for,  # pylint: disable=g-bad-import-order
                         make_feature_draft)
from specsample.decoding import LM, Sampling, api, common, drafts, generate, lookup, speculative
from specsample.decoding.lookup import PromptLookup
from specsample.models import feature_draft as fd


@pytest.fixture(scope="module")
def feature_draft(tiny_pair):
  return make_feature_draft(tiny_pair[0])


@pytest.fixture(scope="module")
def greedy_reference(tiny_pair):
  target, _ = tiny_pair
  return generate(target, PROMPTS, method="autoregressive", sampling=GREEDY, max_new_tokens=20, eos_id=14)


@pytest.mark.parametrize("which,k", [(w, k) for w in ("feature", "lookup", "combined") for k in (1, 3)]
                         + [(w, "auto") for w in ("feature", "lookup", "combined", "feature_combined")]
                         + [("feature_combined", 3)])
def test_greedy_equals_autoregressive(tiny_pair, feature_draft, greedy_reference, which, k):
  target, _ = tiny_pair
  draft, extra = draft_for(which, tiny_pair[1], feature_draft)
  costs = {"iteration_costs": AUTO_COSTS} if k == "auto" else {}
  out = generate(target, PROMPTS, draft=draft, num_draft=AUTO_SET if k == "auto" else k,
                 sampling=GREEDY, max_new_tokens=20, eos_id=14, **extra, **costs)
  assert out.tokens == greedy_reference.tokens
  assert out.stats["drafted"].sum() > 0   # speculative iterations ran (auto may pick K = 0)
  s = out.stats
  assert (s["tokens_per_call"] >= 1).all()
  if k != "auto":
    assert (s["drafted"] == k * s["target_calls"]).all()
  if which == "lookup":  # repeating rows accept copied tokens, so some row beats 1 token per call
    assert s["tokens_per_call"].max() > 1
  if which == "feature_combined" and k == 3:  # the copies are used: more accepted than the draft's
    alone = generate(target, PROMPTS, draft=feature_draft, num_draft=3, sampling=GREEDY,
                     max_new_tokens=20, eos_id=14)
    assert s["accepted"].sum() > alone.stats["accepted"].sum()


def test_feature_draft_reads_the_targets_features(tiny_pair, feature_draft):
  """The loop hands the draft real features: a draft that only passes the feature through
  (zero block, fc = [0; I]) accepts differently from one that ignores it (fc = 0)."""
  target, _ = tiny_pair
  D = target.config.d_model
  zero_block = jax.tree_util.tree_map(np.zeros_like, feature_draft.params["block"])
  passthrough = dict(feature_draft.params, block=zero_block,
                     fc=np.concatenate([np.zeros((D, D)), np.eye(D)]).astype(np.float32),
                     fc_bias=np.zeros(D, np.float32))
  blind = dict(passthrough, fc=np.zeros((2 * D, D), np.float32))
  rates = []
  for params in (passthrough, blind):
    draft = fd.FeatureDraft(feature_draft.config, params, np.arange(16, dtype=np.int32), target.tokenizer_id)
    out = generate(target, PROMPTS, draft=draft, num_draft=2, sampling=GREEDY, max_new_tokens=20)
    rates.append(out.stats["accepted"].sum())
  assert rates[0] != rates[1]


@pytest.mark.parametrize("kwargs,message", [
    (dict(draft="prompt_lookup", num_draft=0), "num_draft must be an int >= 1, 'auto' or a set with "
     "draft='prompt_lookup'"),
    (dict(draft="prompt_lookup", num_draft=(0,)), "num_draft \\(the paper's K\\) must be an int >= 1, 'auto'"),
    (dict(draft="prompt_lookup", num_draft=(0, 2), iteration_costs=[1.0]),
     "iteration_costs must hold one positive cost per K in \\(0, 2\\)"),
    (dict(draft=PromptLookup(max_ngram=1, min_ngram=2)), "max_ngram=1 must be >= min_ngram=2"),
    (dict(draft=PromptLookup(max_ngram=0, min_ngram=0)), "max_ngram must be an int >= 1"),
    (dict(draft=PromptLookup(min_draft_prob=1.5)), "min_draft_prob must be a number in \\[0, 1\\]"),
    (dict(draft="lookup"), "draft must be an LM, a FeatureDraft, a PromptLookup or 'prompt_lookup'"),
    (dict(draft="prompt_lookup", mesh=object()), "drafts run on one device: pass mesh=None"),
])
def test_bad_lookup_settings_are_named(tiny_pair, kwargs, message):
  target, _ = tiny_pair
  with pytest.raises(ValueError, match=message):
    generate(target, PROMPTS, max_new_tokens=4, **kwargs)


def test_lookup_with_a_non_model_draft_is_refused(tiny_pair):
  target, _ = tiny_pair
  with pytest.raises(ValueError, match="lookup= combines prompt lookup with a draft model or "
                     "feature draft"):
    generate(target, PROMPTS, draft="prompt_lookup", lookup=PromptLookup())


def test_bad_feature_draft_settings_are_named(tiny_pair, feature_draft):
  target, _ = tiny_pair
  with pytest.raises(ValueError, match="prompt 0 has 1 token"):
    generate(target, [[4], [1, 2]], draft=feature_draft, num_draft=2)
  other = fd.FeatureDraft(feature_draft.config, feature_draft.params, feature_draft.head_ids, "another")
  with pytest.raises(ValueError, match="draft and target tokenizers differ"):
    generate(LM(target.config, target.params, tokenizer_id="mine"), PROMPTS, draft=other, num_draft=2)


def test_gate_of_one_leaves_the_model_draft_alone(tiny_pair):
  """Under sampling at temperature 1 the model gives no token probability 1, so
  min_draft_prob=1 uses no copy: the same tokens and acceptance as the model
  draft without lookup, same seed. (The gate's losslessness: the chi-square and
  Gumbel tests of tests/test_drafts_sampled.py.)"""
  target, draft_model = tiny_pair
  kwargs = dict(draft=draft_model, num_draft=3, sampling=Sampling(temperature=1.0), max_new_tokens=12,
                seed=3)
  alone = generate(target, PROMPTS, **kwargs)
  gated = generate(target, PROMPTS, lookup=PromptLookup(max_ngram=2, min_draft_prob=1.0), **kwargs)
  assert gated.tokens == alone.tokens
  np.testing.assert_array_equal(gated.stats["accepted"], alone.stats["accepted"])


# Rows that repeat with period 4 and 3: at length 10 lookup copies G = 3 tokens in both.
REPEATING = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [5, 6, 7, 5, 6, 7, 5, 6, 7, 5]]


@pytest.mark.parametrize("which", ["combined", "feature_combined"])
def test_a_copy_only_iteration_proposes_what_the_model_would_and_keeps_its_state(
    tiny_pair, feature_draft, which):
  """Greedy, every row copying all G tokens: WithLookup skips the model's G steps
  (drafts._copy_only). Its proposals equal those of the steps, and its draft state
  agrees with theirs wherever the next iteration reads it: a draft model's cache
  through the last copy, a feature draft's through n - 2 and the features it keeps."""
  target, draft_model = tiny_pair
  draft, extra = draft_for(which, draft_model, feature_draft)
  G, P = 3, len(REPEATING[0])
  cfg, params = api.draft_inputs(target, draft)
  cfg = drafts.WithLookup(cfg, extra["lookup"])
  spec = common.DecodeSpec(GREEDY, 8, None, G, P + 8 + G + 1)
  parts = speculative.Parts(target.config, cfg, spec, target.params, params)
  tokens = common.init_buffer(jnp.array(REPEATING), spec.buffer_len)
  length = jnp.full((2,), P)
  _, hidden = common.prefill(target.config, target.params, tokens, length, P, True)
  state = drafts.prefill(cfg, params, tokens, length, P, spec, hidden)
  copied, matched = lookup.propose(cfg.lookup, tokens, length, G)
  np.testing.assert_array_equal(matched, [G, G])  # the premise: a copy-only iteration
  draw = drafts._draw_with_lookup(parts, cfg.lookup, False, copied, matched)
  key = jax.random.key(0)
  skipped = drafts.propose(parts, cfg, params, G, tokens, length, state, key, None)
  stepped = drafts._propose_model(parts, cfg, params, draw, G, tokens, length, state, key, None)
  np.testing.assert_array_equal(skipped[0], stepped[0])
  np.testing.assert_array_equal(skipped[1], stepped[1])
  if which == "combined":
    read, a, b = P + G - 1, skipped[2], stepped[2]  # positions 0 .. n + G - 2
  else:
    read, a, b = P - 1, skipped[2].cache, stepped[2].cache  # positions 0 .. n - 2
    np.testing.assert_array_equal(skipped[2].feats, stepped[2].feats)
  for x, y in zip(a.k + a.v, b.k + b.v):
    np.testing.assert_allclose(x[:, :read], y[:, :read], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["combined", "feature_combined"])
def test_greedy_with_copy_only_iterations_equals_autoregressive(tiny_pair, feature_draft, which):
  """Repeating rows at batch 2, whose first iteration is copy-only (the test above):
  the output is still the target's own token for token."""
  target, draft_model = tiny_pair
  draft, extra = draft_for(which, draft_model, feature_draft)
  kwargs = dict(sampling=GREEDY, max_new_tokens=16)
  out = generate(target, REPEATING, draft=draft, num_draft=3, **extra, **kwargs)
  assert out.tokens == generate(target, REPEATING, method="autoregressive", **kwargs).tokens


class _Stats:
  """The fields of a loop state that lookup's auto rule reads (speculative.SpecState)."""

  def __init__(self, tokens, length, done, alpha):
    self.tokens, self.length, self.done = tokens, length, jnp.array(done)
    self.trials_ema = jnp.full(length.shape, 10.0)
    self.accept_ema = 10.0 * jnp.asarray(alpha, jnp.float32) + 0 * self.trials_ema


# Rows with matches of 0, 3 and 2 tokens (at K = 3).
LOOKUP_ROWS = jnp.array([[1, 2, 3, 4, 5, 6, 0, 0],     # no repeat: no match
                         [7, 8, 7, 8, 9, 7, 8, 0],     # [7, 8] matched at 2: copies 9, 7, 8
                         [5, 6, 5, 0, 0, 0, 0, 0]])    # [5] matched at 0: copies 6, 5
LOOKUP_LENGTH = jnp.array([6, 7, 3])


def test_lookup_auto_caps_each_rows_gain_at_its_match():
  """choose_index: auto's bottleneck rule with E(alpha_b, min(K, matched_b)): K = 0 while
  a row without a match is the bottleneck, never past the bottleneck's match, and a short
  verify when the copies are rarely accepted or a wide one costs too much."""
  settings = PromptLookup(max_ngram=2, min_ngram=1)
  _, matched = lookup.propose(settings, LOOKUP_ROWS, LOOKUP_LENGTH, 3)
  np.testing.assert_array_equal(matched, [0, 3, 2])
  choices, cost = (0, 2, 3), jnp.array([1.0, 1.6, 1.9])

  def pick(done, alpha=0.9, remaining=(40, 40, 40), cost=cost, choices=choices):
    state = _Stats(LOOKUP_ROWS, LOOKUP_LENGTH, done, alpha)
    return choices[int(lookup.choose_index(settings, choices, state, cost, jnp.array(remaining)))]

  assert pick([False, False, False]) == 0   # row 0 has no match and is as far behind as any
  assert pick([False, True, True]) == 0
  assert pick([True, False, True]) == 3     # a match of 3 and copies accepted 90% of the time
  assert pick([True, True, False]) == 2     # a match of 2: K = 3 buys nothing more
  assert pick([False, False, False], remaining=(1, 40, 40)) == 2   # row 0 ahead: row 2 decides
  assert pick([True, False, True], alpha=0.1) == 0                 # copies rarely accepted
  assert pick([True, False, True], cost=jnp.array([1.0, 1.6, 3.0])) == 2  # K = 3 too dear
  assert pick([True, False, True], cost=jnp.ones(2), choices=(1, 2)) == 2  # largest useful K


def test_lookup_statistics_count_copies_and_observe_them_at_k0(tiny_pair):
  """Lookup's acceptance statistics: an iteration counts trials at copied positions
  only, and its K = 0 step (a plain target step) observes whether the target's token
  is the copy, for rows that have one."""
  settings = PromptLookup(max_ngram=2, min_ngram=1)
  state = _Stats(LOOKUP_ROWS, LOOKUP_LENGTH, [False] * 3, 0.5)
  accepted, trials = speculative._observations(settings, state, 3, jnp.array([0, 3, 1]))
  np.testing.assert_array_equal(accepted, [0, 3, 1])
  np.testing.assert_array_equal(trials, [0, 3, 2])   # row 0 copied nothing: no trial
  accepted, _ = speculative._observations(settings, state, 3, jnp.array([0, 3, 2]))
  np.testing.assert_array_equal(accepted, [0, 3, 2])

  target, _ = tiny_pair
  prompts = jnp.array([REPEATING[0], [9, 1, 4, 1, 5, 9, 2, 6, 3, 8]])  # row 1: no match for [3, 8]
  P = prompts.shape[1]
  spec = common.DecodeSpec(GREEDY, 4, None, 2, P + 8)
  length = jnp.full((2,), P)
  s = speculative.init_state(target.config, settings, spec, target.params, None, prompts, length,
                             jax.random.key(0))
  step = speculative.make_target_step(target.config, settings, spec, target.params, None, length)
  after = jax.jit(step)(s)
  copy, matched = lookup.propose(settings, s.tokens, s.length, 1)
  np.testing.assert_array_equal(matched, [1, 0])
  hit = float(after.tokens[0, P] == copy[0, 0])
  decay = speculative.ALPHA_DECAY
  # Row 1 has no copy, hence no observation: its counts stay as they were.
  np.testing.assert_allclose(after.trials_ema, [decay * s.trials_ema[0] + 1, s.trials_ema[1]])
  np.testing.assert_allclose(after.accept_ema, [decay * s.accept_ema[0] + hit, s.accept_ema[1]])
