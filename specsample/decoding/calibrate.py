"""Adaptive K ("auto"): which K values it may pick, and what one iteration at each costs.

The cost of an iteration at K, measured on the actual shapes, parameters and
device, is the denominator of the rule adaptive.choose maximises,
E(alpha, K) / cost_K. It is measured on the first iterations of the first
call of a (pair, loop shape, placement) in a process, and cached:

  * Those iterations are the call's own decoding, not a rehearsal: the loop
    (decoding/loops.py make_auto_loop) runs with K forced (`force_index`) for
    a few iterations (`max_iterations`), returns its state, is timed, and
    carries on from that state; every body is lossless, so the output is
    distributed as the target's whatever K ran. Nothing is prefilled or run
    twice: the cost of calibrating is only that those iterations ran at the
    measured K instead of the chosen one, plus one host round trip each.
  * Only the anchors are run, the cheaper iterations: K = 0, the two smallest
    K >= 1 and, in a set of 4 or more K >= 1, the middle one (`anchors`; K = 5
    of auto's 0..8). The other K are interpolated piecewise linearly between
    them and extrapolated past the last on its segment (`interpolate`). An
    iteration's draft work is linear in K, but its (K + 1)-token target pass
    is not: on a 2-core CPU, SmolLM2-135M's verify inside the loop cost 1.36 /
    1.85 / 1.97 / 2.41 times a 1-token pass at K = 1 / 2 / 4 / 8, so the line
    through K = 1 and 2 alone put K = 8 at twice its cost. Timing the largest
    K itself would cost the most: at 2,000 rows on a CPU one K = 8 iteration
    took 14 times a K = 0 one, a third of an 8-token call.
  * Each anchor runs one untimed iteration (its one-off costs, `measure`),
    then for about SEGMENT_S seconds, at least one iteration and at most
    MAX_TRIPS: 2 to MAX_TRIPS + 1 iterations per anchor, whatever the
    batch (an iteration at 2,000 rows takes seconds on a CPU; at batch 1,
    milliseconds). A call that ends before every anchor ran keeps the anchors
    it timed, and the next call at the shape times the rest (a short call at
    batch 1 can be over within the first anchor's 0.03 s).

On several processes, process 0's timings decide (broadcast), so every
process runs the same programs and picks the same K.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from specsample.utils import is_int

# The K set of num_draft="auto": plain autoregressive steps (0) up to 8.
AUTO_CHOICES = tuple(range(9))
# Seconds each anchor K runs for while calibrating, and its iterations at most.
SEGMENT_S = 0.03
MAX_TRIPS = 16

_COSTS: dict[Any, np.ndarray] = {}
_PARTIAL: dict[Any, dict[int, float]] = {}  # anchors timed by calls that ended first


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


def anchors(choices: tuple[int, ...]) -> tuple[int, ...]:
  """Indices into `choices` (sorted) of the K values calibration runs, in the order it runs
  them: 0 if in the set, then the two smallest K >= 1 (one if there is one), then with
  4 or more K >= 1 the middle one (the upper middle of an even count)."""
  positive = [i for i, k in enumerate(choices) if k >= 1]
  middle = [positive[len(positive) // 2]] if len(positive) >= 4 else []
  return tuple(i for i, k in enumerate(choices) if k == 0) + tuple(positive[:2] + middle)


def interpolate(choices: tuple[int, ...], measured: dict[int, float]) -> np.ndarray:
  """[len(choices)] costs from the anchors' (`measured`: {index: ms}), non-decreasing in K:
  K >= 1 piecewise linear through the measured K >= 1, past the last on the last segment,
  or where that falls (noise) on the line from the first measured K >= 1 to the last
  (slope at least 0; flat with one).

  A larger K does strictly more work (one more draft step, a wider target
  pass), so a cost below a smaller K's is timing noise: on a shared 2-core
  CPU single measurements scatter by +-30%, and an inverted pair would make
  the rule jump to the larger K for nothing. Nor should one noisy anchor make
  every larger K as cheap as it (SmolLM2-135M at batch 1, Table 1: K = 1, 2, 3
  timed at 118, 155 and under 155 ms made K = 4 cost 155 ms, as K = 2).
  """
  known = sorted((choices[i], ms) for i, ms in measured.items() if choices[i] >= 1)
  ks, cs = [k for k, _ in known], [c for _, c in known]
  (k0, c0), (ka, ca), (kb, cb) = known[0], known[max(len(known) - 2, 0)], known[-1]
  slope = (cb - ca) / (kb - ka) if kb > ka else 0.0
  if slope <= 0:
    slope = max((cb - c0) / (kb - k0), 0.0) if kb > k0 else 0.0
  costs = np.array([np.interp(k, ks, cs) if k <= kb else cb + (k - kb) * slope
                    for k in choices], np.float64)
  for i, ms in measured.items():
    costs[i] = ms
  return np.maximum.accumulate(costs).astype(np.float32)


def is_measured(key: Any) -> bool:
  """Whether `measure` has the costs of `key` (a call at it returns them at once)."""
  return key in _COSTS


def _agree(values: np.ndarray) -> np.ndarray:
  """Process 0's values on every process (identical programs, identical K choices)."""
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.broadcast_one_to_all(values))


