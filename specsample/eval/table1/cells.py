"""Computing one Table 1 cell: generate, time and score one method on one task's items.

HumanEval: prompt = [BOS +] the problem's prompt (raw), or the chat template with
the assistant turn prefilled with it (chat.humaneval_prompt); the decoded
continuation is truncated at grid.code_stops and executed in worker
subprocesses; pass@k is the unbiased estimator. XSum: xsum.build_prompt's 1-shot
prompt (raw) or chat.summary_prompt's 1-shot chat turns, summary cut at the
first newline, ROUGE-2 F per article; BOS only where the tokenizer adds one
(add_bos_token; a sentencepiece tokenizer always); with no config.xsum.path
the articles are the docstring-summarization stand-in (docsum.py), built once
under <workdir>/docsum and read by the same xsum.load_xsum. Every sampled token
is also scored against the target's exact sampling distribution
(scoring.sample_calibration, checked by parity.check_calibration).

A short last call is filled up with copies of its last prompt, keeping its
shape, so each decode loop compiles once per task and batch size. Before the
timed calls, `prepare` (or the cell itself) pays that compile, each loop body's
first run and auto's cost measurement, once per loop, without decoding any call
twice (a call that still compiled would be rerun and only the rerun timed:
timing.timed_generate), and times the prefill of each shape alone, so that a
cell reports its decode ms/token (prefill excluded) beside the whole call's.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent import futures

import numpy as np
from tqdm import tqdm

from specsample.decoding import api
from specsample.eval.speed import timing
from specsample.eval.table1 import grid, store
from specsample.eval.table1.grid import Cell
from specsample.eval.tasks import chat, docsum, humaneval, scoring, xsum
from specsample.tokenizer import Tokenizer
from specsample.utils import round_up


@dataclasses.dataclass
class TaskData:
  """Prompts of one task. items[i] is a HumanEval problem or an XSum article."""
  name: str
  items: list[dict]
  prompt_ids: list[list[int]]
  fingerprint: str
  solution_ids: list[list[int]] | None = None  # HumanEval canonical solutions
  title: str = ""                               # the dataset's name in every table and plot
  dataset_info: dict | None = None              # the stand-in's size, hash and filters
  # The target's caches of these prompts, made by the first sampled cell's scoring and
  # reused by the others (scoring.sample_calibration); one run has one target.
  prompt_caches: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


def summary_text(config, tokenizer, document: str, stand_in: bool) -> str:
  """One summarization prompt: the raw 1-shot text or its chat form (configs/reproduce.py)."""
  if config.prompt_format == "raw":
    return xsum.build_prompt(document, max_doc_chars=config.xsum.max_doc_chars)
  return chat.summary_prompt(tokenizer, document, code=stand_in,
                             max_doc_chars=config.xsum.max_doc_chars,
                             shot=chat.CODE_SHOT if stand_in else xsum.DEFAULT_SHOT)


def load_tasks(config, tokenizer: Tokenizer, workdir: str) -> dict[str, TaskData]:
  """Loads and tokenizes every enabled task ([BOS +] prompt, in config.prompt_format).

  XSum with config.xsum.path '' is the docstring-summarization stand-in, built
  (once) under <workdir>/docsum and then loaded like any local XSum copy.
  """
  tasks = {}
  is_chat = config.prompt_format == "chat"
  for task in grid.enabled_tasks(config):
    info = None  # the stand-in's info when XSum runs on it
    if task == "humaneval":
      items = humaneval.load_problems(limit=config.humaneval.num_problems)
      texts = [chat.humaneval_prompt(tokenizer, p["prompt"]) if is_chat else p["prompt"]
               for p in items]
      data_fp = store.sha([[p["task_id"], p["prompt"], p["test"], p["canonical_solution"]]
                      for p in items])
      if is_chat:  # (raw keeps the fingerprint its records were stored under)
        data_fp = store.sha([data_fp, texts])
    else:
      info = (None if config.xsum.path else
              docsum.ensure_dataset(os.path.join(workdir, "docsum"), tokenizer,
                                    split=config.xsum.split))
      items = xsum.load_xsum(info["path"] if info else config.xsum.path, config.xsum.split,
                             limit=config.xsum.num_items)
      texts = [summary_text(config, tokenizer, it["document"], info is not None) for it in items]
      data_fp = store.sha([texts, [it["summary"] for it in items]])
    ids = tokenizer.encode_batch(texts, add_bos=getattr(tokenizer, "add_bos_token", True))
    tasks[task] = TaskData(task, items, ids, data_fp, title=(
        "HumanEval" if task == "humaneval" else docsum.LABEL if info else "XSum"),
        dataset_info=info)
    if task == "humaneval":
      tasks[task].solution_ids = tokenizer.encode_batch([p["canonical_solution"] for p in items])
  return tasks


def check_fits(config, tasks: dict[str, TaskData], target_cfg, draft_cfg) -> None:
  """Raises naming the fields if a prompt + generation would not fit a model's cache."""
  max_k = grid.largest_k(config)
  for name, task in tasks.items():
    c = config[name]
    longest = int(np.argmax([len(p) for p in task.prompt_ids]))
    width = round_up(len(task.prompt_ids[longest]), c.pad_to)
    need = round_up(width + c.max_new_tokens + max_k + 1, c.pad_to)
    for which, cfg in (("target", target_cfg), ("draft", draft_cfg)):
      if need > cfg.max_seq_len:
        raise ValueError(
            f"config.{name}.max_new_tokens={c.max_new_tokens} with config.{name}.pad_to="
            f"{c.pad_to} and K up to {max_k}: the longest prompt ({len(task.prompt_ids[longest])}"
            f" tokens, item {longest}) needs a cache of {need} positions, above the {which}'s "
            f"max_seq_len={cfg.max_seq_len}; lower max_new_tokens or pad_to (or shorten "
            "prompts, e.g. xsum.max_doc_chars)")
    if task.solution_ids is not None:
      longest = max(len(p) + len(q) for p, q in zip(task.prompt_ids, task.solution_ids))
      if longest > target_cfg.max_seq_len:
        raise ValueError(f"config.humaneval.num_problems={len(task.items)}: a prompt + canonical "
                         f"solution has {longest} tokens, above the target's max_seq_len="
                         f"{target_cfg.max_seq_len}")


