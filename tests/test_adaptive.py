"""Adaptive K (num_draft="auto" or a set of K): lossless, compiled once, and it really adapts.

The statistical test reuses test_decoding's exact-enumeration chi-square with
ALPHA = 1e-4 per assertion; this file makes 4 such assertions (2 prompts, 2
settings), so a correct sampler fails it with probability < 4e-4 (union bound) for a
random seed; seeds are fixed, so a given run is deterministic.
"""

import jax
import numpy as np
import pytest

from specsample.decoding import Sampling, api, calibrate, generate
from specsample.decoding import adaptive, loops, speculative
from specsample.eval.speed import ablation, breakdown
from test_decoding import ALPHA, GREEDY_PROMPTS, chi2_pvalue, exact_joint

GREEDY = Sampling(temperature=0)
KWARGS = dict(method="speculative", max_new_tokens=24, eos_id=14)


@pytest.fixture(scope="module")
def greedy_ar(tiny_pair):
  target, _ = tiny_pair
  return generate(target, GREEDY_PROMPTS, method="autoregressive", sampling=GREEDY,
                  max_new_tokens=24, eos_id=14)


def test_auto_greedy_equals_autoregressive_and_compiles_once(tiny_pair, greedy_ar):
  target, _ = tiny_pair
  # The draft is the target: every draft token is accepted (alpha = 1), so with
  # costs that grow slower than K + 1, auto must move to long blocks. (Fixed
  # costs: measured ones depend on the machine's load; calibration is tested below.)
  costs = [1 + 0.3 * k for k in calibrate.AUTO_CHOICES]
  out = generate(target, GREEDY_PROMPTS, draft=target, num_draft="auto", sampling=GREEDY,
                 iteration_costs=costs, **KWARGS)
  assert out.tokens == greedy_ar.tokens
  assert (out.stats["acceptance_rate"] == 1).all()
  # (A row that hits eos after one iteration only saw the prior's choice.)
  s = out.stats
  assert s["drafted"].sum() / s["target_calls"].sum() > 2, s["draft_per_call"]
  before = dict(api.TRACE_COUNT)
  other = [[2, 2, 2], [5, 1], [3, 4, 5, 6, 7, 8, 9], [1], [8] * 9]   # same padded shape
  generate(target, other, draft=target, num_draft="auto", sampling=GREEDY, seed=3,
           iteration_costs=costs, **KWARGS)
  assert api.TRACE_COUNT == before


@pytest.mark.parametrize("costs,expected_k", [([1.0, 1e4], 0), ([1e4, 1.0], 2)])
def test_costs_decide_k_including_plain_autoregressive_steps(tiny_pair, greedy_ar, costs,
                                                             expected_k):
  target, _ = tiny_pair
  out = generate(target, GREEDY_PROMPTS, draft=target, num_draft=(0, 2), iteration_costs=costs,
                 sampling=GREEDY, **KWARGS)
  assert out.tokens == greedy_ar.tokens
  np.testing.assert_array_equal(out.stats["draft_per_call"], expected_k)


@pytest.mark.parametrize("done", [(False, True), (False, False)])
def test_choose_minimises_the_bottleneck_rows_time(done):
  alpha = np.array([0.9, 0.2], np.float32)
  state = speculative.SpecState(
      tokens=None, length=None, done=np.array(done), target_cache=None,
      draft_state=None, key=None, target_calls=None, drafted=None, accepted=None,
      accept_ema=alpha * 10, trials_ema=np.full(2, 10.0, np.float32), row_keys=None,
      zero_streak=np.int32(0), ar_only=np.bool_(False))
  choices = (0, 1, 2, 4)
  cost = np.array([1.0, 1.1, 1.2, 1.4], np.float32)
  remaining = np.array([20, 10])
  # Time to finish = cost_K x max over active rows of remaining / E(alpha, K).
  active = ~np.array(done)
  time_ = [c * max(r / adaptive.expected_tokens(float(a), k)
                   for a, r, on in zip(alpha, remaining, active) if on)
           for k, c in zip(choices, cost)]
  chosen = int(adaptive.choose(state, choices, cost, remaining))
  assert chosen == int(np.argmin(time_))
  # Alone, the high-alpha row wants K=4; with the low-alpha row active, K=4
  # would make that row the bottleneck, and K=2 finishes first.
  assert chosen == (3 if done[1] else 2)