def measure(key: Any, advance: Callable[[Any, int, int], tuple[Any, int]], state: Any,
            choices: tuple[int, ...]) -> tuple[Any, np.ndarray | None]:
  """Costs per K of `choices`, measured on the call's first iterations (module docstring).

  Args:
    key: hashable; a key already measured returns its cached costs at once.
    advance: advance(state, index, trips) runs the loop from `state` with
      body `index` forced for at most `trips` iterations and returns (the new
      state, iterations run); it blocks until they ran.
    state: the loop state after the prefill.
    choices: the K set.

  Returns:
    (the state to decode on from, [len(choices)] float32 ms per iteration,
    non-decreasing in K; or None when the call ended before every anchor ran,
    whose timed anchors the next call at `key` keeps).
  """
  if key in _COSTS:
    return state, _COSTS[key]
  start, measured = time.perf_counter(), _PARTIAL.setdefault(key, {})
  todo = [index for index in anchors(choices) if index not in measured]
  for index in todo:
    # The first iteration of each K pays one-off costs: after compiling (at 2,000 rows on
    # a CPU it took several times the next), and on XLA:CPU also the first run of each
    # loop body (SmolLM2-135M at batch 1: 250-430 ms against 56-77 ms at K = 1, 2, which
    # made auto pick K = 0 always). It decodes like any other but is not timed.
    state, ran = advance(state, index, 1)
    if ran == 0:
      logging.info("auto K: the call ended before K=%d was timed; the next call times it",
                   choices[index])
      return state, None
    spent, iterations, trips = 0.0, 0, 1
    while trips > 0:
      tick = time.perf_counter()
      state, ran = advance(state, index, trips)
      wall = time.perf_counter() - tick
      if ran == 0:  # every row is done
        break
      spent, iterations = spent + wall, iterations + ran
      per_iteration = float(_agree(np.array([spent / iterations]))[0])
      trips = min(MAX_TRIPS - iterations,
                  math.ceil(max(SEGMENT_S - spent, 0.0) / max(per_iteration, 1e-9)))
    if iterations == 0:
      logging.info("auto K: the call ended before K=%d was timed; the next call times it",
                   choices[index])
      return state, None
    # Process 0's time decides: every process then picks the same K.
    measured[index] = float(_agree(np.array([spent / iterations * 1e3]))[0])
  costs = interpolate(choices, measured)
  _COSTS[key] = costs
  del _PARTIAL[key]
  logging.info("auto K: ms per iteration %s for K in %s, measured in %.2f s on the call's own "
               "iterations", np.round(costs, 3).tolist(), choices, time.perf_counter() - start)
  return state, costs