def _score_humaneval(config, task: TaskData, cell: Cell, items: list[dict]) -> None:
  """Executes the completions; adds 'score' (passed 0/1) and 'result' to each item."""
  c = config.humaneval
  completions = [[] for _ in task.items]
  for it in items:
    completions[it["problem"]].append(it["text"])
  used = [i for i, comp in enumerate(completions) if comp]
  scored = humaneval.score_completions(
      [task.items[i] for i in used], [completions[i] for i in used],
      ks=sorted(set(c.pass_ks) | {cell.num_samples}), stops=grid.code_stops(config.prompt_format),
      timeout_s=c.timeout_s, workers=c.workers)
  outcomes = {i: iter(p["samples"]) for i, p in zip(used, scored["problems"])}
  for it in items:
    sample = next(outcomes[it["problem"]])
    it["score"], it["result"] = float(sample["passed"]), sample["result"][:120]


def _generate_kwargs(cell: Cell, config, models: dict, tokenizer: Tokenizer) -> dict:
  """The generate arguments of a cell's calls (all but the prompts and the seed)."""
  c = config[cell.task]
  num_draft = grid.auto_num_draft(config) if cell.num_draft == grid.AUTO else cell.num_draft or 1
  return dict(draft=models["draft"], method=cell.method, num_draft=num_draft,
              sampling=grid.sampling_for(config, cell.task, cell.sampling),
              max_new_tokens=c.max_new_tokens, eos_id=tokenizer.eos_id, pad_to=c.pad_to)


def _calls(cell: Cell, task: TaskData) -> list[tuple[list, list]]:
  """The cell's generate calls: ([(problem, sample)] of its rows, [batch_size] prompts)."""
  order = [(p, s) for p in range(len(task.items)) for s in range(cell.num_samples)]
  calls = []
  for start in range(0, len(order), cell.batch_size):
    chunk = order[start:start + cell.batch_size]
    prompts = [task.prompt_ids[p] for p, _ in chunk]
    # A short last call is filled up with copies of its last prompt (outputs
    # dropped): the same shape as the others, so no extra compile.
    calls.append((chunk, prompts + prompts[-1:] * (cell.batch_size - len(chunk))))
  return calls


