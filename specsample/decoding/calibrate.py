"""Adaptive K ("auto"): which K values it may pick, and what one iteration at each costs.

The cost of an iteration at K, measured on the actual shapes, parameters and
device, is the denominator of the rule adaptive.choose maximises,
E(alpha, K) / cost_K. It is measured once per (pair, loop shape, placement) in
a process and cached, on the very compiled loop that then decodes (no second
compile): with K forced (`force_index`) and the loop cut at 0 and at TRIPS
iterations (`max_iterations`), so the prefill and the call overhead cancel.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from specsample.utils import is_int

# The K set of num_draft="auto": plain autoregressive steps (0) up to 8.
AUTO_CHOICES = tuple(range(9))
# Iterations per timed call, and timed repeats (the minimum is kept).
TRIPS = 16
REPEATS = 3

_COSTS: dict[Any, np.ndarray] = {}


def draft_choices(num_draft) -> tuple[int, ...]:
  """() for a fixed K, else the sorted K set of "auto" / an explicit set.

  Raises:
    ValueError: naming num_draft and the allowed values.
  """
  allowed = ("num_draft (the paper's K) must be an int >= 1, 'auto', or a set of distinct ints "
             f">= 0 with one >= 1 for auto over that set; got {num_draft!r}")
  if is_int(num_draft):
    if num_draft < 1:
      raise ValueError(allowed)
    return ()
  if num_draft == "auto":
    return AUTO_CHOICES
  if isinstance(num_draft, (tuple, list, frozenset, set)) and num_draft:
    choices = tuple(sorted(num_draft))
    if (all(is_int(k) and k >= 0 for k in choices) and len(set(choices)) == len(choices)
        and choices[-1] >= 1):
      return choices
  raise ValueError(allowed)


def max_draft(num_draft) -> int:
  """The largest K a setting can run (sizes the buffers)."""
  choices = draft_choices(num_draft)
  return choices[-1] if choices else num_draft


def check_costs(costs: Sequence[float] | None, choices: tuple[int, ...]) -> None:
  """iteration_costs, when given, is one positive number per K of the auto set."""
  if costs is None:
    return
  if not choices:
    raise ValueError("iteration_costs is only used with num_draft='auto' (or a set of K); "
                     f"got iteration_costs={costs!r} with a fixed num_draft")
  values = np.asarray(costs, dtype=np.float64) if np.ndim(costs) == 1 else None
  if values is None or len(values) != len(choices) or not np.all(values > 0):
    raise ValueError(f"iteration_costs must hold one positive cost per K in {choices}, "
                     f"got {costs!r}")


def measure(key: Any, run: Callable[[int, int], Any], num_choices: int) -> np.ndarray:
  """ms per iteration of each auto body, cached under `key`.

  Args:
    key: hashable; the same key returns the cached costs.
    run: run(index, trips) runs the decode loop with body `index` forced for
      at most `trips` iterations and returns its per-row target calls (a
      device array; the loop ran max(target_calls) iterations).
    num_choices: number of bodies.

  Returns:
    [num_choices] float32 milliseconds per iteration, non-decreasing (the
    choices are sorted by K).
  """
  if key not in _COSTS:
    costs = np.zeros(num_choices, np.float32)
    for index in range(num_choices):
      np.asarray(run(index, 1))  # compiles once (first index), then warms up
      walls = {0: np.inf, TRIPS: np.inf}
      for _ in range(REPEATS):
        for trips in walls:
          start = time.perf_counter()
          iterations = int(np.max(np.asarray(run(index, trips))))
          walls[trips] = min(walls[trips], time.perf_counter() - start)
      costs[index] = max((walls[TRIPS] - walls[0]) / max(iterations, 1), 1e-9) * 1e3
    # A larger K does strictly more work (one more draft step, a wider target
    # pass), so a cost below a smaller K's is timing noise: on a shared 2-core
    # CPU single measurements scatter by +-30%, and an inverted pair would make
    # the rule jump to the larger K for nothing.
    _COSTS[key] = np.maximum.accumulate(costs)
  return _COSTS[key]
