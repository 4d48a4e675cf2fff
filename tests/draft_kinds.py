"""The draft kinds tests/test_drafts*.py run through the loop, and their shared prompts."""

import jax
import numpy as np

from specsample.decoding import Sampling
from specsample.decoding.lookup import PromptLookup
from specsample.models import feature_draft as fd

# Rows that repeat themselves (lookup finds matches) beside rows that do not.
PROMPTS = [[1, 2, 3, 1, 2], [4, 9], [5, 6, 7, 8, 9, 10, 11], [3, 3, 3, 3], [9, 1, 4, 1, 5, 9, 2, 6, 5]]
GREEDY = Sampling(temperature=0)

# "auto" here is auto over a small set: the same switch of loop bodies (K = 0
# included) as num_draft="auto", with 3 bodies to compile instead of 9; auto over
# the full set is tested with a draft model in test_adaptive.py.
AUTO_SET = (0, 1, 3)
AUTO_COSTS = [1.0 + 0.3 * k for k in AUTO_SET]  # fixed: no choice depends on a measured time


def make_feature_draft(target) -> fd.FeatureDraft:
  """A random feature draft for the tiny target, whose head leaves out 4 of its 16 tokens."""
  config = fd.config_for(target.config, head_size=12)
  params = jax.tree_util.tree_map(lambda x: x * 1.0, fd.init_params(config, jax.random.key(5), target.params))
  head_ids = np.sort(np.random.default_rng(0).permutation(16)[:12]).astype(np.int32)
  return fd.FeatureDraft(config, params, head_ids, target.tokenizer_id)


def draft_for(which: str, draft_model, feature_draft):
  """(draft, extra generate kwargs) of a draft kind. "combined" is a draft model with
  prompt lookup (generate(..., lookup=...))."""
  if which == "feature":
    return feature_draft, {}
  if which == "feature_auto":
    return feature_draft, {"num_draft": AUTO_SET, "iteration_costs": AUTO_COSTS}
  if which == "combined":  # every copy
    return draft_model, {"lookup": PromptLookup(max_ngram=2, min_ngram=1, min_draft_prob=0.0)}
  if which == "combined_gated":  # copies used only where the model gives them >= 0.15
    return draft_model, {"lookup": PromptLookup(max_ngram=2, min_ngram=1, min_draft_prob=0.15)}
  if which == "feature_combined":  # a feature draft with lookup, every copy
    return feature_draft, {"lookup": PromptLookup(max_ngram=2, min_ngram=1, min_draft_prob=0.0)}
  if which == "feature_combined_gated":
    return feature_draft, {"lookup": PromptLookup(max_ngram=2, min_ngram=1, min_draft_prob=0.15)}
  if which == "lookup_auto":  # K capped by the matches (lookup.choose_index)
    return PromptLookup(max_ngram=2, min_ngram=1), {"num_draft": AUTO_SET,
                                                     "iteration_costs": AUTO_COSTS}
  return PromptLookup(max_ngram=2, min_ngram=1), {}