def _loop_key(cell: Cell, kwargs: dict, prompts: list) -> tuple:
  """What decides a cell's compiled loop: cells with the same key share it (Table 1's
  two tasks share a padded width; nucleus settings that differ only in temperature and
  top-p differ only in the loop's inputs)."""
  width = round_up(max(map(len, prompts)), kwargs["pad_to"])
  return (cell.method, str(kwargs["num_draft"]), kwargs["sampling"].compile_key(),
          kwargs["max_new_tokens"], cell.batch_size, width)


def _prefill_key(loop_key: tuple) -> tuple:
  """What decides a call's prefill cost: the method (a draft prefills too), batch, width.
  K, the sampling and max_new_tokens leave it as it is."""
  return (loop_key[0], *loop_key[-2:])


def _time_prefill(target, prompts: list, kwargs: dict, repeats: int = 2) -> float:
  """Seconds of one call's prefill (api.prefill_only, warm): the fastest of `repeats`."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    api.prefill_only(target, prompts, **kwargs)
    times.append(time.perf_counter() - start)
  return min(times)


@dataclasses.dataclass
class Prepared:
  """What `prepare` did before the cells ran; compute_generate_cell reads and extends it."""
  warm: set = dataclasses.field(default_factory=set)         # _loop_key of warm loops
  prefill_s: dict = dataclasses.field(default_factory=dict)  # _prefill_key -> one call's s
  compile_s: float = 0.0
  warm_up_s: float = 0.0


def prepare(cells: list[Cell], config, tasks: dict, models: dict, tokenizer: Tokenizer,
            workers: int = 2) -> Prepared:
  """Compiles the decode loops of these generate cells, warms each up once, times prefills.

  Compiles first, `workers` at a time, running nothing: XLA compiles mostly on
  one core without the GIL, so two compiles overlap on 2 cores (the real pair's
  12 loops: 261 s up front, where the cells' own warm-ups had taken 839 s with
  their first runs and cost measurements). Cells with the same loop
  (`_loop_key`) are compiled once. Then, one loop at a time on a quiet machine
  (auto's costs are timed there): each loop's warm-up (timing.warm_up: the
  bodies' first runs, auto's costs), once for all the cells that share it, and
  the prefill of each (method, batch, width) timed (`_time_prefill`).
  """
  unique = {}
  for cell in cells:
    if cell.kind != "generate":
      continue
    kwargs = _generate_kwargs(cell, config, models, tokenizer)
    for _, prompts in _calls(cell, tasks[cell.task]):
      unique.setdefault(_loop_key(cell, kwargs, prompts), (prompts, kwargs))
  prepared, start = Prepared(), time.perf_counter()
  with futures.ThreadPoolExecutor(workers) as pool:
    for done in [pool.submit(api.precompile, models["target"], prompts, **kwargs)
                 for prompts, kwargs in unique.values()]:
      done.result()
  prepared.compile_s = time.perf_counter() - start
  for key, (prompts, kwargs) in unique.items():
    _warm(prepared, key, models["target"], prompts, kwargs)
  prepared.warm_up_s = time.perf_counter() - start - prepared.compile_s
  return prepared


def _warm(prepared: Prepared, key: tuple, target, prompts: list, kwargs: dict) -> float:
  """Warms loop `key` up and times its prefill, unless `prepared` has; returns seconds."""
  start = time.perf_counter()
  if key not in prepared.warm:
    timing.warm_up(target, [prompts], **kwargs)
    prepared.warm.add(key)
  if _prefill_key(key) not in prepared.prefill_s:
    prepared.prefill_s[_prefill_key(key)] = _time_prefill(target, prompts, kwargs)
  return time.perf_counter() - start


def compute_generate_cell(cell: Cell, config, task: TaskData, models: dict, tokenizer: Tokenizer,
                          progress: bool = True, prepared: Prepared | None = None) -> dict:
  """Generates, times and scores one cell; returns its record (without fingerprint).

  Its loop is warmed up and its prefill timed here unless `prepared` (from
  `prepare`) already has them.
  """
  kwargs = _generate_kwargs(cell, config, models, tokenizer)
  sampling = kwargs["sampling"]
  calls = _calls(cell, task)
  prepared = prepared or Prepared()
  keys = [_loop_key(cell, kwargs, prompts) for _, prompts in calls]
  order = [row for chunk, _ in calls for row in chunk]
  items, token_ids, wall, tokens_per_row, loop_iterations, compiled_calls = [], [], 0.0, 0.0, 0, 0
  totals = dict(new_tokens=0, target_calls=0, drafted=0, accepted=0)
  bar = tqdm(total=len(order), desc=cell.key, unit="seq", leave=False, disable=not progress)
  # Compiles, first runs of the loop bodies and auto's costs, without decoding a call twice.
  warm_up_s = sum(_warm(prepared, key, models["target"], prompts, kwargs)
                  for key, (_, prompts) in dict(zip(keys, calls)).items())
  prefill_s = sum(prepared.prefill_s[_prefill_key(key)] for key in keys)
  for call, (chunk, prompts) in enumerate(calls):
    out, seconds, compiled = timing.timed_generate(
        models["target"], prompts, **kwargs, seed=config.seed * 1_000_003 + call)
    wall += seconds
    compiled_calls += compiled
    tokens_per_row += float(np.mean(out.stats["new_tokens"][:len(chunk)]))
    loop_iterations += int(out.stats["target_calls"][:len(chunk)].max())
    for b, (p, s) in enumerate(chunk):
      row = {"problem": p, "sample": s, "text": tokenizer.decode(out.tokens[b]),
             **{k: int(out.stats[k][b]) for k in totals}}
      if sampling.greedy:  # kept for the token-for-token parity check
        row["tokens"] = out.tokens[b]
      token_ids.append(out.tokens[b])
      for k in totals:
        totals[k] += row[k]
      items.append(row)
    bar.update(len(chunk))
  bar.close()

  if cell.task == "humaneval":
    _score_humaneval(config, task, cell, items)
  else:
    scored = xsum.score_summaries([task.items[it["problem"]] for it in items],
                                  [it["text"] for it in items])
    for it, s in zip(items, scored["items"]):
      it["score"], it["prediction"] = s["rouge2"], s["prediction"]
  if not sampling.greedy:  # every sampled token against the target's exact distribution
    terms = scoring.sample_calibration(
        models["target"], sampling, [task.prompt_ids[it["problem"]] for it in items], token_ids,
        prompt_caches=task.prompt_caches)
    for it, t in zip(items, terms):
      it["calibration"] = t
  return {
      "timing": {"wall_s": wall, "ms_per_token": 1000 * wall / max(tokens_per_row, 1e-9),
                 # The calls' wall less their prefills (each timed alone, warm, on the
                 # same shape: _time_prefill): the decoding's share, per token.
                 "prefill_s": prefill_s,
                 "decode_ms_per_token": 1000 * max(wall - prefill_s, 0.0)
                                        / max(tokens_per_row, 1e-9),
                 "warm_up_s": warm_up_s,
                 "calls": len(calls), "compiled_calls": compiled_calls,
                 "loop_iterations": loop_iterations},
      "stats": {**totals, "tokens_per_call": totals["new_tokens"] / max(totals["target_calls"], 1),
                "acceptance_rate": (totals["accepted"] / totals["drafted"]
                                    if totals["drafted"] else None)},
      "items": items,
  }


def compute_canonical_cell(task: TaskData, models: dict) -> dict:
  """Mean log-likelihood of each canonical solution given its prompt, under the target."""
  scores = scoring.continuation_logprobs(models["target"], task.prompt_ids, task.solution_ids,
                                         prompt_caches=task.prompt_caches)
  by_prompt = {p["prompt"]: s for p, s in zip(task.items, scores)}
  result = humaneval.canonical_loglik(lambda prompt, _: by_prompt[prompt], task.items)
  return {"canonical": result}