@pytest.mark.parametrize("ar_after", [speculative.AR_AFTER, 1])
def test_auto_samples_the_target_distribution(tiny_pair, monkeypatch, request, ar_after):
  """Costs chosen so that K moves between 0, 1 and 2 as the acceptance estimate moves;
  with ar_after=1 most rows also end in the draft-free steps of ar_only."""
  monkeypatch.setattr(speculative, "AR_AFTER", ar_after)
  # AR_AFTER is read when the loop is traced: a loop cached from the other case (or kept
  # for a later test) would keep its value.
  loops.clear_cache()
  request.addfinalizer(loops.clear_cache)
  target, draft = tiny_pair
  V = target.config.vocab_size
  sampling = Sampling(temperature=1.0)
  prompts, rows = [[1, 2, 3], [7, 5]], 6000
  batch = [prompts[i % 2] for i in range(2 * rows)]
  out = generate(target, batch, draft=draft, method="speculative", num_draft=(0, 1, 2),
                 iteration_costs=[1.0, 1.3, 1.6], sampling=sampling, max_new_tokens=3, seed=7)
  for j, prompt in enumerate(prompts):
    codes = np.array([out.tokens[i] for i in range(j, len(batch), 2)]) @ (V ** np.arange(2, -1, -1))
    assert chi2_pvalue(np.bincount(codes, minlength=V ** 3), exact_joint(target, prompt, sampling)) > ALPHA


def test_auto_gives_up_on_the_draft_losslessly(tiny_pair, greedy_ar, monkeypatch):
  """After AR_AFTER iterations at K = 0, auto runs draft-free target steps for the rest
  of the call (the draft cache falls behind): still token for token autoregressive."""
  monkeypatch.setattr(speculative, "AR_AFTER", 2)
  target, draft = tiny_pair
  prompts, prompt_len, spec = api.prepare(target, draft, GREEDY_PROMPTS, "speculative", (0, 1),
                                          GREEDY, 24, 14, 16)
  loop = jax.jit(speculative.speculative_loop, static_argnums=(0, 1, 2))
  # K = 1 pays at the prior alpha (0.5): 1.5 tokens for 1.45; below alpha 0.45 it does not.
  s = loop(target.config, draft.config, spec, target.params, draft.params, prompts, prompt_len,
           jax.random.key(0), np.array([1.0, 1.45], np.float32))
  assert bool(s.ar_only)
  tokens = [np.asarray(s.tokens)[b, prompt_len[b]:int(s.length[b])].tolist()
            for b in range(len(GREEDY_PROMPTS))]
  assert tokens == greedy_ar.tokens
  assert int(np.asarray(s.drafted).sum()) > 0   # it did speculate before giving up


@pytest.mark.parametrize("num_draft,costs,field", [
    ("fast", None, "num_draft"), ((), None, "num_draft"), ((0,), None, "num_draft"),
    ((1, 1), None, "num_draft"), ((-1, 2), None, "num_draft"), (True, None, "num_draft"),
    (4, [1.0], "iteration_costs"), ("auto", [1.0, 2.0], "iteration_costs"),
    ((0, 1), [1.0, -1.0], "iteration_costs"),
])
def test_bad_auto_settings_raise_before_compiling(tiny_pair, num_draft, costs, field):
  target, draft = tiny_pair
  before = dict(api.TRACE_COUNT)
  with pytest.raises(ValueError, match=field):
    generate(target, [[1, 2]], draft=draft, num_draft=num_draft, iteration_costs=costs,
             max_new_tokens=4)
  assert api.TRACE_COUNT == before


