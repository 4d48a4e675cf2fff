"""Where proposals come from, measured: prompt lookup, a draft, and both, against autoregressive.

For each task (HumanEval prompts; the docstring-summarization stand-in's
1-shot prompts, the XSum path's format), batch size and sampling setting, every
method is warmed up on the same shapes, then timed in `passes` round-robin
passes (timing.timed_pass; each call's fastest wall kept, so drift hits every
method alike). Rows report ms per generated token, the speedup over
autoregressive measured in the same cell, tokens per target call and the
acceptance rate. Methods:

  autoregressive                 the reference
  lookup                         draft='prompt_lookup' (no draft model, c ~ 0)
  lookup(auto)                   the same with num_draft='auto': auto's rule with each
                                 row's gain capped at its match (lookup.choose_index)
  draft                          the draft (a model or a feature draft), when given
  draft+lookup                   the draft combined with lookup (generate(lookup=...))
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from specsample import paths
from specsample.decoding import LM, Sampling, loops
from specsample.decoding.lookup import PromptLookup
from specsample.eval.speed import timing
from specsample.eval.tasks import docsum, xsum
from specsample.eval.tasks.humaneval import load_problems
from specsample.models import feature_draft as fd
from specsample.models import io as model_io
from specsample.tokenizer import Tokenizer

SAMPLINGS = {"greedy": Sampling(temperature=0.0), "nucleus": Sampling(temperature=0.8, top_p=0.95)}
TASKS = ("humaneval", "docsum")


def task_prompts(task: str, tokenizer, num: int, cache_dir: str) -> list[list[int]]:
  """The first `num` prompts of a task, tokenized (bos as the tokenizer's model wants)."""
  bos = getattr(tokenizer, "add_bos_token", True)
  if task == "humaneval":
    texts = [p["prompt"] for p in load_problems()[:num]]
  else:
    info = docsum.ensure_dataset(os.path.join(cache_dir, "docsum"), tokenizer)
    with paths.open_file(info["path"], "r") as f:
      items = [json.loads(line) for line in f][:num]
    texts = [xsum.build_prompt(it["document"]) for it in items]
  return [tokenizer.encode(t, add_bos=bos) for t in texts]


def methods(config, draft) -> dict[str, dict[str, Any]]:
  """generate kwargs of every method this config measures."""
  lookup = PromptLookup(config.max_ngram, config.min_ngram)
  out = {"autoregressive": {"method": "autoregressive"},
         "lookup": {"draft": lookup, "num_draft": config.num_draft}}
  if config.lookup_auto:  # a K set (0..8 is "auto"'s)
    out["lookup(auto)"] = {"draft": lookup, "num_draft": tuple(config.lookup_auto)}
  if draft is not None:
    out["draft"] = {"draft": draft, "num_draft": config.num_draft}
    if isinstance(draft, (LM, fd.FeatureDraft)):
      for gate in config.min_draft_probs:  # 0: every copy; else copies the model finds likely
        name = "draft+lookup" if gate == 0 else f"draft+lookup(p>={gate:g})"
        out[name] = {"draft": draft, "num_draft": config.num_draft,
                     "lookup": PromptLookup(config.max_ngram, config.min_ngram, float(gate))}
  return out


def measure_cell(target, batches, kinds: dict, sampling: Sampling, config) -> dict[str, dict]:
  """Every method on the same batches: warm-up, then round-robin passes."""
  common = dict(sampling=sampling, max_new_tokens=config.max_new_tokens, eos_id=config.eos_id, seed=0)
  for kwargs in kinds.values():
    timing.warm_up(target, batches, **common, **kwargs)
  passes = {name: [] for name in kinds}
  for _ in range(config.passes):
    for name, kwargs in kinds.items():
      passes[name].append(timing.timed_pass(target, batches, **common, **kwargs))
  rows = {}
  for name, runs in passes.items():
    t = timing.summarise(runs, 0.0, False)
    rows[name] = {"ms_per_token": t.ms_per_token, "tokens_per_call": float(np.mean(t.stats["tokens_per_call"])),
                  "acceptance": float(np.mean(t.stats["acceptance_rate"])), "new_tokens": t.mean_new_tokens}
  ar = rows["autoregressive"]["ms_per_token"]
  for row in rows.values():
    row["speedup"] = ar / row["ms_per_token"]
  return rows


def run(config, command: str = "") -> dict:
  """Measures every (task, batch, sampling) cell; writes <output_dir>/drafting.{json,md}."""
  target = model_io.load_lm(config.target_dir)
  tokenizer = Tokenizer.load(config.tokenizer or config.target_dir)
  draft = model_io.load_draft(config.draft_dir, target) if config.draft_dir else None
  kinds = methods(config, draft)
  cells, start = [], time.time()
  grid = [(t, b, s) for t in config.tasks for b in config.batch_sizes for s in config.samplings]
  for task, batch_size, sampling in tqdm(grid, desc="drafting cells"):
    prompts = task_prompts(task, tokenizer, config.num_prompts, config.cache_dir)
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    rows = measure_cell(target, batches, kinds, SAMPLINGS[sampling], config)
    cells.append({"task": task, "batch": batch_size, "sampling": sampling, "methods": rows})
    result = {"command": command, "target": config.target_dir, "draft": config.draft_dir,
              "num_draft": config.num_draft, "lookup_auto": list(config.lookup_auto),
              "ngram": [config.max_ngram, config.min_ngram],
              "max_new_tokens": config.max_new_tokens, "num_prompts": config.num_prompts,
              "passes": config.passes, "machine": timing.machine_info(),
              "seconds": round(time.time() - start), "cells": cells, "cells_planned": len(grid)}
    # After every cell: a run that dies later keeps what it measured.
    paths.write_atomic({os.path.join(config.output_dir, "drafting.json"): json.dumps(result, indent=2),
                        os.path.join(config.output_dir, "drafting.md"): markdown(result)})
    # Each cell compiles its own shapes: drop the last cell's programs (a run of 8 cells
    # with 9-body auto loops ran out of memory compiling the sixth).
    loops.clear_cache()
    jax.clear_caches()
  return result


def markdown(result: dict) -> str:
  """The results as a table: one row per cell and method."""
  m = result["machine"]
  lines = ["# Drafting sources against autoregressive\n",
           f"`{result['command']}`\n",
           f"Target `{result['target']}`, draft `{result['draft'] or '(none)'}`, K = {result['num_draft']} "
           f"(lookup(auto): K in {result.get('lookup_auto') or '-'}, capped by its matches), "
           f"lookup n-grams {result['ngram'][0]}..{result['ngram'][1]}, {result['max_new_tokens']} new tokens, "
           f"{result['num_prompts']} prompts per task, best of {result['passes']} round-robin passes; "
           f"{m['label']}, load average {m['load_average_1_5_15']} at the end, {result['seconds']} s"
           + (f"; PARTIAL: {len(result['cells'])} of {result['cells_planned']} cells" if
              len(result["cells"]) < result.get("cells_planned", 0) else "") + ".\n",
           "| task | batch | sampling | method | ms/token | speedup | tokens/call | acceptance |",
           "|---|---|---|---|---|---|---|---|"]
  for c in result["cells"]:
    for name, r in c["methods"].items():
      lines.append(f"| {c['task']} | {c['batch']} | {c['sampling']} | {name} | {r['ms_per_token']:.2f} | "
                   f"{r['speedup']:.2f}x | {r['tokens_per_call']:.2f} | {r['acceptance']:.3f} |")
  return "\n".join(lines) + "\n"
