"""Means with confidence intervals, and a parity check between two methods.

Speculative sampling is exact: its samples follow the target's distribution,
so any metric computed from them (ROUGE-2 per article, pass@k per problem)
should match autoregressive sampling up to sampling noise. `compare` turns
that into a test: it builds a confidence interval for the difference of the
two means and says the methods agree when the interval contains 0.

Two interval methods:

* "normal": mean +- z * standard error, with the sample standard deviation
  (ddof=1). Fine for the hundreds of items an evaluation has; it is slightly
  narrow for small n, as it uses z rather than Student's t (no scipy here).
* "bootstrap": percentile bootstrap with a fixed seed, so reruns give the
  same interval. Better for skewed, bounded metrics such as pass@k.

When both methods scored the same items (same prompts), pass paired=True:
the interval is then built from per-item differences, which removes the
between-item variance and is much tighter.

Agreement at confidence 0.95 means a false "disagree" about 5% of the time
when the methods are truly equal; with many comparisons, expect a few.
Imports only numpy and the standard library (no JAX).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Sequence

import numpy as np

DEFAULT_NUM_RESAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class MeanCI:
  """A mean with a two-sided confidence interval.

  Attributes:
    mean: the sample mean.
    low, high: interval bounds; (-inf, inf) when n < 2 (no error estimate).
    stderr: standard error of the mean (nan when n < 2).
    n: number of values.
    confidence: the interval's nominal coverage, e.g. 0.95.
  """
  mean: float
  low: float
  high: float
  stderr: float
  n: int
  confidence: float

  def contains(self, value: float) -> bool:
    """Whether `value` lies in [low, high]."""
    return self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Result of comparing two methods' sampled metric.

  Attributes:
    a, b: each method's mean and interval.
    difference: mean(a) - mean(b) with its interval.
    agree: True when the difference interval contains 0.
  """
  a: MeanCI
  b: MeanCI
  difference: MeanCI
  agree: bool


def _as_array(values: Sequence[float], name: str = "values") -> np.ndarray:
  array = np.asarray(values, dtype=np.float64).reshape(-1)
  if array.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} contains non-finite values")
  return array


def _z(confidence: float) -> float:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  return statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _stderr(array: np.ndarray) -> float:
  return float(np.std(array, ddof=1) / math.sqrt(array.size))


def _uninformative(mean: float, n: int, confidence: float) -> MeanCI:
  # One value carries no information about spread: report an unbounded
  # interval rather than a falsely precise point.
  return MeanCI(mean, -math.inf, math.inf, math.nan, n, confidence)


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
  low, high = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
  return float(low), float(high)


def mean_ci(values: Sequence[float], confidence: float = 0.95, method: str = "normal",
            num_resamples: int = DEFAULT_NUM_RESAMPLES, seed: int = 0) -> MeanCI:
  """Mean of `values` with a confidence interval.

  Args:
    values: one metric value per item (e.g. ROUGE-2 per article).
    confidence: nominal coverage of the interval.
    method: "normal" (z interval) or "bootstrap" (percentile bootstrap).
    num_resamples: bootstrap resamples.
    seed: bootstrap seed, fixed so results are reproducible.

  Returns:
    A MeanCI.
  """
  array = _as_array(values)
  z = _z(confidence)  # Validates confidence for both methods.
  mean = float(array.mean())
  if array.size < 2:
    return _uninformative(mean, array.size, confidence)
  stderr = _stderr(array)
  if method == "normal":
    return MeanCI(mean, mean - z * stderr, mean + z * stderr, stderr, array.size,
                  confidence)
  if method == "bootstrap":
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, array.size, size=(num_resamples, array.size))
    low, high = _percentile_interval(array[indices].mean(axis=1), confidence)
    return MeanCI(mean, low, high, stderr, array.size, confidence)
  raise ValueError(f"unknown method {method!r}; use 'normal' or 'bootstrap'")


def difference_ci(a: Sequence[float], b: Sequence[float], *, paired: bool = False,
                  confidence: float = 0.95, method: str = "normal",
                  num_resamples: int = DEFAULT_NUM_RESAMPLES, seed: int = 0) -> MeanCI:
  """Confidence interval for mean(a) - mean(b).

  Args:
    a, b: per-item metric values of two methods.
    paired: a[i] and b[i] score the same item; uses per-item differences.
    confidence, method, num_resamples, seed: as in mean_ci.

  Returns:
    A MeanCI for the difference (its n is len(a) + len(b) when unpaired).
  """
  array_a, array_b = _as_array(a, "a"), _as_array(b, "b")
  if paired:
    if array_a.size != array_b.size:
      raise ValueError(f"paired comparison needs equal lengths, got "
                       f"{array_a.size} and {array_b.size}")
    return mean_ci(array_a - array_b, confidence, method, num_resamples, seed)

  z = _z(confidence)
  mean = float(array_a.mean() - array_b.mean())
  n = array_a.size + array_b.size
  if array_a.size < 2 or array_b.size < 2:
    return _uninformative(mean, n, confidence)
  stderr = math.hypot(_stderr(array_a), _stderr(array_b))
  if method == "normal":
    return MeanCI(mean, mean - z * stderr, mean + z * stderr, stderr, n, confidence)
  if method == "bootstrap":
    rng = np.random.default_rng(seed)
    # Resample each group independently: unpaired groups are unrelated items.
    means_a = array_a[rng.integers(0, array_a.size, (num_resamples, array_a.size))]
    means_b = array_b[rng.integers(0, array_b.size, (num_resamples, array_b.size))]
    low, high = _percentile_interval(means_a.mean(1) - means_b.mean(1), confidence)
    return MeanCI(mean, low, high, stderr, n, confidence)
  raise ValueError(f"unknown method {method!r}; use 'normal' or 'bootstrap'")


def compare(a: Sequence[float], b: Sequence[float], *, paired: bool = False,
            confidence: float = 0.95, method: str = "normal",
            num_resamples: int = DEFAULT_NUM_RESAMPLES, seed: int = 0) -> Comparison:
  """Decides whether two methods' metrics agree within statistical error.

  Typical use: a = per-article ROUGE-2 under autoregressive sampling,
  b = the same under speculative sampling, paired=True.

  Args:
    a, b: per-item metric values of the two methods.
    paired, confidence, method, num_resamples, seed: as in difference_ci.

  Returns:
    A Comparison; `agree` is True when the difference interval contains 0.
  """
  kwargs = dict(confidence=confidence, method=method, num_resamples=num_resamples,
                seed=seed)
  difference = difference_ci(a, b, paired=paired, **kwargs)
  return Comparison(a=mean_ci(a, **kwargs), b=mean_ci(b, **kwargs),
                    difference=difference, agree=difference.contains(0.0))


def metrics_agree(a: Sequence[float], b: Sequence[float], **kwargs) -> bool:
  """Shorthand for compare(a, b, **kwargs).agree.

  Args:
    a, b: per-item metric values of two methods.
    **kwargs: paired, confidence, method, num_resamples, seed.

  Returns:
    True when the confidence interval of mean(a) - mean(b) contains 0.
  """
  return compare(a, b, **kwargs).agree