def test_calibration_times_the_calls_own_iterations_once_per_shape(tiny_pair, greedy_ar,
                                                                     monkeypatch):
  """The first call at a shape times the anchor K values on its own first iterations (few,
  whatever the batch), carries on from them, and is still token for token autoregressive;
  the second call reuses the costs. Nothing here depends on the measured values."""
  target, _ = tiny_pair
  runs, original = [], calibrate.measure

  def counting(key, advance, state, choices):
    def logged(state, index, trips):
      state, ran = advance(state, index, trips)
      runs.append((key, index, trips, ran))
      return state, ran
    return original(key, logged, state, choices)

  monkeypatch.setattr(calibrate, "measure", counting)
  monkeypatch.setattr(calibrate, "SEGMENT_S", 1e9)   # every anchor runs MAX_TRIPS iterations
  monkeypatch.setattr(calibrate, "MAX_TRIPS", 2)
  before, choices = len(calibrate._COSTS), (0, 1, 2)
  for seed in range(2):  # one loop compiled, no recompile on the second call
    out = generate(target, GREEDY_PROMPTS, draft=target, num_draft=choices, sampling=GREEDY,
                   seed=seed, **KWARGS)
    assert out.tokens == greedy_ar.tokens
    if seed == 0:
      traces = dict(api.TRACE_COUNT)
  assert api.TRACE_COUNT == traces
  assert len(calibrate._COSTS) == before + 1 and len({r[0] for r in runs}) == 1
  # The anchors K = 0 and the two smallest K >= 1, each one untimed iteration (its one-off
  # costs) then timed for MAX_TRIPS iterations in all, only in the first call.
  assert [(index, ran) for _, index, _, ran in runs] == [(0, 1), (0, 1), (0, 1), (1, 1), (1, 1),
                                                         (1, 1), (2, 1), (2, 1), (2, 1)]
  costs = calibrate._COSTS[runs[0][0]]
  assert costs.shape == (3,) and (np.diff(costs) >= 0).all()   # non-decreasing by construction


def test_each_ks_one_off_first_iteration_is_not_timed(monkeypatch):
  """On XLA:CPU the first run of each loop body costs several times the next ones. A fake
  loop on a fake clock: each K's first iteration takes 100 s, later ones (K + 1) s. The
  measured costs are the steady ones (before the fix K >= 1 were timed on first runs)."""
  clock, seen = [0.0], set()

  def advance(state, index, trips):
    k = (0, 1, 2)[index]
    for _ in range(trips):
      clock[0] += 100.0 if index not in seen else k + 1.0
      seen.add(index)
    return state, trips

  monkeypatch.setattr(calibrate.time, "perf_counter", lambda: clock[0])
  monkeypatch.setattr(calibrate, "MAX_TRIPS", 3)
  _, costs = calibrate.measure(("fake clock",), advance, None, (0, 1, 2))
  np.testing.assert_allclose(costs, [1e3, 2e3, 3e3])   # ms
  calibrate._COSTS.pop(("fake clock",))


def test_interpolated_costs_are_affine_between_anchors_and_monotone():
  choices = (0, 1, 2, 3, 5)
  assert calibrate.anchors(choices) == (0, 1, 2, 3)   # K = 0, 1, 2 and the middle of 1, 2, 3, 5
  assert calibrate.anchors((2, 4, 8)) == (0, 1) and calibrate.anchors((3,)) == (0,)
  # Four or more K >= 1: also the middle one (auto's 0..8: K = 5).
  assert calibrate.anchors(tuple(range(9))) == (0, 1, 2, 5)
  assert calibrate.anchors((0, 1, 2, 4)) == (0, 1, 2)      # three K >= 1: no middle
  # Only K = 1 and 2 measured: on their line, extrapolated to 3 and 5.
  costs = calibrate.interpolate(choices, {0: 2.0, 1: 3.0, 2: 4.0})
  np.testing.assert_allclose(costs, [2.0, 3.0, 4.0, 5.0, 7.0])
  # Piecewise through K = 1, 2 and 5, past 5 on the 2-5 segment (a concave verify cost).
  costs = calibrate.interpolate(tuple(range(9)), {0: 40.0, 1: 60.0, 2: 75.0, 5: 84.0})
  np.testing.assert_allclose(costs, [40, 60, 75, 78, 81, 84, 87, 90, 93], rtol=1e-6)
  # A falling pair (noise) gives a flat line; nothing falls below K = 0's cost.
  costs = calibrate.interpolate(choices, {0: 5.0, 1: 4.0, 2: 3.5})
  np.testing.assert_allclose(costs, [5.0] * 5)
  # A last anchor timed below the one before: past it on the line from K = 1 to it, not
  # flat at the larger anchor's cost (Table 1's K = 4 would have cost what K = 2 did).
  costs = calibrate.interpolate((0, 1, 2, 3, 4), {0: 90.0, 1: 118.0, 2: 155.0, 3: 150.0})
  np.testing.assert_allclose(costs, [90, 118, 155, 155, 166], rtol=1e-6)
  np.testing.assert_allclose(calibrate.interpolate((2, 4, 8), {0: 2.0, 1: 3.0}), [2, 3, 5])
  np.testing.assert_allclose(calibrate.interpolate((0, 4), {1: 3.0, 0: 5.0}), [5.0, 5.0])


