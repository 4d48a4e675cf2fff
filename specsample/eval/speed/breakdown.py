"""Where a speculative iteration's time goes, measured inside the compiled loop.

For one setting (pair, prompts, sampling) the decode loop is compiled once
with the auto set K = 0..max (speculative.py), and every K is run forced
(`force_index`) and cut after `trips` iterations (`max_iterations`). Two
measurements of that one executable, interleaved over `repeats` rounds:

  measured  ms per iteration untraced: (wall(trips) - wall(0)) / iterations,
            the fastest round (load only ever adds time);
  traced    the same run under jax.profiler; every thunk XLA ran inside the
            decode loop is charged to the part whose `jax.named_scope` it was
            traced under (eval/speed/trace.py), per iteration, from the round with
            the fastest traced loop:

    draft_forward   the draft's forwards (one 2-token, then K - 1 1-token)
    target_forward  the target's (K+1)-token forward (1-token at K = 0)
    transform       sampling: logits -> probs, and the draws
    rejection       the modified rejection sampler (its probs: transform)
    commit          appending the tokens, eos / length bookkeeping, cache
                    roll-back, counters
    xla_copies      copies XLA inserted itself (while-loop carry, layouts)
    other           everything else: reading the current token, building the
                    block, the K choice
    idle            no thunk running: the executor between thunks, the loop
                    condition and the switch

The traced parts add up to the traced iteration exactly (a sweep over the
trace's timeline); `overhead` = traced / measured - 1 is what the profiler
itself (about a microsecond per thunk) and drift between rounds add.

K = 0 is the autoregressive step with the draft kept in step (what auto runs
when speculation cannot pay); its target_forward is the unit of c and v_K:
c = draft forwards / (K x target 1-token forward), v_K = target (K+1)-token
forward / target 1-token forward, both from the trace of the loop.

`ablation` is the older cross-check: one more compiled loop per part, with
that part replaced by a stand-in of the same shapes (eval/speed/ablation.py),
a part's time = full - ablated. It does not add up (the `residual` it
reports): removing a part also changes the fusion, layout and scheduling
decisions XLA makes for the rest, and each variant is timed at another
moment on a machine whose speed drifts.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.decoding.speculative import SCOPES
from specsample.eval.speed import ablation as ablation_lib
from specsample.eval.speed import trace
from specsample.models.lm import LM

PARTS = SCOPES + ("xla_copies", "other", "idle")


def _walls(run, trips: int) -> tuple[float, int]:
  """(seconds of run(trips) - run(0), iterations run(trips) ran)."""
  start = time.perf_counter()
  run(0)
  zero = time.perf_counter() - start
  start = time.perf_counter()
  calls = np.asarray(run(trips)[2])
  return time.perf_counter() - start - zero, max(int(calls.max()), 1)


def _setting(target: LM, draft: LM, prompts, sampling: Sampling, ks: Sequence[int],
             max_new_tokens: int, pad_to: int):
  choices = tuple(sorted(set(ks)))
  if not choices or choices[0] != 0 or len(choices) < 2:
    raise ValueError(f"breakdown ks must include 0 (the unit of c and v_K) and a K >= 1, "
                     f"got {tuple(ks)!r}")
  prompts_BP, prompt_len, spec = api.prepare(target, draft, prompts, "speculative", choices,
                                             sampling, max_new_tokens, None, pad_to)
  key_data = np.asarray(jax.random.key_data(jax.random.key(0)))
  draft_cfg, draft_params = api.draft_inputs(target, draft)
  args = (target.params, draft_params, prompts_BP, prompt_len, key_data,
          spec.sampling.values(), np.ones(len(choices), np.float32))
  return choices, spec, draft_cfg, args


def measure(target: LM, draft: LM, prompts: Sequence[Sequence[int]], sampling: Sampling,
            ks: Sequence[int], max_new_tokens: int, pad_to: int = 16, trips: int = 16,
            repeats: int = 3) -> dict:
  """The traced breakdown of every K in `ks` (which must include 0) for one batch.

  Returns:
    {"K": [sorted ks], "measured": [ms per iteration, untraced], <part>: [ms]
    for PARTS, "traced": [sum of the parts], "overhead": [traced / measured - 1],
    "c": [...], "v_k": [...], "iterations": [per timed call], "thunks": [leaf
    thunks per iteration], "thunk_counts": {part: [its thunks per iteration]},
    "compile_s": s}
    (lists in the order of "K"; c and v_K at K = 0 are None).
  """
  choices, spec, draft_cfg, args = _setting(target, draft, prompts, sampling, ks, max_new_tokens,
                                            pad_to)
  loop = api.make_loop("speculative", target.config, draft_cfg, spec)
  start = time.perf_counter()
  compiled = loop.lower(*args, np.int32(0), np.int32(0)).compile()
  compile_s = time.perf_counter() - start
  hlo = compiled.as_text()
  part_of, containers = trace.instruction_parts(hlo, SCOPES)
  entry = trace.entry_instructions(hlo)
  rows = []
  for index in range(len(choices)):
    run = lambda n: jax.block_until_ready(compiled(*args, np.int32(index), np.int32(n)))
    run(trips)  # warm-up
    measured, traced = np.inf, None
    for _ in range(repeats):  # interleaved: drift hits both alike
      wall, iterations = _walls(run, trips)
      measured = min(measured, wall / iterations * 1e3)
      events = max(trace.thunk_events(lambda: run(trips)), key=len)  # the loop's execution
      parts = trace.attribute(events, part_of, containers, trace.loop_window(events, entry))
      if traced is None or parts["wall"] < traced["wall"]:
        traced = parts
    unknown = {p for p in traced if not p.startswith("thunks")} - set(PARTS) - {"wall"}
    if unknown:
      raise RuntimeError(f"trace attribution produced unknown parts {sorted(unknown)}")
    row = {p: traced.get(p, 0.0) / iterations / 1e3 for p in PARTS}
    row.update(measured=measured, traced=traced["wall"] / iterations / 1e3,
               iterations=iterations, thunks=traced["thunks"] / iterations)
    row["thunk_counts"] = {p: traced.get(f"thunks:{p}", 0.0) / iterations for p in PARTS}
    rows.append(row)
  unit = rows[0]["target_forward"]  # the target's 1-token forward, inside the K = 0 body
  out = {"K": list(choices), "compile_s": compile_s}
  for name in (*PARTS, "measured", "traced", "iterations", "thunks"):
    out[name] = [r[name] for r in rows]
  out["thunk_counts"] = {p: [r["thunk_counts"][p] for r in rows] for p in PARTS}
  out["overhead"] = [r["traced"] / r["measured"] - 1 for r in rows]
  out["c"] = [None] + [r["draft_forward"] / (k * unit) for k, r in zip(choices[1:], rows[1:])]
  out["v_k"] = [None] + [r["target_forward"] / unit for r in rows[1:]]
  return out


def _iteration_ms(loop, args, num_choices: int, trips: int, repeats: int) -> list[float]:
  """ms per iteration of every forced K of one compiled loop (fastest of `repeats`)."""
  out = []
  for index in range(num_choices):
    run = lambda n: jax.block_until_ready(loop(*args, np.int32(index), np.int32(n)))
    run(1)
    best = np.inf
    for _ in range(repeats):
      wall, iterations = _walls(run, trips)
      best = min(best, wall / iterations * 1e3)
    out.append(best)
  return out


def ablation(target: LM, draft: LM, prompts: Sequence[Sequence[int]], sampling: Sampling,
             ks: Sequence[int], max_new_tokens: int, pad_to: int = 16, trips: int = 16,
             repeats: int = 3) -> dict:
  """The ablation cross-check (module docstring) of every K in `ks`.

  Returns:
    {"K": [...], "full": [ms per iteration], <part>: [full - without it],
    "rest": [every part replaced], "sum": [parts + rest],
    "residual": [(full - sum) / full], "compile_s": {variant: s}}.
  """
  choices, spec, draft_cfg, args = _setting(target, draft, prompts, sampling, ks, max_new_tokens,
                                            pad_to)
  variants = {"full": frozenset(), **{p: frozenset({p}) for p in SCOPES},
              "rest": frozenset(SCOPES)}
  times, compile_s = {}, {}
  for name, ablate in variants.items():
    loop = api.make_loop("speculative", target.config, draft_cfg, spec,
                         parts=ablation_lib.Ablated(ablate))
    start = time.perf_counter()
    jax.block_until_ready(loop(*args, np.int32(0), np.int32(0)))
    compile_s[name] = time.perf_counter() - start
    times[name] = _iteration_ms(loop, args, len(choices), trips, repeats)
  full = np.array(times["full"])
  parts = {p: full - np.array(times[p]) for p in SCOPES}
  total = sum(parts.values()) + np.array(times["rest"])
  return {"K": list(choices), "full": full.tolist(), **{p: v.tolist() for p, v in parts.items()},
          "rest": times["rest"], "sum": total.tolist(),
          "residual": ((full - total) / full).tolist(), "compile_s": compile_s}
