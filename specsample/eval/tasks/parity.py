"""The checks of the Table 1 reproduction: quality with confidence intervals,
and parity of speculative with autoregressive sampling.

Pure functions of cell records (specsample/eval/table1/cells.py writes them):
no JAX, no models. Greedy cells must match token for token
(check_parity); every sampled token must look like a draw from the target's
sampling distribution (check_calibration); the quality metric of sampled
speculative cells must agree with autoregressive (check_parity).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Sequence

import numpy as np

from specsample.eval.tasks import humaneval, stats

METRIC_NAMES = {"humaneval": "pass@1", "xsum": "ROUGE-2"}


def _by_problem(items: Sequence[dict], value) -> dict[int, float]:
  """Per problem/article: value(items of that problem)."""
  groups: dict[int, list[dict]] = {}
  for it in items:
    groups.setdefault(it["problem"], []).append(it)
  return {p: value(group) for p, group in sorted(groups.items())}


def _mean_score(group: Sequence[dict]) -> float:
  return float(np.mean([it["score"] for it in group]))


def quality(task: str, record: dict, confidence: float, pass_ks: Sequence[int] = (1, 10, 100)
            ) -> dict:
  """The cell's quality metric with a confidence interval over problems/articles.

  HumanEval: pass@1 = mean over problems of c / n (the unbiased pass@1), plus
  pass@k for every k in pass_ks that is <= n, and k = n. XSum: mean ROUGE-2.
  """
  per = _by_problem(record["items"], _mean_score)
  ci = stats.mean_ci(list(per.values()), confidence)
  out = {"metric": METRIC_NAMES[task], "value": ci.mean, "ci": [ci.low, ci.high],
         "num_problems": len(per)}
  if task == "humaneval":
    groups = _by_problem(record["items"], lambda g: (len(g), int(sum(it["score"] for it in g))))
    n_c = list(groups.values())
    n = min(n for n, _ in n_c)
    out["pass@k"] = humaneval.aggregate_pass_at_k(
        [n for n, _ in n_c], [c for _, c in n_c], sorted(set(pass_ks) | {n}))
  return out


def _t_coverage(t: float, df: int) -> float:
  """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4)."""
  theta = math.atan(t / math.sqrt(df))
  cos2, term, total = math.cos(theta) ** 2, 1.0, 1.0
  if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + (2*4)/(3*5) cos^4 + ...))
    for j in range(1, (df - 1) // 2):
      term *= cos2 * (2 * j) / (2 * j + 1)
      total += term
    inner = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
    return 2 / math.pi * (theta + inner)
  for j in range(1, df // 2):  # even: sin (1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ...)
    term *= cos2 * (2 * j - 1) / (2 * j)
    total += term
  return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
  """Two-sided Student's t quantile: P(|T| <= t) = confidence (bisection, no scipy).

  stats.mean_ci builds mean +- z * stderr, which covers far less than its
  nominal level for few items (about 70% instead of 95% at n = 2); parity
  intervals use this quantile instead.
  """
  lo, hi = 0.0, 1e4
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if _t_coverage(mid, df) < confidence else (lo, mid)
  return hi


def check_parity(ar: dict, sp: dict, *, greedy: bool, task: str, confidence: float = 0.95
                 ) -> list[dict]:
  """Checks a speculative record against the autoregressive one (same task and sampling).

  Greedy: every item present in both must have identical tokens. Sampled: the
  paired per-problem difference (speculative - autoregressive) of the quality
  metric must have a `confidence` Student t interval containing 0 (a false
  failure rate of 1 - confidence when the methods are truly exact). The
  sensitive test of a sampled cell is check_calibration, which needs no
  reference.

  Returns:
    One dict per check: check, passed, detail, and the numbers behind it.
  """
  if greedy:
    ar_tokens = {(it["problem"], it["sample"]): it["tokens"] for it in ar["items"]}
    pairs = [(it, ar_tokens[(it["problem"], it["sample"])]) for it in sp["items"]
             if (it["problem"], it["sample"]) in ar_tokens]
    mismatches = []
    for it, ref in pairs:
      if it["tokens"] != ref:
        first = next((i for i, (x, y) in enumerate(zip(it["tokens"], ref)) if x != y),
                     min(len(it["tokens"]), len(ref)))
        mismatches.append({"problem": it["problem"], "sample": it["sample"],
                           "first_difference_at": first})
    n = len(pairs)
    return [{"check": "greedy outputs identical", "passed": n > 0 and not mismatches,
             "identical": n - len(mismatches), "total": n, "mismatches": mismatches[:20],
             "detail": f"{n - len(mismatches)}/{n} identical token sequences"}]
  name = METRIC_NAMES[task]
  a, b = _by_problem(sp["items"], _mean_score), _by_problem(ar["items"], _mean_score)
  common = sorted(set(a) & set(b))
  d = stats.difference_ci([a[p] for p in common], [b[p] for p in common], paired=True,
                          confidence=confidence)
  if d.n >= 2:  # the t interval (see t_quantile); n < 2 keeps the unbounded one
    half = t_quantile(confidence, d.n - 1) * d.stderr
    d = dataclasses.replace(d, low=d.mean - half, high=d.mean + half)
  return [{"check": f"{name}: SpS - AR within error", "passed": bool(d.contains(0.0)),
           "difference": d.mean, "num_problems": len(common),
           "interval": [d.low, d.high] if math.isfinite(d.low) else None,
           "detail": f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}] "
                     f"({100 * confidence:.4g}% t interval, {len(common)} paired)"}]


# Tokens outside the recomputed support allowed per token: exact sampling
# never draws one, but a probability at the nucleus edge can round differently
# in the cached decode pass and the uncached scoring pass.
OUTSIDE_SUPPORT_TOLERANCE = 1e-3
# Below this many tokens the normal approximation of z is not trusted (a few
# skewed terms dominate: it fails an exact sampler at 16 tokens), and the
# check uses the exact bound of the test martingales instead.
NORMAL_MIN_TOKENS = 1000
# The lambdas of those test martingales (scoring.sample_calibration records, per
# token, psi(lambda) = log E_s[exp(lambda (log s(x) + H(s)))] for each).
LAMBDAS = (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0)


def _martingale_bound(terms: Sequence[dict], u: float) -> float | None:
  """log of the mixture test martingale E = mean over lambda of exp(lambda U - Psi(lambda)),
  or None when a record has no log_mgf (cells scored before it existed).

  For each lambda, prod over tokens of exp(lambda u - psi(lambda)), with psi the
  cumulant generating function of u under s (LAMBDAS), is a nonnegative
  martingale of mean 1 for an exact sampler, and so is their mean: by Ville's
  inequality P(E >= 1 / alpha) <= alpha, for any number of tokens.
  """
  if not terms or any("log_mgf" not in t for t in terms):
    return None
  psi = np.sum([t["log_mgf"] for t in terms], axis=0)
  logs = np.array(LAMBDAS) * u - psi
  return float(np.logaddexp.reduce(logs) - math.log(len(LAMBDAS)))


def check_calibration(record: dict, confidence: float = 0.95) -> dict:
  """Tests that every sampled token was drawn from the target's sampling distribution.

  For token x drawn at a prefix where the target's transformed distribution is
  s (temperature, top-k, top-p applied: exactly what speculative sampling must
  reproduce), u = log s(x) + H(s) has mean 0 given the prefix, whatever the
  prefix. Summed over every token of every sample, U = sum u is a martingale
  with conditional variance V = sum Var_s[log s(x)], so z = U / sqrt(V) is
  standard normal for an exact sampler (martingale CLT; thousands of tokens per
  cell). The check passes when |z| is within the two-sided `confidence` normal
  quantile: a false failure rate of 1 - confidence.

  Below NORMAL_MIN_TOKENS tokens (a runlocal cell has 16) the CLT is not
  trusted, and the check passes when the mixture test martingale
  (_martingale_bound) stays below 1 / (1 - confidence): by Ville's inequality
  a false failure rate of at most 1 - confidence at any token count, exactly
  (a conservative bound; tests/test_reproduce.py measures it by simulation).

  Unlike a comparison with the autoregressive cell, this conditions on each
  prefix, so between-problem and between-sample variation (long, skewed
  per-sequence log-likelihoods) cancel out, and it tests the autoregressive
  reference too.
  """
  terms = [it["calibration"] for it in record["items"]]
  u, var = sum(t["u"] for t in terms), sum(t["variance"] for t in terms)
  tokens, outside = sum(t["tokens"] for t in terms), sum(t["outside"] for t in terms)
  z = u / math.sqrt(var) if var > 0 else 0.0
  bound = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
  log_e = _martingale_bound(terms, u) if tokens < NORMAL_MIN_TOKENS else None
  if log_e is None:
    within, how = abs(z) <= bound, f"abs(z) <= {bound:.2f} ({100 * confidence:.4g}%)"
  else:
    limit = -math.log(1 - confidence)
    within = log_e < limit
    how = (f"{tokens} < {NORMAL_MIN_TOKENS} tokens: test martingale log E = {log_e:.2f} < "
           f"{limit:.2f} (Ville, {100 * confidence:.4g}%)")
  passed = within and outside <= OUTSIDE_SUPPORT_TOLERANCE * tokens
  return {"check": "tokens drawn from the target's sampling distribution", "passed": bool(passed),
          "z": z, "bound": bound, "tokens": tokens, "outside_support": outside,
          "mean_u": u / max(tokens, 1), "log_e": log_e,
          "detail": f"z = {z:+.2f}, {how}; "
                    f"{tokens} tokens, mean log s(x) + H(s) = {u / max(tokens, 1):+.4f} nats, "
                    f"{outside} outside the support"}
