"""Table 1 of Chen et al. (2023), reproduced on one machine: the grid, its store, the report.

    nice -n 10 python scripts/reproduce.py --config=configs/reproduce.py

The grid is {autoregressive, speculative} x {greedy, nucleus} x {HumanEval,
XSum (when configured)} at batch 1 and K = config.num_draft (the paper's
setting), the same at every extra batch size (the "batched" rows), and a K
sweep at batch 1. Each unit of work is a *cell*: one decoding method on one
task's items, generated, timed and scored. A cell's record is a JSON file
under `<workdir>/cells/`, written atomically (temporary file, then rename)
and keyed by a fingerprint of everything it depends on (settings, items,
model and data bytes). A rerun reuses every record whose fingerprint matches
and recomputes the rest, so a killed run resumes where it stopped, and a
record that is half-written, corrupt or stale is redone, never trusted.

Timing. All cells of a run share one process and its compiled loops. Prompts
are padded to multiples of the task's `pad_to`, so a whole task usually has
one prompt width per batch size and each decode loop compiles once (a short
last batch is filled up with copies, keeping its shape). A
generate call that traced (compiled) a loop is run again with the same seed
and only the second run is timed: every timing is taken after a warm-up on
the same shapes. ms/token = summed wall time of the generate calls / summed
mean new tokens per row (`speed.py`'s definition: per-row latency, so at
batch B it is what one user of a row sees). speedup = autoregressive
ms/token / speculative ms/token on the same task, sampling and batch size.
acceptance = accepted / drafted and tokens/call = new tokens / target calls,
both pooled over rows (see speed.py: accepted / drafted is not alpha for K > 1).

Quality is checked, not assumed (section "Parity" of the report): greedy
speculative outputs must equal greedy autoregressive token for token; every
sampled cell, autoregressive included, must pass a per-token calibration test
against the target's exact sampling distribution (parity.check_calibration), and a
sampled speculative cell's quality metric must agree with autoregressive
(paired per problem / article, Student t interval containing 0). All sampled
checks together are Bonferroni-corrected to a false failure rate of
1 - config.confidence.

HumanEval: prompt = BOS + the problem's prompt; generation stops at EOS or
max_new_tokens; the decoded continuation is truncated at STOP_SEQUENCES and
executed by `humaneval.score_completions` in worker subprocesses (no JAX).
pass@k is the unbiased estimator. The canonical solution's mean
log-likelihood under the target is reported once (it does not depend on
the decoding method). XSum: `xsum.build_prompt` 1-shot prompt, summary cut at
the first newline, ROUGE-2 F per article.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io as io_lib
import json
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.eval import humaneval, xsum
from specsample.eval import parity as parity_lib
from specsample.eval.speed import machine_info
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer

TASKS = ("humaneval", "xsum")
SAMPLINGS = ("greedy", "nucleus")
METHODS = api.METHODS
SCHEMA_VERSION = 2  # bump when a record's meaning changes: old records are then recomputed

# Chen et al. 2023, Table 1 (PAPERS.md section 1): Chinchilla 70B target, 4B
# draft, 16 TPU v4, batch 1, K = 4. XSum nucleus p = 0.8 (temperature not
# stated), HumanEval nucleus p = 0.95, temperature 0.8, 100 samples/problem.
PAPER_CITATION = ("Chen et al. 2023, arXiv 2302.01318, Table 1 (Chinchilla 70B target / 4B "
                  "draft, 16 TPU v4, batch 1, K = 4)")
PAPER_TABLE1 = {
    ("xsum", "nucleus", "autoregressive"): ("ROUGE-2", "0.112", 14.1, 1.0),
    ("xsum", "nucleus", "speculative"): ("ROUGE-2", "0.114", 7.52, 1.92),
    ("xsum", "greedy", "autoregressive"): ("ROUGE-2", "0.157", 14.1, 1.0),
    ("xsum", "greedy", "speculative"): ("ROUGE-2", "0.156", 7.00, 2.01),
    ("humaneval", "nucleus", "autoregressive"): ("pass@100", "45.1%", 14.1, 1.0),
    ("humaneval", "nucleus", "speculative"): ("pass@100", "47.0%", 5.73, 2.46),
}
PAPER_K, PAPER_BATCH = 4, 1


# ---------------------------------------------------------------------------
# The grid.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cell:
  """One unit of work. kind 'generate' decodes items; 'canonical' scores solutions.

  Attributes:
    kind: 'generate' or 'canonical' (HumanEval canonical-solution log-likelihood).
    task: 'humaneval' or 'xsum'.
    sampling: 'greedy' or 'nucleus' ('' for canonical).
    method: 'autoregressive' or 'speculative' ('' for canonical).
    num_draft: K for speculative, 0 otherwise.
    batch_size: prompts per generate call.
    num_samples: samples per problem / article (1 for greedy).
    role: 'main' (K = config.num_draft, every batch size) or 'sweep' (batch 1).
  """
  kind: str
  task: str
  sampling: str = ""
  method: str = ""
  num_draft: int = 0
  batch_size: int = 1
  num_samples: int = 1
  role: str = "main"

  @property
  def key(self) -> str:
    """File-name-safe identifier, e.g. humaneval-nucleus-speculative-K4-B1-n4."""
    if self.kind == "canonical":
      return f"{self.task}-canonical-loglik"
    return (f"{self.task}-{self.sampling}-{self.method}-K{self.num_draft}-B{self.batch_size}"
            f"-n{self.num_samples}")


def _enabled_tasks(config) -> list[str]:
  return [t for t in config.tasks if t != "xsum" or config.xsum.path]


def plan_cells(config) -> list[Cell]:
  """Every cell the config asks for, in the order they are computed (cheap, pure).

  Order: batch-1 main cells, the canonical log-likelihood, the batched rows,
  then the K sweep, so an interrupted run has the paper's rows first.
  """
  main, batched, sweep = [], [], []
  unique = lambda values: list(dict.fromkeys(values))  # repeated entries run once
  for task in unique(_enabled_tasks(config)):
    task_cfg = config[task]
    for sampling in unique(config.samplings):
      n = 1 if sampling == "greedy" else task_cfg.num_samples
      for batch in unique(config.batch_sizes):
        for method in METHODS:
          k = config.num_draft if method == "speculative" else 0
          (main if batch == 1 else batched).append(
              Cell("generate", task, sampling, method, k, batch, n, "main"))
      if task in config.sweep_tasks:
        n_sweep = 1 if sampling == "greedy" else task_cfg.sweep_samples
        for k in unique(config.k_sweep):
          if k != config.num_draft:  # the main batch-1 cell is the sweep's point at K
            sweep.append(Cell("generate", task, sampling, "speculative", k, 1, n_sweep, "sweep"))
  canonical = [Cell("canonical", "humaneval")] if "humaneval" in config.tasks else []
  return main + canonical + batched + sweep


def _sampling(config, task: str, sampling: str) -> Sampling:
  if sampling == "greedy":
    return Sampling(temperature=0.0)
  return Sampling(temperature=float(config[task].temperature), top_p=float(config[task].top_p))


def _int_seq(value) -> bool:
  return isinstance(value, (tuple, list)) and all(
      isinstance(v, int) and not isinstance(v, bool) for v in value)


def check_config(config) -> None:
  """Raises ValueError naming the bad field and its allowed values. No models, no JAX."""
  def bad(field, allowed, value):
    raise ValueError(f"config.{field} must be {allowed}, got {value!r}")

  if not config.tasks or not set(config.tasks) <= set(TASKS):
    bad("tasks", f"a non-empty subset of {TASKS}", config.tasks)
  if not config.samplings or not set(config.samplings) <= set(SAMPLINGS):
    bad("samplings", f"a non-empty subset of {SAMPLINGS}", config.samplings)
  if not set(config.sweep_tasks) <= set(TASKS):
    bad("sweep_tasks", f"a subset of {TASKS}", config.sweep_tasks)
  k = config.num_draft
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    bad("num_draft", "an int >= 1 (the paper's K)", k)
  if not _int_seq(config.k_sweep) or any(v < 1 for v in config.k_sweep):
    bad("k_sweep", "a tuple of ints >= 1 (empty: no sweep)", config.k_sweep)
  if (not _int_seq(config.batch_sizes) or 1 not in config.batch_sizes
      or min(config.batch_sizes) < 1):
    bad("batch_sizes", "a tuple of ints >= 1 that includes 1 (the paper's setting)",
        config.batch_sizes)
  if not 0 < config.confidence < 1:
    bad("confidence", "in (0, 1)", config.confidence)
  for task, limit in (("humaneval", 164), ("xsum", None)):
    c = config[task]
    count = "num_problems" if task == "humaneval" else "num_items"
    extra = ("workers",) if task == "humaneval" else ("max_doc_chars",)
    for field in (count, "num_samples", "sweep_samples", "max_new_tokens", "pad_to") + extra:
      v = c[field]
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        bad(f"{task}.{field}", "an int >= 1", v)
    if limit is not None and c[count] > limit:
      bad(f"{task}.{count}", f"an int in [1, {limit}]", c[count])
    if not (isinstance(c.temperature, (int, float)) and c.temperature > 0):
      bad(f"{task}.temperature", "> 0 (nucleus sampling; greedy is its own sampling)",
          c.temperature)
    if not (isinstance(c.top_p, (int, float)) and 0 < c.top_p <= 1):
      bad(f"{task}.top_p", "in (0, 1]", c.top_p)
  if not _int_seq(config.humaneval.pass_ks) or min(config.humaneval.pass_ks, default=0) < 1:
    bad("humaneval.pass_ks", "a non-empty tuple of ints >= 1", config.humaneval.pass_ks)
  if config.humaneval.timeout_s <= 0:
    bad("humaneval.timeout_s", "> 0 seconds", config.humaneval.timeout_s)
  if "xsum" in config.tasks and config.xsum.path and not os.path.exists(config.xsum.path):
    bad("xsum.path", "an existing JSON/JSONL/Parquet file or folder ('' skips XSum)",
        config.xsum.path)
  for field in ("target_dir", "draft_dir"):
    path = os.path.join(config[field], "config.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.{field}: no model at {config[field]} ({path} is missing); "
                              "export a pair with scripts/export_pair.py or point "
                              f"--config.{field} at an io.save_lm folder")
  if not os.path.exists(config.tokenizer):
    raise FileNotFoundError(f"config.tokenizer: {config.tokenizer} does not exist")


# ---------------------------------------------------------------------------
# The store: one JSON record per cell, written atomically.
# ---------------------------------------------------------------------------

def _sha(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def dir_fingerprint(path: str) -> str:
  """sha256 over a folder's relative file names and bytes (a model's identity)."""
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode() + b"\0")
      with open(full, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
  return h.hexdigest()


def write_atomic(path: str, text: str) -> None:
  """Writes text to a temporary sibling, fsyncs, then renames it over `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class CellStore:
  """`<workdir>/cells/<cell key>.json`, each holding one complete record."""

  def __init__(self, workdir: str):
    self.directory = os.path.join(workdir, "cells")

  def path(self, cell: Cell) -> str:
    return os.path.join(self.directory, cell.key + ".json")

  def load(self, cell: Cell, fingerprint: str) -> tuple[dict | None, str]:
    """(record, '') if a complete, matching record exists, else (None, why not)."""
    path = self.path(cell)
    if not os.path.exists(path):
      return None, "not computed yet"
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError) as e:
      return None, f"unreadable ({type(e).__name__}); recomputing"
    if not isinstance(record, dict) or record.get("complete") is not True:
      return None, "incomplete record; recomputing"
    if record.get("schema") != SCHEMA_VERSION or record.get("key") != cell.key:
      return None, "written by another version; recomputing"
    if record.get("fingerprint") != fingerprint:
      return None, "settings, items or models changed; recomputing"
    return record, ""

  def save(self, record: dict) -> None:
    write_atomic(os.path.join(self.directory, record["key"] + ".json"),
                 json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------------------
# Task data and fingerprints (no model parameters loaded).
# ---------------------------------------------------------------------------

def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


@dataclasses.dataclass
class TaskData:
  """Prompts of one task. items[i] is a HumanEval problem or an XSum article."""
  name: str
  items: list[dict]
  prompt_ids: list[list[int]]
  fingerprint: str
  solution_ids: list[list[int]] | None = None  # HumanEval canonical solutions


def load_tasks(config, tokenizer: Tokenizer) -> dict[str, TaskData]:
  """Loads and tokenizes every enabled task (BOS + prompt)."""
  tasks = {}
  for task in _enabled_tasks(config):
    if task == "humaneval":
      items = humaneval.load_problems(limit=config.humaneval.num_problems)
      texts = [p["prompt"] for p in items]
      data_fp = _sha([[p["task_id"], p["prompt"], p["test"], p["canonical_solution"]]
                      for p in items])
    else:
      items = xsum.load_xsum(config.xsum.path, config.xsum.split, limit=config.xsum.num_items)
      texts = [xsum.build_prompt(it["document"], max_doc_chars=config.xsum.max_doc_chars)
               for it in items]
      data_fp = _sha([texts, [it["summary"] for it in items]])
    ids = tokenizer.encode_batch(texts, add_bos=True)
    tasks[task] = TaskData(task, items, ids, data_fp)
    if task == "humaneval":
      tasks[task].solution_ids = tokenizer.encode_batch([p["canonical_solution"] for p in items])
  return tasks


def check_fits(config, tasks: dict[str, TaskData], target_cfg, draft_cfg) -> None:
  """Raises naming the fields if a prompt + generation would not fit a model's cache."""
  max_k = max([config.num_draft, *config.k_sweep])
  for name, task in tasks.items():
    c = config[name]
    longest = int(np.argmax([len(p) for p in task.prompt_ids]))
    width = _round_up(len(task.prompt_ids[longest]), c.pad_to)
    need = _round_up(width + c.max_new_tokens + max_k + 1, c.pad_to)
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


def cell_fingerprint(cell: Cell, config, tasks: dict[str, TaskData], model_fps: dict) -> str:
  """Everything a cell's record depends on; a change means it is recomputed."""
  c = config[cell.task]
  spec = {"schema": SCHEMA_VERSION, "cell": dataclasses.asdict(cell),
          "data": tasks[cell.task].fingerprint, "target": model_fps["target"],
          "tokenizer": model_fps["tokenizer"]}
  if cell.kind == "generate":
    spec.update(sampling=dataclasses.asdict(_sampling(config, cell.task, cell.sampling)),
                max_new_tokens=c.max_new_tokens, pad_to=c.pad_to, seed=config.seed)
    if cell.method == "speculative":
      spec["draft"] = model_fps["draft"]
    if cell.task == "humaneval":
      spec.update(stops=humaneval.STOP_SEQUENCES, pass_ks=tuple(c.pass_ks),
                  timeout_s=c.timeout_s)
  return _sha(spec)


# ---------------------------------------------------------------------------
# Computing cells.
# ---------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("config",))
def _token_logprobs(config: tr.TransformerConfig, params, tokens_BL: jax.Array) -> jax.Array:
  """[B, L - 1] log q(tokens[:, t + 1] | tokens[:, :t + 1]) under the model."""
  logits_BLV, _ = tr.forward(config, params, tokens_BL)
  logp_BLV = jax.nn.log_softmax(logits_BLV[:, :-1].astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def _calibration_terms(config: tr.TransformerConfig, sampling: Sampling, params,
                       tokens_BL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per position t, with s = sampling.probs(logits at t) and x = tokens[:, t + 1]:

  u = log s(x) + H(s) (mean 0 when x ~ s), Var_{x ~ s}[log s(x)], and whether
  s(x) > 0. Each [B, L - 1], float32.
  """
  logits_BLV, _ = tr.forward(config, params, tokens_BL)
  s_BLV = sampling.probs(logits_BLV[:, :-1])
  logs_BLV = jnp.log(jnp.where(s_BLV > 0, s_BLV, 1.0))   # 0 off the support (0 log 0 = 0)
  entropy_BL = -jnp.sum(s_BLV * logs_BLV, axis=-1)
  variance_BL = jnp.maximum(jnp.sum(s_BLV * logs_BLV ** 2, axis=-1) - entropy_BL ** 2, 0.0)
  s_x_BL = jnp.take_along_axis(s_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]
  inside_BL = s_x_BL > 0
  u_BL = jnp.where(inside_BL, jnp.log(jnp.where(inside_BL, s_x_BL, 1.0)) + entropy_BL, 0.0)
  return u_BL, variance_BL, inside_BL


def _score_continuations(score, config: tr.TransformerConfig, prompts: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], rows: int, width_multiple: int
                         ) -> list[tuple[np.ndarray, ...]]:
  """Runs `score` ([rows, width] ids -> per-position [rows, width - 1] arrays) over
  prompt + continuation sequences; returns each continuation's slice of every array.

  Rows go `rows` at a time at a width rounded up to `width_multiple` (the last
  chunk is padded with copies), so a task needs one or two compiles.
  """
  seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
  width = min(_round_up(max(len(s) for s in seqs), width_multiple), config.max_seq_len)
  out = []
  for start in range(0, len(seqs), rows):
    chunk = seqs[start:start + rows]
    tokens_BL = np.zeros((rows, width), np.int32)
    for b in range(rows):
      seq = chunk[min(b, len(chunk) - 1)]
      tokens_BL[b, :len(seq)] = seq
    arrays = [np.asarray(a) for a in jax.device_get(score(tokens_BL))]
    for b in range(len(chunk)):
      p, n = len(prompts[start + b]), len(continuations[start + b])
      # Token t + 1 is predicted at position t: the continuation's tokens sit
      # at positions p .. p + n - 1, so their scores at p - 1 .. p + n - 2.
      out.append(tuple(a[b, p - 1:p - 1 + n] for a in arrays))
  return out


def continuation_logprobs(model: api.LM, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *, rows: int = 8,
                          width_multiple: int = 128) -> list[tuple[float, int]]:
  """(sum of log-probs, token count) of each continuation given its prompt."""
  scored = _score_continuations(
      lambda t: (_token_logprobs(model.config, model.params, t),), model.config, prompts,
      continuations, rows, width_multiple)
  return [(float(logp.sum()), len(logp)) for (logp,) in scored]


def sample_calibration(model: api.LM, sampling: Sampling, prompts: Sequence[Sequence[int]],
                       continuations: Sequence[Sequence[int]], *, rows: int = 8,
                       width_multiple: int = 128) -> list[dict]:
  """Per continuation, the terms of the per-token calibration test (parity.check_calibration).

  Returns one dict per continuation: u (sum over its tokens of log s(x) + H(s)),
  variance (sum of Var_s[log s(x)]), tokens, and outside (tokens with s(x) = 0,
  which exact sampling never produces; s recomputed here without a cache can
  differ from the decode loop's by float rounding at the nucleus edge).
  """
  scored = _score_continuations(
      lambda t: _calibration_terms(model.config, sampling, model.params, t), model.config,
      prompts, continuations, rows, width_multiple)
  return [{"u": float(u.sum(dtype=np.float64)), "variance": float(v.sum(dtype=np.float64)),
           "tokens": int(len(u)), "outside": int((~inside).sum())} for u, v, inside in scored]


def _timed_generate(target, prompts, kwargs) -> tuple[api.GenerateOutput, float, bool]:
  """One generate call; if it compiled a loop, runs it again and times the rerun."""
  traces = dict(api.TRACE_COUNT)
  start = time.perf_counter()
  out = api.generate(target, prompts, **kwargs)  # numpy out: already synchronous
  wall = time.perf_counter() - start
  compiled = api.TRACE_COUNT != traces
  if compiled:  # same seed, same shapes: identical output, now without compilation
    start = time.perf_counter()
    out = api.generate(target, prompts, **kwargs)
    wall = time.perf_counter() - start
  return out, wall, compiled


def _score_humaneval(config, task: TaskData, cell: Cell, items: list[dict]) -> None:
  """Executes the completions; adds 'score' (passed 0/1) and 'result' to each item."""
  c = config.humaneval
  completions = [[] for _ in task.items]
  for it in items:
    completions[it["problem"]].append(it["text"])
  used = [i for i, comp in enumerate(completions) if comp]
  scored = humaneval.score_completions(
      [task.items[i] for i in used], [completions[i] for i in used],
      ks=sorted(set(c.pass_ks) | {cell.num_samples}), timeout_s=c.timeout_s, workers=c.workers)
  outcomes = {i: iter(p["samples"]) for i, p in zip(used, scored["problems"])}
  for it in items:
    sample = next(outcomes[it["problem"]])
    it["score"], it["result"] = float(sample["passed"]), sample["result"][:120]


def compute_generate_cell(cell: Cell, config, task: TaskData, models: dict, tokenizer: Tokenizer,
                          progress: bool = True) -> dict:
  """Generates, times and scores one cell; returns its record (without fingerprint)."""
  c = config[cell.task]
  sampling = _sampling(config, cell.task, cell.sampling)
  kwargs = dict(draft=models["draft"], method=cell.method, num_draft=max(cell.num_draft, 1),
                sampling=sampling, max_new_tokens=c.max_new_tokens, eos_id=tokenizer.eos_id,
                pad_to=c.pad_to)
  order = [(p, s) for p in range(len(task.items)) for s in range(cell.num_samples)]
  items, token_ids, wall, tokens_per_row, loop_iterations, compiled_calls = [], [], 0.0, 0.0, 0, 0
  totals = dict(new_tokens=0, target_calls=0, drafted=0, accepted=0)
  bar = tqdm(total=len(order), desc=cell.key, unit="seq", leave=False, disable=not progress)
  for call, start in enumerate(range(0, len(order), cell.batch_size)):
    chunk = order[start:start + cell.batch_size]
    prompts = [task.prompt_ids[p] for p, _ in chunk]
    # A short last call is filled up with copies of its last prompt (outputs
    # dropped): the same shape as the others, so no extra compile.
    prompts += prompts[-1:] * (cell.batch_size - len(chunk))
    out, seconds, compiled = _timed_generate(
        models["target"], prompts, dict(kwargs, seed=config.seed * 1_000_003 + call))
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
    terms = sample_calibration(
        models["target"], sampling, [task.prompt_ids[it["problem"]] for it in items], token_ids,
        width_multiple=max(c.pad_to, 128))
    for it, t in zip(items, terms):
      it["calibration"] = t
  return {
      "timing": {"wall_s": wall, "ms_per_token": 1000 * wall / max(tokens_per_row, 1e-9),
                 "calls": -(-len(order) // cell.batch_size), "compiled_calls": compiled_calls,
                 "loop_iterations": loop_iterations},
      "stats": {**totals, "tokens_per_call": totals["new_tokens"] / max(totals["target_calls"], 1),
                "acceptance_rate": (totals["accepted"] / totals["drafted"]
                                    if totals["drafted"] else None)},
      "items": items,
  }


def compute_canonical_cell(task: TaskData, models: dict, pad_to: int) -> dict:
  """Mean log-likelihood of each canonical solution given its prompt, under the target."""
  scores = continuation_logprobs(models["target"], task.prompt_ids, task.solution_ids,
                                 width_multiple=max(pad_to, 128))
  by_prompt = {p["prompt"]: s for p, s in zip(task.items, scores)}
  result = humaneval.canonical_loglik(lambda prompt, _: by_prompt[prompt], task.items)
  return {"canonical": result}


# ---------------------------------------------------------------------------
# Rows: quality and parity per cell (pure functions of records; no JAX).
# ---------------------------------------------------------------------------

def _machine_identity(info: dict) -> dict:
  keys = ("cpu_model", "processor", "cpu_count", "cpus_usable", "platform", "jax_version",
          "jax_devices", "backend")
  return {k: info.get(k) for k in keys}


def describe_machine(info: dict) -> str:
  """One line: CPU model, cores, backend, devices, jax version."""
  devices = info.get("jax_devices") or []
  return (f"{info.get('cpu_model') or info.get('processor')}, {info.get('cpu_count')} cores "
          f"({info.get('cpus_usable')} usable), backend {info.get('backend')} "
          f"({len(devices)} device{'s' * (len(devices) != 1)}), jax {info.get('jax_version')}")


def build_rows(cells: Sequence[Cell], records: dict[str, dict], config
               ) -> tuple[list[dict], list[dict], dict]:
  """Table rows (one per generate cell), parity checks and machine legend.

  Returns:
    (rows, parity, machines): machines maps an id ('M1', ...) to machine info.
  """
  machines: dict[str, dict] = {}

  def machine_id(info: dict) -> str:
    ident = _machine_identity(info)
    for mid, known in machines.items():
      if _machine_identity(known) == ident:
        return mid
    mid = f"M{len(machines) + 1}"
    machines[mid] = info
    return mid

  def ar_ref(cell: Cell) -> tuple[Cell, dict] | tuple[None, None]:
    n = 1 if cell.sampling == "greedy" else config[cell.task].num_samples
    ref = Cell("generate", cell.task, cell.sampling, "autoregressive", 0, cell.batch_size, n)
    return (ref, records[ref.key]) if ref.key in records else (None, None)

  # Sampled checks: calibration of every sampled cell, plus the quality
  # comparison of every sampled speculative cell that has its AR reference.
  # Bonferroni keeps the chance that an exact implementation fails ANY of them
  # at 1 - confidence.
  def sampled(cell: Cell) -> bool:
    return cell.kind == "generate" and cell.sampling != "greedy" and cell.key in records

  num_sampled = sum(sampled(c) * (1 + (c.method == "speculative" and ar_ref(c)[1] is not None))
                    for c in cells)
  per_check = 1 - (1 - config.confidence) / max(num_sampled, 1)
  rows, parity = [], []
  for cell in cells:
    if cell.kind != "generate" or cell.key not in records:
      continue
    rec = records[cell.key]
    q = parity_lib.quality(cell.task, rec, config.confidence, config.humaneval.pass_ks)
    ref_cell, ref = ar_ref(cell) if cell.method == "speculative" else (None, None)
    ms = rec["timing"]["ms_per_token"]
    # A speedup across two machines would mean nothing (a resumed run may move).
    same_machine = ref and _machine_identity(ref["machine"]) == _machine_identity(rec["machine"])
    speedup = (1.0 if cell.method == "autoregressive" else
               ref["timing"]["ms_per_token"] / ms if same_machine else None)
    checks = []
    if sampled(cell):
      checks.append(parity_lib.check_calibration(rec, per_check))
    if ref is not None:
      checks += parity_lib.check_parity(ref, rec, greedy=cell.sampling == "greedy", task=cell.task,
                             confidence=per_check)
    if checks:
      parity.append({"cell": cell.key, "reference": ref_cell.key if ref_cell else None,
                     "task": cell.task, "sampling": cell.sampling, "method": cell.method,
                     "K": cell.num_draft, "batch_size": cell.batch_size, "checks": checks})
    checks = checks or None
    paper = PAPER_TABLE1.get((cell.task, cell.sampling, cell.method))
    at_paper_setting = cell.batch_size == PAPER_BATCH and cell.role == "main"
    rows.append({
        "key": cell.key, "task": cell.task, "sampling": cell.sampling, "method": cell.method,
        "K": cell.num_draft or None, "batch_size": cell.batch_size, "role": cell.role,
        "num_samples": cell.num_samples, "num_sequences": len(rec["items"]),
        "ms_per_token": ms, "speedup": speedup,
        "acceptance_rate": rec["stats"]["acceptance_rate"],
        "tokens_per_call": rec["stats"]["tokens_per_call"],
        "mean_new_tokens": rec["stats"]["new_tokens"] / max(len(rec["items"]), 1),
        "metric": q["metric"], "metric_value": q["value"],
        # One problem has no interval (stats gives +-inf): stored as None, valid JSON.
        "metric_ci_low": q["ci"][0] if math.isfinite(q["ci"][0]) else None,
        "metric_ci_high": q["ci"][1] if math.isfinite(q["ci"][1]) else None,
        "pass_at_k": q.get("pass@k"),
        "parity_passed": None if checks is None else all(c["passed"] for c in checks),
        "paper_metric": paper[0] if paper and at_paper_setting else None,
        "paper_value": paper[1] if paper and at_paper_setting else None,
        "paper_ms_per_token": paper[2] if paper and at_paper_setting else None,
        "paper_speedup": paper[3] if paper and at_paper_setting else None,
        "machine": machine_id(rec["machine"]),
        "load_average_at_start": rec["machine"].get("load_average_1_5_15"),
        "compiled_calls_retimed": rec["timing"]["compiled_calls"],
    })
  return rows, parity, machines


# ---------------------------------------------------------------------------
# Output: markdown, CSV, JSON, plots.
# ---------------------------------------------------------------------------

TASK_TITLES = {"humaneval": "HumanEval", "xsum": "XSum"}
METHOD_TITLES = {"autoregressive": "AR", "speculative": "SpS"}
CSV_FIELDS = ("task", "sampling", "method", "K", "batch_size", "role", "num_samples",
              "num_sequences", "ms_per_token", "speedup", "acceptance_rate", "tokens_per_call",
              "mean_new_tokens", "metric", "metric_value", "metric_ci_low", "metric_ci_high",
              "pass_at_k", "parity_passed", "paper_metric", "paper_value", "paper_ms_per_token",
              "paper_speedup", "machine", "machine_description", "load_average_at_start")


def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
  return "—" if x is None else f"{x:{spec}}{suffix}"


def _fmt_quality(row: dict) -> str:
  pct = row["task"] == "humaneval"
  scale, spec = (100, ".1f") if pct else (1, ".3f")
  unit = "%" if pct else ""
  lo, hi = row["metric_ci_low"], row["metric_ci_high"]
  ci = "" if lo is None else f" [{lo * scale:{spec}}, {hi * scale:{spec}}]"
  text = f"{row['metric']} {row['metric_value'] * scale:{spec}}{unit}{ci}"
  extra = {k: v for k, v in (row["pass_at_k"] or {}).items() if k != "pass@1"}
  if extra:
    text += "; " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in extra.items())
  return text


def _parity_mark(row: dict) -> str:
  return {None: "", True: " ✓", False: " ✗ parity"}[row["parity_passed"]]


def format_markdown(results: dict) -> str:
  """results/table1.md: machine legend, the Table 1 grid beside the paper, parity, sweep."""
  cfg, rows = results["config"], results["rows"]
  lines = [
      "# Table 1 reproduction: speculative vs autoregressive sampling", "",
      f"Command: `{results['command']}`  ",
      f"Setting `{cfg['setting']}`, run finished {results['finished']} "
      f"({results['elapsed_s']:.0f} s this invocation; {len(results['computed'])} cells computed, "
      f"{len(results['reused'])} reused from `{results['workdir']}`).  ",
      f"Target `{cfg['target_dir']}` ({results['models']['target']}), draft "
      f"`{cfg['draft_dir']}` ({results['models']['draft']}).  ",
      f"Paper: {PAPER_CITATION}.", "", "Machines (every number below names the one it was "
      "measured on; speed numbers are only comparable within one machine):", ""]
  for mid, info in results["machines"].items():
    lines.append(f"- **{mid}**: {describe_machine(info)}; platform {info.get('platform')}")
  loads = [r["load_average_at_start"][0] for r in rows if r["load_average_at_start"]]
  if loads:
    lines.append(f"- 1-minute load average at the start of the cells: {min(loads):.1f} to "
                 f"{max(loads):.1f} (other work on the CPU inflates ms/token).")
  he, xs = cfg["humaneval"], cfg["xsum"]
  lines += [
      "", "## Table 1 (main K, every batch size)", "",
      f"HumanEval: first {he['num_problems']} problems, greedy 1 sample and nucleus (temperature "
      f"{he['temperature']}, top-p {he['top_p']}) {he['num_samples']} samples per problem, at "
      f"most {he['max_new_tokens']} new tokens, stop at EOS, truncated at "
      f"{list(humaneval.STOP_SEQUENCES)} (the same for both methods), executed with a "
      f"{he['timeout_s']} s limit. XSum: " + (
          f"`{xs['path']}` ({xs['split']}, {xs['num_items']} articles at most), 1-shot, nucleus "
          f"(temperature {xs['temperature']}, top-p {xs['top_p']}), at most "
          f"{xs['max_new_tokens']} new tokens." if xs["path"] else
          "not run (no data configured; set `--config.xsum.path`)."),
      f"Quality: mean over problems/articles with a {cfg['confidence']:.0%} confidence interval; "
      "pass@k unbiased. Paper columns (its batch 1, K = 4, 70B/4B pair on TPU v4) stand beside "
      "our batch-1 rows at our K.", "",
      "| task | sampling | method | batch | K | ms/token | speedup | acceptance | tokens/call "
      "| quality (ours) | paper quality | paper ms/token | paper speedup | machine |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  main = [r for r in rows if r["role"] == "main"]
  shown = set()
  for task in TASKS:
    for sampling in SAMPLINGS:
      group = [r for r in main if r["task"] == task and r["sampling"] == sampling]
      for r in sorted(group, key=lambda r: (r["batch_size"], r["method"])):
        shown.add((task, sampling, r["method"]))
        lines.append(
            f"| {TASK_TITLES[task]} | {sampling} | {METHOD_TITLES[r['method']]} | "
            f"{r['batch_size']} | {_fmt(r['K'], 'd')} | {r['ms_per_token']:.2f} | "
            f"{_fmt(r['speedup'], '.2f', 'x')}{_parity_mark(r)} | "
            f"{_fmt(r['acceptance_rate'], '.3f')} | {r['tokens_per_call']:.2f} | "
            f"{_fmt_quality(r)} | "
            f"{' '.join(filter(None, (r['paper_metric'], r['paper_value']))) or '—'} | "
            f"{_fmt(r['paper_ms_per_token'])} | {_fmt(r['paper_speedup'], '.2f', 'x')} | "
            f"{r['machine']} |")
      for method in METHODS:
        paper = PAPER_TABLE1.get((task, sampling, method))
        if paper and (task, sampling, method) not in shown:
          lines.append(f"| {TASK_TITLES[task]} | {sampling} | {METHOD_TITLES[method]} | 1 | "
                       f"{'4' if method == 'speculative' else '—'} | not run | | | | | "
                       f"{paper[0]} {paper[1]} | {paper[2]:.2f} | {paper[3]:.2f}x | |")
  canon = results.get("canonical_loglik")
  if canon:
    lines += ["", f"HumanEval canonical solutions under the target: mean log-likelihood "
              f"{canon['mean_loglik_per_token']:.3f} nats/token ({canon['total_tokens']} tokens, "
              f"{len(canon['per_problem'])} problems; mean of per-problem means "
              f"{canon['mean_of_problem_means']:.3f}), machine {canon['machine']}."]
  lines += ["", "## Parity (quality is checked, not assumed)", "",
            "Greedy: speculative must reproduce autoregressive token for token. Sampled, every "
            "cell (AR too): each generated token x, drawn where the target's sampling "
            "distribution (temperature, top-p) is s, must look like a draw from s: the sum over "
            "all tokens of log s(x) + H(s), which has mean 0 at every prefix, divided by its "
            "standard deviation, is z ~ N(0, 1) for an exact sampler. Sampled SpS cells also "
            "compare the quality metric with AR (paired per problem, Student t interval). "
            f"The {results['num_sampled_checks']} sampled checks are Bonferroni-corrected, so "
            f"an exact implementation fails any of them at most {1 - cfg['confidence']:.0%} of "
            "the time.", "",
            "| task | sampling | method | batch | K | check | result | pass |",
            "|---|---|---|---|---|---|---|---|"]
  for p in results["parity"]:
    for c in p["checks"]:
      lines.append(f"| {TASK_TITLES[p['task']]} | {p['sampling']} | "
                   f"{METHOD_TITLES[p['method']]} | {p['batch_size']} | {p['K'] or '—'} | "
                   f"{c['check']} | {c['detail']} | {'✓' if c['passed'] else '✗ FAILED'} |")
  verdict = ("all parity checks passed" if results["parity_ok"] else
             f"{results['parity_failures']} parity check(s) FAILED")
  lines += ["", f"**{verdict}.**"]
  sweep = [r for r in rows if r["batch_size"] == 1 and r["method"] == "speculative"
           and (r["role"] == "sweep" or any(s["role"] == "sweep" and s["task"] == r["task"]
                                            and s["sampling"] == r["sampling"] for s in rows))]
  if sweep:
    lines += ["", "## K sweep (batch 1; speedup against the batch-1 AR row above)", "",
              "| task | sampling | K | sequences | ms/token | speedup | acceptance | tokens/call | "
              "quality | machine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(sweep, key=lambda r: (r["task"], r["sampling"], r["K"])):
      lines.append(f"| {TASK_TITLES[r['task']]} | {r['sampling']} | {r['K']} | "
                   f"{r['num_sequences']} | {r['ms_per_token']:.2f} | "
                   f"{_fmt(r['speedup'], '.2f', 'x')}{_parity_mark(r)} "
                   f"| {_fmt(r['acceptance_rate'], '.3f')} | {r['tokens_per_call']:.2f} | "
                   f"{_fmt_quality(r)} | {r['machine']} |")
  lines += ["", "Definitions: ms/token = wall time of the generate calls / mean new tokens per row "
            "(per-row latency at batch > 1), timed after a warm-up on the same shapes. speedup = "
            "AR ms/token / SpS ms/token at the same task, sampling and batch. acceptance = "
            "accepted / drafted draft tokens (not alpha for K > 1). tokens/call = new tokens per "
            "target forward. Plots: " + ", ".join(f"`{os.path.basename(p)}`"
                                                  for p in results["paths"]["plots"]) + "."]
  return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict], machines: dict, path: str) -> None:
  buf = io_lib.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
  writer.writeheader()
  for r in rows:
    writer.writerow({**r, "pass_at_k": json.dumps(r["pass_at_k"]) if r["pass_at_k"] else "",
                     "load_average_at_start": json.dumps(r["load_average_at_start"]),
                     "machine_description": describe_machine(machines[r["machine"]])})
  write_atomic(path, buf.getvalue())


def write_plots(rows: Sequence[dict], machines: dict, results_dir: str) -> list[str]:
  """speedup vs K, acceptance vs K (batch 1) and ms/token per method (main K)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  machine_note = "; ".join(f"{m}: {describe_machine(i)}" for m, i in machines.items())
  paths = []
  curves: dict[tuple, list[dict]] = {}
  for r in rows:
    if r["method"] == "speculative" and r["batch_size"] == 1:
      curves.setdefault((r["task"], r["sampling"]), []).append(r)
  for name, fields in (("speedup_vs_k", ("speedup",)),
                       ("acceptance_vs_k", ("acceptance_rate", "tokens_per_call"))):
    fig, axes = plt.subplots(1, len(fields), figsize=(6 * len(fields), 4.2), squeeze=False)
    for ax, field in zip(axes[0], fields):
      for (task, sampling), group in sorted(curves.items()):
        group = sorted(group, key=lambda r: r["K"])
        ax.plot([r["K"] for r in group], [r[field] for r in group], "o-",
                label=f"{TASK_TITLES[task]} {sampling}")
        paper = PAPER_TABLE1.get((task, sampling, "speculative"))
        if field == "speedup" and paper:
          ax.plot([PAPER_K], [paper[3]], "*", ms=12, color=ax.lines[-1].get_color(),
                  label=f"paper {TASK_TITLES[task]} {sampling} (TPU v4, 70B)")
      if field == "speedup":
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
      ax.set_xlabel("K (draft tokens per iteration)")
      ax.set_ylabel({"speedup": "speedup over autoregressive (x)",
                     "acceptance_rate": "accepted / drafted",
                     "tokens_per_call": "tokens per target call"}[field])
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    fig.suptitle(f"batch 1 — {machine_note}", fontsize=7)
    fig.tight_layout()
    path = os.path.join(results_dir, f"table1_{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

  main = [r for r in rows if r["role"] == "main"]
  groups = sorted({(r["task"], r["sampling"], r["batch_size"]) for r in main})
  fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.2))
  for offset, method in ((-0.2, "autoregressive"), (0.2, "speculative")):
    values = [next((r["ms_per_token"] for r in main if (r["task"], r["sampling"], r["batch_size"])
                    == g and r["method"] == method), np.nan) for g in groups]
    ax.bar(np.arange(len(groups)) + offset, values, 0.4, label=METHOD_TITLES[method])
  ax.set_xticks(np.arange(len(groups)))
  ax.set_xticklabels([f"{TASK_TITLES[t]}\n{s}, B={b}" for t, s, b in groups], fontsize=8)
  ax.set_ylabel("ms / token (per row)")
  ax.legend()
  ax.set_title(machine_note, fontsize=7)
  fig.tight_layout()
  path = os.path.join(results_dir, "table1_ms_per_token.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return paths + [path]


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------

def _model_summary(cfg: tr.TransformerConfig) -> str:
  params = tr.count_params(tr.param_shapes(cfg))
  return f"{cfg.num_layers} layers, d_model {cfg.d_model}, {params / 1e6:.2f}M params"


def run(config, workdir: str, results_dir: str, command: str = "", progress: bool = True) -> dict:
  """Computes the missing cells of the grid, then writes the report.

  Args:
    config: a configs/reproduce.py config.
    workdir: cell records live in <workdir>/cells; a rerun reuses them.
    results_dir: table1.md, table1.csv, table1.json and the PNG plots go here.
    command: the command line, recorded in the report.
    progress: show tqdm bars.

  Returns:
    The results dict (as in table1.json) plus 'markdown'.
  """
  check_config(config)
  t_start = time.perf_counter()
  tokenizer = Tokenizer.load(config.tokenizer)
  target_cfg, _ = model_io.load_config(config.target_dir)
  draft_cfg, _ = model_io.load_config(config.draft_dir)
  for name, cfg in (("target_dir", target_cfg), ("draft_dir", draft_cfg)):
    if cfg.vocab_size != tokenizer.vocab_size:
      raise ValueError(f"config.{name}: model vocab_size {cfg.vocab_size} != tokenizer "
                       f"({config.tokenizer}) vocab {tokenizer.vocab_size}")
  tasks = load_tasks(config, tokenizer)
  check_fits(config, tasks, target_cfg, draft_cfg)
  fps = {"target": dir_fingerprint(config.target_dir), "draft": dir_fingerprint(config.draft_dir),
         "tokenizer": tokenizer.fingerprint}

  cells, store = plan_cells(config), CellStore(workdir)
  records, todo = {}, []
  for cell in cells:
    fp = cell_fingerprint(cell, config, tasks, fps)
    record, why = store.load(cell, fp)
    if record is None:
      todo.append((cell, fp))
      if why != "not computed yet":
        tqdm.write(f"cell {cell.key}: stored record {why}")
    else:
      records[cell.key] = record

  models: dict = {}
  if todo:
    models = {"target": model_io.load_lm(config.target_dir),
              "draft": model_io.load_lm(config.draft_dir)}
  bar = tqdm(todo, desc="table 1 cells", unit="cell", disable=not progress)
  for cell, fp in bar:
    bar.set_postfix_str(cell.key)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    machine = {**machine_info(), "backend": jax.default_backend()}
    t0 = time.perf_counter()
    if cell.kind == "canonical":
      body = compute_canonical_cell(tasks[cell.task], models, config.humaneval.pad_to)
    else:
      body = compute_generate_cell(cell, config, tasks[cell.task], models, tokenizer, progress)
    record = {"schema": SCHEMA_VERSION, "key": cell.key, "fingerprint": fp,
              "cell": dataclasses.asdict(cell), "started": started, "machine": machine,
              "elapsed_s": time.perf_counter() - t0, **body, "complete": True}
    store.save(record)
    records[cell.key] = record
    if cell.kind == "generate":
      tqdm.write(f"{cell.key}: {record['timing']['ms_per_token']:.2f} ms/token, "
                 f"tokens/call {record['stats']['tokens_per_call']:.2f} "
                 f"({record['elapsed_s']:.0f} s)")
  bar.close()

  rows, parity, machines = build_rows(cells, records, config)
  failures = sum(not c["passed"] for p in parity for c in p["checks"])
  canonical = next((records[c.key] for c in cells if c.kind == "canonical"), None)
  canon_summary = None
  if canonical:
    canon_summary = {**canonical["canonical"], "machine": next(
        (m for m, info in machines.items()
         if _machine_identity(info) == _machine_identity(canonical["machine"])),
        describe_machine(canonical["machine"]))}
  os.makedirs(results_dir, exist_ok=True)
  paths = {"markdown": os.path.join(results_dir, "table1.md"),
           "csv": os.path.join(results_dir, "table1.csv"),
           "json": os.path.join(results_dir, "table1.json")}
  paths["plots"] = write_plots(rows, machines, results_dir)
  results = {
      "command": command, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
      "elapsed_s": time.perf_counter() - t_start, "workdir": workdir,
      "config": config.to_dict(), "paper": {"citation": PAPER_CITATION, "table1": [
          {"task": t, "sampling": s, "method": m, "metric": v[0], "value": v[1],
           "ms_per_token": v[2], "speedup": v[3]} for (t, s, m), v in PAPER_TABLE1.items()]},
      "models": {"target": _model_summary(target_cfg), "draft": _model_summary(draft_cfg),
                 "fingerprints": fps},
      "machines": machines, "rows": rows, "parity": parity, "parity_ok": failures == 0,
      "parity_failures": failures, "canonical_loglik": canon_summary,
      "num_sampled_checks": sum(len(p["checks"]) for p in parity if p["sampling"] != "greedy"),
      "computed": [c.key for c, _ in todo],
      "reused": sorted(records.keys() - {c.key for c, _ in todo}),
      "paths": paths,
  }
  markdown = format_markdown(results)
  write_atomic(paths["markdown"], markdown)
  write_csv(rows, machines, paths["csv"])
  write_atomic(paths["json"], json.dumps(results, indent=1, default=float) + "\n")
  return {**results, "markdown": markdown}
