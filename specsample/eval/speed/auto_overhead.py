"""What num_draft="auto" costs on its first call at a shape, against a fixed K, per batch.

For each batch size, in a fresh shape (nothing compiled or calibrated yet),
with one prompt repeated on every row:

  fixed_first   generate at K = `num_draft`: compile + decode;
  fixed_rerun   the same call again: decode only;
  auto_compile  auto with given iteration costs: compile + decode, less a
                later decode (auto_rerun): the compile of its 9 bodies;
  auto_calib    auto measuring its costs (decoding/calibrate.py) on the
                compiled loop, whose first iterations are timed;
  auto_rerun    auto again, costs cached: decode only.

calibration = auto_calib - auto_rerun: what measuring the costs adds to a
call (the timed iterations are the call's own decoding, so this is the
host round trips and the iterations run at a K the rule would not pick).
first_call_overhead = auto's first call (auto_compile + auto_calib) minus a
fixed K's (fixed_first). Differences of walls on a shared machine: read them
with the load average recorded beside them.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from specsample.decoding import api, calibrate
from specsample.decoding.sampling import Sampling
from specsample.eval.speed import timing
from specsample.models.lm import LM

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def _wall(call) -> float:
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def measure(target: LM, draft: LM, prompt_ids: Sequence[int], batch_sizes: Sequence[int],
            max_new_tokens: int = 8, num_draft: int = 4, auto="auto",
            sampling: Sampling = Sampling()) -> dict:
  """{"rows": [one dict of seconds per batch size (module docstring)], "machine": ...}.

  `auto` is the num_draft of the adaptive calls: "auto" (K in 0..8) or a set of K.
  """
  rows = []
  for batch in batch_sizes:
    prompts = [list(prompt_ids)] * batch
    kwargs = dict(draft=draft, sampling=sampling, max_new_tokens=max_new_tokens, seed=0)
    fixed = lambda: api.generate(target, prompts, num_draft=num_draft, **kwargs)
    ones = [1.0] * len(calibrate.draft_choices(auto))
    auto_given = lambda: api.generate(target, prompts, num_draft=auto, iteration_costs=ones,
                                      **kwargs)
    auto_call = lambda: api.generate(target, prompts, num_draft=auto, **kwargs)
    row = {"batch": batch, "load_average_at_start": list(os.getloadavg())}
    row["fixed_first"], row["fixed_rerun"] = _wall(fixed), _wall(fixed)
    auto_first_given = _wall(auto_given)
    row["auto_calib"] = _wall(auto_call)
    row["auto_rerun"] = _wall(auto_call)
    row["auto_compile"] = auto_first_given - row["auto_rerun"]
    row["calibration"] = row["auto_calib"] - row["auto_rerun"]
    row["first_call_overhead"] = auto_first_given + row["auto_calib"] - row["auto_rerun"] - \
        row["fixed_first"]
    row["load_average_at_end"] = list(os.getloadavg())
    rows.append(row)
  return {"rows": rows, "max_new_tokens": max_new_tokens, "num_draft": num_draft,
          "auto": auto if isinstance(auto, str) else list(auto),
          "machine": timing.machine_info()}


def markdown(result: dict) -> list[str]:
  """The section of results/benchmark.md (speed/report.py renders it when present)."""
  lines = [
      "## num_draft='auto': first-call overhead", "",
      f"Command: `{result.get('command', '')}`; {result['machine']['label']}. One prompt "
      f"repeated on every row, {result['max_new_tokens']} new tokens, seconds per call; fixed = "
      f"K = {result['num_draft']}, auto = num_draft={result.get('auto', 'auto')!r}. calibration = auto measuring its costs - auto with them "
      "cached (the timed iterations are the call's own decoding); first-call overhead = auto's "
      "first call (compile + calibrating call) - the fixed K's first call "
      "(eval/speed/auto_overhead.py).", "",
      "| batch | fixed first call | fixed rerun | auto compile | auto calibrating call | "
      "auto rerun | calibration | first-call overhead | load average (start, end) |",
      "|---|---|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    load = f"{r['load_average_at_start'][0]:.2f}, {r['load_average_at_end'][0]:.2f}"
    lines.append(f"| {r['batch']} | {r['fixed_first']:.2f} | {r['fixed_rerun']:.2f} | "
                 f"{r['auto_compile']:.2f} | {r['auto_calib']:.2f} | {r['auto_rerun']:.2f} | "
                 f"{r['calibration']:+.2f} | {r['first_call_overhead']:+.2f} | {load} |")
  return lines
