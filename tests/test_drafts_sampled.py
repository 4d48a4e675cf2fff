"""Sampled output of the feature draft and prompt lookup in the loop: distributed as the target's.

Statistical tests follow tests/test_decoding.py (chi-square against the exact
joint of the first 3 tokens by enumeration, p > ALPHA = 1e-4 each). This file
makes 20 such assertions (9 cases of 2 prompts, 2 of one), so a correct sampler
fails it with probability at most 2e-3 (union bound); each also checks that it
can fail (a wrong joint is rejected). The kinds: tests/draft_kinds.py.
"""

import numpy as np
import pytest

from draft_kinds import PROMPTS, draft_for, make_feature_draft  # pylint: disable=g-bad-import-order
from test_decoding import ALPHA, chi2_pvalue, exact_joint  # pylint: disable=g-bad-import-order
from specsample.decoding import Sampling, generate


@pytest.fixture(scope="module")
def feature_draft(tiny_pair):
  return make_feature_draft(tiny_pair[0])


SAMPLINGS = {"t1": Sampling(temperature=1.0), "t0.7_top5": Sampling(temperature=0.7, top_k=5),
             "top_p0.8": Sampling(top_p=0.8)}


@pytest.mark.parametrize("which,sampling", [("feature", "t1"), ("feature", "top_p0.8"),
                                            ("lookup", "t1"), ("lookup", "t0.7_top5"),
                                            ("lookup_auto", "t1"),
                                            ("combined", "t1"), ("combined_gated", "top_p0.8"),
                                            ("feature_auto", "t1"),
                                            ("feature_combined_gated", "top_p0.8")])
def test_joint_of_first_three_tokens_matches_target(tiny_pair, feature_draft, which, sampling):
  target, draft_model = tiny_pair
  sampling = SAMPLINGS[sampling]
  V = target.config.vocab_size
  prompts = [[1, 2, 1, 2], [7, 5]]            # a repeating row and one without matches
  rows = 8000
  batch = [prompts[i % 2] for i in range(2 * rows)]
  draft, extra = draft_for(which, tiny_pair[1], feature_draft)
  out = generate(target, batch, draft=draft, **{"num_draft": 2, **extra}, sampling=sampling,
                 max_new_tokens=3, seed=17)
  weights = V ** np.arange(2, -1, -1)
  for j, prompt in enumerate(prompts):
    codes = np.array([out.tokens[i] for i in range(j, len(batch), 2)]) @ weights
    counts = np.bincount(codes, minlength=V ** 3)
    assert chi2_pvalue(counts, exact_joint(target, prompt, sampling)) > ALPHA, (which, j)
    # Power: the draft model's joint is rejected by the same statistic.
    assert chi2_pvalue(counts, exact_joint(draft_model, prompt, sampling), strict=False) < ALPHA


@pytest.mark.parametrize("which", ["combined", "feature_combined"])
def test_copy_only_iterations_keep_the_targets_joint(tiny_pair, feature_draft, which):
  """Every row is [1, 2, 1, 2]: in the first iteration all rows copy both tokens, so
  the model's steps are skipped (drafts._copy_only) and the copies are verified as
  point masses; later iterations mix both kinds across rows."""
  target, draft_model = tiny_pair
  sampling = SAMPLINGS["t1"]
  prompt = [1, 2, 1, 2]
  draft, extra = draft_for(which, draft_model, feature_draft)
  out = generate(target, [prompt] * 8000, draft=draft, num_draft=2, **extra, sampling=sampling,
                 max_new_tokens=3, seed=23)
  V = target.config.vocab_size
  counts = np.bincount(np.array(out.tokens) @ (V ** np.arange(2, -1, -1)), minlength=V ** 3)
  assert chi2_pvalue(counts, exact_joint(target, prompt, sampling)) > ALPHA
  assert chi2_pvalue(counts, exact_joint(draft_model, prompt, sampling), strict=False) < ALPHA


@pytest.mark.parametrize("which", ["feature", "lookup", "combined_gated", "feature_combined"])
def test_gumbel_coupling_keeps_rows_invariant(tiny_pair, feature_draft, which):
  """Per-row seeds: each row's tokens equal autoregressive's, at any K and batch."""
  target, _ = tiny_pair
  sampling = Sampling(temperature=1.0, coupling="gumbel")
  seeds = [11, 12, 13, 14, 15]
  ref = generate(target, PROMPTS, method="autoregressive", sampling=sampling, max_new_tokens=12, seed=seeds)
  draft, extra = draft_for(which, tiny_pair[1], feature_draft)
  for k in (1, 3):
    out = generate(target, PROMPTS, draft=draft, num_draft=k, sampling=sampling, max_new_tokens=12,
                   seed=seeds, **extra)
    assert out.tokens == ref.tokens
  one = generate(target, PROMPTS[2:3], draft=draft, num_draft=2, sampling=sampling, max_new_tokens=12,
                 seed=seeds[2:3], **extra)
  assert one.tokens[0] == ref.tokens[2]
  if which == "lookup":  # K from the matches, 0 (a target step) where no row has one
    auto = generate(target, PROMPTS, draft=draft, num_draft=(0, 1, 3), sampling=sampling,
                    max_new_tokens=12, seed=seeds)
    assert auto.tokens == ref.tokens
