"""The feature draft and prompt lookup in the speculative loop: as lossless as a draft model.

Statistical tests follow tests/test_decoding.py (chi-square against the exact
joint of the first 3 tokens by enumeration, p > ALPHA = 1e-4 each). This file
makes 7 such assertions, so a correct sampler fails it with probability at
most 7e-4; each also checks that it can fail (a wrong joint is rejected).
"combined" is a draft model with prompt lookup (generate(..., lookup=...)).
"""

import jax
import numpy as np
import pytest

from test_decoding import ALPHA, chi2_pvalue, exact_joint  # pylint: disable=g-bad-import-order
from specsample.decoding import LM, Sampling, generate
from specsample.decoding.lookup import PromptLookup
from specsample.models import feature_draft as fd

# Rows that repeat themselves (lookup finds matches) beside rows that do not.
PROMPTS = [[1, 2, 3, 1, 2], [4, 9], [5, 6, 7, 8, 9, 10, 11], [3, 3, 3, 3], [9, 1, 4, 1, 5, 9, 2, 6, 5]]
GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def feature_draft(tiny_pair):
  target, _ = tiny_pair
  config = fd.config_for(target.config, head_size=12)  # 4 tokens the draft never proposes
  params = jax.tree_util.tree_map(lambda x: x * 1.0, fd.init_params(config, jax.random.key(5), target.params))
  head_ids = np.sort(np.random.default_rng(0).permutation(16)[:12]).astype(np.int32)
  return fd.FeatureDraft(config, params, head_ids, target.tokenizer_id)


@pytest.fixture(scope="module")
def greedy_reference(tiny_pair):
  target, _ = tiny_pair
  return generate(target, PROMPTS, method="autoregressive", sampling=GREEDY, max_new_tokens=20, eos_id=14)


AUTO_COSTS = [1.0 + 0.3 * k for k in range(9)]  # fixed: no choice depends on a measured time


def _draft(which, tiny_pair, feature_draft):
  """(draft, extra generate kwargs) of a draft kind."""
  if which == "feature":
    return feature_draft, {}
  if which == "feature_auto":
    return feature_draft, {"num_draft": "auto", "iteration_costs": AUTO_COSTS}
  if which == "combined":  # every copy
    return tiny_pair[1], {"lookup": PromptLookup(max_ngram=2, min_ngram=1, min_draft_prob=0.0)}
  if which == "combined_gated":  # copies used only where the model gives them >= 0.15
    return tiny_pair[1], {"lookup": PromptLookup(max_ngram=2, min_ngram=1, min_draft_prob=0.15)}
  return PromptLookup(max_ngram=2, min_ngram=1), {}


@pytest.mark.parametrize("which,k", [(w, k) for w in ("feature", "lookup", "combined") for k in (1, 3)]
                         + [("feature", "auto"), ("combined", "auto")])  # lookup alone: refused below
def test_greedy_equals_autoregressive(tiny_pair, feature_draft, greedy_reference, which, k):
  target, _ = tiny_pair
  draft, extra = _draft(which, tiny_pair, feature_draft)
  costs = {"iteration_costs": AUTO_COSTS} if k == "auto" else {}
  out = generate(target, PROMPTS, draft=draft, num_draft=k, sampling=GREEDY, max_new_tokens=20,
                 eos_id=14, **extra, **costs)
  assert out.tokens == greedy_reference.tokens
  s = out.stats
  assert (s["tokens_per_call"] >= 1).all()
  if k != "auto":
    assert (s["drafted"] == k * s["target_calls"]).all()
  if which == "lookup":  # repeating rows accept copied tokens, so some row beats 1 token per call
    assert s["tokens_per_call"].max() > 1


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


SAMPLINGS = {"t1": Sampling(temperature=1.0), "t0.7_top5": Sampling(temperature=0.7, top_k=5),
             "top_p0.8": Sampling(top_p=0.8)}


@pytest.mark.parametrize("which,sampling", [("feature", "t1"), ("feature", "top_p0.8"),
                                            ("lookup", "t1"), ("lookup", "t0.7_top5"),
                                            ("combined", "t1"), ("combined_gated", "top_p0.8"),
                                            ("feature_auto", "t1")])
