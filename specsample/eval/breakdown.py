"""Where a speculative iteration's time goes, measured by ablation inside the compiled loop.

For one setting (pair, prompts, sampling) the decode loop is compiled with the
auto set K = 0..max (speculative.py), once as it decodes and once per part
replaced by a stand-in of the same shapes (`ablate`, speculative._stand_in):

  draft_forward   the draft's forwards (one 2-token, then K - 1 1-token)
  target_forward  the target's (K+1)-token forward (1-token at K = 0)
  transform       the sampling transforms of both models (logits -> probs)
  rejection       the modified rejection sampler
  commit          commit: appending the tokens, eos / length bookkeeping

and once with all of them replaced ("rest": reading the current token,
building the block, cache length roll-back, counters, the switch and the
while loop itself). Each loop runs with K forced to one value and cut at 0 and
at `trips` iterations; ms per iteration = (wall(trips) - wall(0)) / iterations,
the minimum over repeats of each wall. A part's time is the full iteration
minus the iteration without it. The parts and the rest are measured
independently, so their sum is a check on the method: it equals the full
iteration only if the parts do not overlap (`residual`).

K = 0 is the autoregressive step with the draft kept in step (what auto runs
when speculation cannot pay); its target_forward is the unit of c and v_K:
c = draft forwards / (K x target 1-token forward), v_K = target (K+1)-token
forward / target 1-token forward, both measured inside the loop.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.decoding.speculative import ABLATABLE
from specsample.models.lm import LM


def _iteration_ms(loop, args, num_choices: int, trips: int, repeats: int) -> list[float]:
  """ms per iteration of every forced K of one compiled loop."""
  cost = np.ones(num_choices, np.float32)
  out = []
  for index in range(num_choices):
    run = lambda n: loop(*args, cost, np.int32(index), np.int32(n))
    jax.block_until_ready(run(1))  # compile (first index) and warm up
    walls, iterations = {0: np.inf, trips: np.inf}, 1
    for _ in range(repeats):
      for n in walls:
        start = time.perf_counter()
        calls = np.asarray(run(n)[2])
        walls[n] = min(walls[n], time.perf_counter() - start)
        if n:
          iterations = max(int(calls.max()), 1)
    out.append((walls[trips] - walls[0]) / iterations * 1e3)
  return out


def measure(target: LM, draft: LM, prompts: Sequence[Sequence[int]], sampling: Sampling,
            ks: Sequence[int], max_new_tokens: int, pad_to: int = 16, trips: int = 8,
            repeats: int = 3) -> dict:
  """The breakdown of every K in `ks` (which must include 0) for one batch of prompts.

  Returns:
    {"K": [sorted ks], "full": [ms per iteration], <part>: [ms], "rest": [ms],
    "sum": [parts + rest], "residual": [(full - sum) / full], "c": [...],
    "v_k": [...], "compile_s": {variant: seconds, compile and first run}}
    (lists in the order of "K"). c and v_K at K = 0 are None.
  """
  choices = tuple(sorted(set(ks)))
  if not choices or choices[0] != 0 or len(choices) < 2:
    raise ValueError(f"breakdown ks must include 0 (the unit of c and v_K) and a K >= 1, "
                     f"got {tuple(ks)!r}")
  prompts_BP, prompt_len, spec = api.prepare(target, draft, prompts, "speculative", choices,
                                             sampling, max_new_tokens, None, pad_to)
  key_data = np.asarray(jax.random.key_data(jax.random.key(0)))
  args = (target.params, draft.params, prompts_BP, prompt_len, key_data)
  variants = {"full": frozenset(), **{p: frozenset({p}) for p in ABLATABLE},
              "rest": frozenset(ABLATABLE)}
  times, compile_s = {}, {}
  for name, ablate in variants.items():
    loop = api.make_loop("speculative", target.config, draft.config, spec, ablate=ablate)
    start = time.perf_counter()
    jax.block_until_ready(loop(*args, np.ones(len(choices), np.float32), np.int32(0),
                               np.int32(0)))
    compile_s[name] = time.perf_counter() - start
    times[name] = _iteration_ms(loop, args, len(choices), trips, repeats)
  full = np.array(times["full"])
  parts = {p: full - np.array(times[p]) for p in ABLATABLE}
  total = sum(parts.values()) + np.array(times["rest"])
  unit = parts["target_forward"][0]  # target 1-token forward, inside the K = 0 body
  ks = np.array(choices)
  return {
      "K": list(choices), "full": full.tolist(), **{p: v.tolist() for p, v in parts.items()},
      "rest": times["rest"], "sum": total.tolist(), "residual": ((full - total) / full).tolist(),
      "c": [None] + (parts["draft_forward"][1:] / (ks[1:] * unit)).tolist(),
      "v_k": [None] + (parts["target_forward"][1:] / unit).tolist(),
      "compile_s": compile_s}
