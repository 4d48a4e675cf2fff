"""Table 1's quality checks (eval/tasks/parity.py): greedy identity, paired quality, and the
per-token calibration test with its false-failure rates. Split from tests/test_reproduce.py.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from table1_pair import pair_dir  # noqa: F401  pylint: disable=g-bad-import-order,unused-import
from specsample.decoding.sampling import Sampling
from specsample.eval.tasks import parity, scoring
from specsample.models import io as model_io
from specsample.models import transformer as tr


def test_t_quantile_matches_tables():
  for df, expected in ((1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042)):
    assert parity.t_quantile(0.95, df) == pytest.approx(expected, abs=1e-3)


# ------------------------------------------------------------------ parity


def _record(scores, tokens=None):
  items = [{"problem": p, "sample": 0, "score": s, **({"tokens": tokens[p]} if tokens else {})}
           for p, s in enumerate(scores)]
  return {"items": items}


def test_parity_catches_a_greedy_mismatch():
  ar = _record([0, 1, 0], tokens=[[5, 6, 7], [8, 9], [4]])
  same = parity.check_parity(ar, copy.deepcopy(ar), greedy=True, task="humaneval")
  assert same[0]["passed"] and same[0]["identical"] == 3
  sp = copy.deepcopy(ar)
  sp["items"][0]["tokens"] = [5, 6, 99]
  [check] = parity.check_parity(ar, sp, greedy=True, task="humaneval")
  assert not check["passed"]
  assert check["mismatches"] == [{"problem": 0, "sample": 0, "first_difference_at": 2}]


def test_parity_catches_a_sampled_shift_and_passes_noise():
  noise = [0.1, 0.3, 0.2, 0.25, 0.15, 0.35, 0.2, 0.3, 0.1, 0.2]
  ar = _record(noise)
  shifted = _record([x + 0.3 for x in noise])
  [check] = parity.check_parity(ar, shifted, greedy=False, task="xsum")
  assert not check["passed"] and check["difference"] == pytest.approx(0.3)
  jittered = _record(noise[1:] + noise[:1])  # same values, other problems: paired noise only
  [check] = parity.check_parity(ar, jittered, greedy=False, task="xsum")
  assert check["passed"] and check["interval"][0] < 0 < check["interval"][1]


def _ancestral_samples(model, sampling, prompts, steps, seed):
  """Exact reference sampler: full forward per token (no cache), inverse-CDF draws in float64."""
  rng = np.random.default_rng(seed)
  width = 32
  tokens = np.zeros((len(prompts), width), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, :len(p)] = p
  step = jax.jit(lambda t, pos: jnp.take_along_axis(
      sampling.probs(tr.forward(model.config, model.params, t)[0]), pos[:, None, None], axis=1)[:, 0])
  lengths = np.array([len(p) for p in prompts])
  for i in range(steps):
    probs = np.asarray(step(tokens, jnp.asarray(lengths + i - 1)), np.float64)
    cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)
    draw = (cdf < rng.random((len(prompts), 1))).sum(-1).clip(0, probs.shape[-1] - 1)
    tokens[np.arange(len(prompts)), lengths + i] = draw
  return [tokens[b, len(p):len(p) + steps].tolist() for b, p in enumerate(prompts)]


def test_calibration_passes_exact_samples_and_catches_wrong_ones(pair_dir):
  """check_calibration at confidence 0.999: the exact case fails falsely 0.1% of the time."""
  model = model_io.load_lm(str(pair_dir / "target"))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(5, 4096, size=int(n)).tolist() for n in rng.integers(1, 8, size=64)]
  nucleus, hot = Sampling(temperature=0.8, top_p=0.95), Sampling(temperature=1.0)
  exact = _ancestral_samples(model, nucleus, prompts, steps=20, seed=1)
  wrong = _ancestral_samples(model, hot, prompts, steps=20, seed=2)
  check = lambda conts, sampling: parity.check_calibration({"items": [
      {"calibration": t} for t in scoring.sample_calibration(
          model, sampling, prompts, conts, rows=64, width_multiple=32)]}, confidence=0.999)
  ok = check(exact, nucleus)
  assert ok["passed"] and ok["tokens"] == 64 * 20 and ok["outside_support"] == 0, ok["detail"]
  bad = check(wrong, nucleus)  # temperature 1, no top-p, tested against t 0.8, p 0.95
  assert not bad["passed"] and bad["outside_support"] > 0, bad["detail"]
  colder = check(exact, Sampling(temperature=1.0, top_p=0.95))  # no outside tokens: z alone
  assert not colder["passed"] and colder["outside_support"] == 0 and colder["z"] > 0, colder["detail"]


def _simulated_calibration_records(rng, replicates: int, tokens: int, vocab: int = 50,
                                   wrong: bool = False) -> list[dict]:
  """One record per replicate of `tokens` tokens, each drawn from a random nucleus-truncated
  distribution s (or, wrong=True, uniformly over s's support), scored against s."""
  logits = rng.normal(size=(replicates, tokens, vocab)) * 2.5
  s = np.exp(logits - logits.max(-1, keepdims=True))
  s /= s.sum(-1, keepdims=True)
  order = np.argsort(-s, axis=-1)
  kept = np.cumsum(np.take_along_axis(s, order, -1), -1) - np.take_along_axis(s, order, -1) < 0.9
  mask = np.zeros_like(kept)
  np.put_along_axis(mask, order, kept, -1)
  s = np.where(mask, s, 0.0)
  s /= s.sum(-1, keepdims=True)
  draw_from = mask / mask.sum(-1, keepdims=True) if wrong else s
  cdf = np.cumsum(draw_from, -1)
  x = np.minimum((rng.random((replicates, tokens, 1)) > cdf).sum(-1), vocab - 1)
  logs = np.log(np.where(s > 0, s, 1.0))
  entropy = -(s * logs).sum(-1)
  u = np.take_along_axis(logs, x[..., None], -1)[..., 0] + entropy
  variance = (s * logs ** 2).sum(-1) - entropy ** 2
  psi = np.stack([lam * entropy + np.log(np.where(s > 0, s ** (1 + lam), 0.0).sum(-1))
                  for lam in parity.LAMBDAS], -1)
  return [{"items": [{"calibration": {
      "u": float(u[r].sum()), "variance": float(variance[r].sum()), "tokens": tokens,
      "outside": 0, "log_mgf": psi[r].sum(0).tolist()}}]} for r in range(replicates)]


def test_small_sample_calibration_bound_keeps_its_false_failure_rate():
  """Below NORMAL_MIN_TOKENS the check is the test-martingale bound: at 16 tokens and
  confidence 0.9 an exact sampler fails it at most 10% of the time (Ville's inequality).
  Simulated with 4,000 exact 16-token cells: asserting at most 10% + 3 standard errors
  fails falsely with probability below 0.2% (normal approximation of the binomial at the
  bound's worst case, 10%). A sampler drawing uniformly over the support is caught."""
  rng = np.random.default_rng(0)
  exact = _simulated_calibration_records(rng, 4000, 16)
  checks = [parity.check_calibration(r, confidence=0.9) for r in exact]
  assert all(c["log_e"] is not None for c in checks)  # the bound, not the normal z
  rate = np.mean([not c["passed"] for c in checks])
  assert rate <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 4000), rate
  wrong = _simulated_calibration_records(rng, 200, 16, wrong=True)
  caught = np.mean([not parity.check_calibration(r, confidence=0.9)["passed"] for r in wrong])
  assert caught > 0.5, caught
  # At NORMAL_MIN_TOKENS tokens and above, the normal z decides, as before.
  big = _simulated_calibration_records(rng, 1, parity.NORMAL_MIN_TOKENS)[0]
  assert parity.check_calibration(big, confidence=0.9)["log_e"] is None
