"""The Table 1 grid: which cells a reproduce config asks for, and the config's checks."""

from __future__ import annotations

import dataclasses
import os

from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.models import io as model_io
from specsample.utils import is_int, is_positive_int

TASKS = ("humaneval", "xsum")
SAMPLINGS = ("greedy", "nucleus")
METHODS = api.METHODS


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


def enabled_tasks(config) -> list[str]:
  """config.tasks; XSum runs on the docstring stand-in when config.xsum.path is ''."""
  return list(config.tasks)


def plan_cells(config) -> list[Cell]:
  """Every cell the config asks for, in the order they are computed (cheap, pure).

  Order: batch-1 main cells, the canonical log-likelihood, the batched rows,
  then the K sweep, so an interrupted run has the paper's rows first.
  """
  main, batched, sweep = [], [], []
  unique = lambda values: list(dict.fromkeys(values))  # repeated entries run once
  for task in unique(enabled_tasks(config)):
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


def sampling_for(config, task: str, sampling: str) -> Sampling:
  if sampling == "greedy":
    return Sampling(temperature=0.0)
  return Sampling(temperature=float(config[task].temperature), top_p=float(config[task].top_p))


def _int_seq(value) -> bool:
  return isinstance(value, (tuple, list)) and all(is_int(v) for v in value)


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
  if not is_positive_int(k):
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
      if not is_positive_int(v):
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
    bad("xsum.path", "an existing JSON/JSONL/Parquet file or folder ('' = the docstring "
        "summarization stand-in)",
        config.xsum.path)
  for field in ("target_dir", "draft_dir"):
    model_io.check_model_dir(config[field], field)
  if not os.path.exists(config.tokenizer):
    raise FileNotFoundError(f"config.tokenizer: {config.tokenizer} does not exist")