def test_joint_of_first_three_tokens_matches_target(tiny_pair, feature_draft, which, sampling):
  target, draft_model = tiny_pair
  sampling = SAMPLINGS[sampling]
  V = target.config.vocab_size
  prompts = [[1, 2, 1, 2], [7, 5]]            # a repeating row and one without matches
  rows = 8000
  batch = [prompts[i % 2] for i in range(2 * rows)]
  draft, extra = _draft(which, tiny_pair, feature_draft)
  out = generate(target, batch, draft=draft, **{"num_draft": 2, **extra}, sampling=sampling,
                 max_new_tokens=3, seed=17)
  weights = V ** np.arange(2, -1, -1)
  for j, prompt in enumerate(prompts):
    codes = np.array([out.tokens[i] for i in range(j, len(batch), 2)]) @ weights
    counts = np.bincount(codes, minlength=V ** 3)
    assert chi2_pvalue(counts, exact_joint(target, prompt, sampling)) > ALPHA, (which, j)
    # Power: the draft model's joint is rejected by the same statistic.
    assert chi2_pvalue(counts, exact_joint(draft_model, prompt, sampling), strict=False) < ALPHA


@pytest.mark.parametrize("which", ["feature", "lookup", "combined_gated"])
def test_gumbel_coupling_keeps_rows_invariant(tiny_pair, feature_draft, which):
  """Per-row seeds: each row's tokens equal autoregressive's, at any K and batch."""
  target, _ = tiny_pair
  sampling = Sampling(temperature=1.0, coupling="gumbel")
  seeds = [11, 12, 13, 14, 15]
  ref = generate(target, PROMPTS, method="autoregressive", sampling=sampling, max_new_tokens=12, seed=seeds)
  draft, extra = _draft(which, tiny_pair, feature_draft)
  for k in (1, 3):
    out = generate(target, PROMPTS, draft=draft, num_draft=k, sampling=sampling, max_new_tokens=12,
                   seed=seeds, **extra)
    assert out.tokens == ref.tokens
  one = generate(target, PROMPTS[2:3], draft=draft, num_draft=2, sampling=sampling, max_new_tokens=12,
                 seed=seeds[2:3], **extra)
  assert one.tokens[0] == ref.tokens[2]


@pytest.mark.parametrize("kwargs,message", [
    (dict(draft="prompt_lookup", num_draft="auto"), "num_draft must be an int >= 1 with draft='prompt_lookup'"),
    (dict(draft="prompt_lookup", num_draft=0), "num_draft must be an int >= 1 with draft='prompt_lookup'"),
    (dict(draft=PromptLookup(max_ngram=1, min_ngram=2)), "max_ngram=1 must be >= min_ngram=2"),
    (dict(draft=PromptLookup(max_ngram=0, min_ngram=0)), "max_ngram must be an int >= 1"),
    (dict(draft=PromptLookup(min_draft_prob=1.5)), "min_draft_prob must be a number in \\[0, 1\\]"),
    (dict(draft="lookup"), "draft must be an LM, a FeatureDraft, a PromptLookup or 'prompt_lookup'"),
    (dict(draft="prompt_lookup", mesh=object()), "drafts run on one device with a full prefill"),
])
def test_bad_lookup_settings_are_named(tiny_pair, kwargs, message):
  target, _ = tiny_pair
  with pytest.raises(ValueError, match=message):
    generate(target, PROMPTS, max_new_tokens=4, **kwargs)


def test_lookup_with_a_non_model_draft_is_refused(tiny_pair):
  target, _ = tiny_pair
  with pytest.raises(ValueError, match="lookup= combines prompt lookup with a draft model"):
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
  Gumbel tests above.)"""
  target, draft_model = tiny_pair
  kwargs = dict(draft=draft_model, num_draft=3, sampling=Sampling(temperature=1.0), max_new_tokens=12,
                seed=3)
  alone = generate(target, PROMPTS, **kwargs)
  gated = generate(target, PROMPTS, lookup=PromptLookup(max_ngram=2, min_draft_prob=1.0), **kwargs)
  assert gated.tokens == alone.tokens
  np.testing.assert_array_equal(gated.stats["accepted"], alone.stats["accepted"])
