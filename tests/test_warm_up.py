"""api.warm_up: a call's one-off costs paid without decoding, and nothing else changed.

A benchmark times `generate` after `warm_up` on the same setting and shapes, so
warm_up must leave the call it prepares exactly as it would have been (same
tokens, same statistics), with nothing left to compile and, for "auto" without
given costs, nothing left to calibrate.
"""

import collections
from concurrent import futures

import numpy as np
import pytest
from jax import monitoring

from specsample.decoding import Sampling, api, calibrate, generate, loops
from specsample.decoding.lookup import PromptLookup

PROMPTS = [[1, 2, 3, 1, 2, 3, 1], [4, 9], [5, 6, 7, 8, 9, 10, 11], [3, 3, 3, 3]]
NUCLEUS = Sampling(temperature=0.8, top_p=0.95)

SETTINGS = {
    "autoregressive": dict(method="autoregressive"),
    "fixed_k": dict(num_draft=3),
    "auto_given_costs": dict(num_draft=(0, 1, 3), iteration_costs=[1.0, 1.3, 1.9]),
    "auto_measured": dict(num_draft=(0, 1, 3)),
    "lookup_auto": dict(draft=PromptLookup(max_ngram=2), num_draft=(0, 1, 3),
                        iteration_costs=[1.0, 1.3, 1.9]),
}


# Backend compiles of the decode loops (loops.py's jitted functions), by name.
LOOP_COMPILES = collections.Counter()
monitoring.register_event_duration_secs_listener(
    lambda event, _, fun_name="", **__: LOOP_COMPILES.update([fun_name]) if (
        event.endswith("backend_compile_duration")
        and fun_name in ("jit(decode)", "jit(run)", "jit(init)", "jit(advance)")) else None)


def _cold() -> None:
  """Forget every decode loop and measured cost: the next call at any shape is a first.

  New loop functions trace and compile anew (their executables are new, whatever the
  persistent compilation cache gives back); other tests' jitted functions are untouched.
  """
  loops.clear_cache()
  calibrate._COSTS.clear()
  calibrate._PARTIAL.clear()


@pytest.mark.parametrize("name", list(SETTINGS))
def test_warm_up_compiles_and_calibrates_and_changes_no_output(tiny_pair, name):
  target, draft = tiny_pair
  kwargs = {"draft": draft, "sampling": NUCLEUS, "max_new_tokens": 21, "seed": 7, **SETTINGS[name]}
  _cold()
  traces = dict(api.TRACE_COUNT)
  api.warm_up(target, [[8] * 9] * len(PROMPTS), **{**kwargs, "seed": 99})  # the same shapes
  assert api.TRACE_COUNT != traces, "warm_up compiled nothing"
  traces, measured = dict(api.TRACE_COUNT), dict(calibrate._COSTS)
  assert len(measured) == (name == "auto_measured"), "warm_up measures auto's costs (only)"
  out = generate(target, PROMPTS, **kwargs)
  assert api.TRACE_COUNT == traces, "the call after warm_up compiled"
  assert calibrate._COSTS.keys() == measured.keys(), "the call after warm_up calibrated"
  _cold()
  reference = generate(target, PROMPTS, **kwargs)  # the same call, cold
  if name != "auto_measured":  # measured costs may differ between runs, and so may K
    assert out.tokens == reference.tokens
    for key in ("target_calls", "drafted", "accepted"):
      np.testing.assert_array_equal(out.stats[key], reference.stats[key])


def test_warm_up_checks_settings_before_compiling(tiny_pair):
  target, draft = tiny_pair
  traces = dict(api.TRACE_COUNT)
  with pytest.raises(ValueError, match="num_draft"):
    api.warm_up(target, PROMPTS, draft=draft, num_draft=0)
  with pytest.raises(TypeError, match="num_drafts"):  # generate's keywords, and only those
    api.warm_up(target, PROMPTS, draft=draft, num_drafts=3)
  assert api.TRACE_COUNT == traces


def test_precompile_from_two_threads_leaves_nothing_to_compile(tiny_pair):
  """Nor to prefill_only, which runs the same programs."""
  target, draft = tiny_pair
  settings = [{"draft": draft, "sampling": NUCLEUS, "max_new_tokens": 21, **SETTINGS[name]}
              for name in ("autoregressive", "fixed_k", "auto_given_costs")]
  _cold()
  before = sum(LOOP_COMPILES.values())
  with futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(lambda kwargs: api.precompile(target, PROMPTS, **kwargs), settings))
  compiled = sum(LOOP_COMPILES.values())
  assert compiled - before == 4, LOOP_COMPILES     # decode twice, auto's init and advance
  for kwargs in settings:
    api.prefill_only(target, PROMPTS, **kwargs)  # generate's own program, cut at the prefill
    api.warm_up(target, PROMPTS, **kwargs)
    generate(target, PROMPTS, seed=3, **kwargs)
  assert sum(LOOP_COMPILES.values()) == compiled, LOOP_COMPILES