def test_a_call_that_ends_while_calibrating_leaves_the_rest_to_the_next(tiny_pair, greedy_ar,
                                                                         monkeypatch):
  """With the draft equal to the target, 16 iterations at K = 0 then up to 16 at K = 1 (2
  tokens each) pass max_new_tokens (24): every row is done before K = 2 ran. The call
  returns its tokens (autoregressive's) and keeps the anchors it timed; the next call
  times K = 2 and caches the costs. (The loop of the test above: no compile.)"""
  target, _ = tiny_pair
  monkeypatch.setattr(calibrate, "_COSTS", {})
  monkeypatch.setattr(calibrate, "_PARTIAL", {})
  monkeypatch.setattr(calibrate, "SEGMENT_S", 1e9)
  monkeypatch.setattr(calibrate, "MAX_TRIPS", 16)
  call = lambda: generate(target, GREEDY_PROMPTS, draft=target, num_draft=(0, 1, 2),
                          sampling=GREEDY, **KWARGS)
  assert call().tokens == greedy_ar.tokens
  assert calibrate._COSTS == {} and [set(m) for m in calibrate._PARTIAL.values()] == [{0, 1}]
  monkeypatch.setattr(calibrate, "MAX_TRIPS", 1)
  assert call().tokens == greedy_ar.tokens
  assert len(calibrate._COSTS) == 1 and calibrate._PARTIAL == {}


def test_timing_hooks_force_k_and_cut_the_loop(tiny_pair):
  """The hooks calibration and eval/speed/breakdown.py use: forced K, a trip limit, a loop that
  resumes from its state, and (eval/speed/ablation.py) every part replaced by a stand-in
  (nothing is committed, so only the trip limit stops the loop)."""
  target, draft = tiny_pair
  prompts, prompt_len, spec = api.prepare(target, draft, GREEDY_PROMPTS, "speculative", (0, 2),
                                          GREEDY, 24, 14, 16)
  key_data = np.asarray(jax.random.key_data(jax.random.key(0)))
  args = (target.params, draft.params, prompts, prompt_len, key_data, spec.sampling.values(),
          np.ones(2, np.float32))
  loop = api.make_loop("speculative", target.config, draft.config, spec,
                       parts=ablation.Ablated(frozenset(ablation.ABLATABLE)))
  out = loop(*args, np.int32(1), np.int32(5))
  np.testing.assert_array_equal(out[1], prompt_len)        # nothing committed
  np.testing.assert_array_equal(out[2], 5)                 # 5 iterations, every row active
  np.testing.assert_array_equal(out[3], 10)                # at K = 2
  with pytest.raises(ValueError, match="ablate: unknown parts"):
    ablation.Ablated(frozenset({"everything"}))
  with pytest.raises(ValueError, match="ks must include 0"):
    breakdown.measure(target, draft, GREEDY_PROMPTS, GREEDY, (1, 2), 24)


def test_auto_under_the_gumbel_coupling_equals_autoregressive(tiny_pair):
  """coupling='gumbel' keys the noise by position, so the K picked per iteration
  (here forced to mix by the costs) cannot change a row's tokens."""
  target, draft = tiny_pair
  sampling = Sampling(temperature=1.0, top_k=8, coupling="gumbel")
  seeds = list(range(100, 100 + len(GREEDY_PROMPTS)))
  kwargs = dict(sampling=sampling, max_new_tokens=24, eos_id=14, seed=seeds)
  ar = generate(target, GREEDY_PROMPTS, method="autoregressive", **kwargs)
  out = generate(target, GREEDY_PROMPTS, draft=draft, num_draft=(0, 1, 2),
                 iteration_costs=[1.0, 1.3, 1.6], **kwargs)
  assert out.tokens == ar.tokens
