"""The Table 1 grid: which cells a reproduce config asks for, and the config's checks."""

from __future__ import annotations

import dataclasses
import os

from specsample.decoding import api, calibrate
from specsample.decoding.sampling import Sampling
from specsample.eval.tasks import chat, humaneval
from specsample.models import feature_draft as fd
from specsample.models import gguf
from specsample.models import io as model_io
from specsample.utils import is_int, is_positive_int

TASKS = ("humaneval", "xsum")
SAMPLINGS = ("greedy", "nucleus")
METHODS = api.METHODS
PROMPT_FORMATS = ("raw", "chat")
AUTO = "auto"  # Cell.num_draft of the cells where the loop picks K (num_draft="auto")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One unit of work. kind 'generate' decodes items; 'canonical' scores solutions.

  Attributes:
    kind: 'generate' or 'canonical' (HumanEval canonical-solution log-likelihood).
    task: 'humaneval' or 'xsum'.
    sampling: 'greedy' or 'nucleus' ('' for canonical).
    method: 'autoregressive' or 'speculative' ('' for canonical).
    num_draft: K for speculative, AUTO where the loop picks K, 0 otherwise.
    batch_size: prompts per generate call.
    num_samples: samples per problem / article (1 for greedy).
    role: 'main' (K = config.num_draft, every batch size) or 'sweep' (batch 1).
  """
  kind: str
  task: str
  sampling: str = ""
  method: str = ""
  num_draft: int | str = 0
  batch_size: int = 1
  num_samples: int = 1
  role: str = "main"

  @property
  def key(self) -> str:
    """File-name-safe identifier, e.g. humaneval-nucleus-speculative-K4-B1-n4 (Kauto: auto K)."""
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
  variants = [("autoregressive", 0), ("speculative", config.num_draft)]
  if config.auto:
    variants.append(("speculative", AUTO))
  for task in unique(enabled_tasks(config)):
    task_cfg = config[task]
    for sampling in unique(config.samplings):
      n = 1 if sampling == "greedy" else task_cfg.num_samples
      for batch in unique(config.batch_sizes):
        for method, k in variants:
          (main if batch == 1 else batched).append(
              Cell("generate", task, sampling, method, k, batch, n, "main"))
      if task in config.sweep_tasks:
        n_sweep = 1 if sampling == "greedy" else task_cfg.sweep_samples
        for k in unique(config.k_sweep):
          if k != config.num_draft:  # the main batch-1 cell is the sweep's point at K
            sweep.append(Cell("generate", task, sampling, "speculative", k, 1, n_sweep, "sweep"))
  canonical = [Cell("canonical", "humaneval")] if "humaneval" in config.tasks else []
  return main + canonical + batched + sweep


def code_stops(prompt_format: str) -> tuple[str, ...]:
  """Where a HumanEval completion is cut: the stop sequences, and in chat the closing fence."""
  return chat.CODE_STOPS if prompt_format == "chat" else humaneval.STOP_SEQUENCES


def auto_num_draft(config):
  """What an auto cell passes as num_draft: "auto" (K in 0..8), or config.auto_choices."""
  return tuple(config.auto_choices) or AUTO


def largest_k(config) -> int:
  """The largest K any cell can run (sizes the caches): auto's set reaches 8 by default."""
  return max([config.num_draft, *config.k_sweep]
             + ([calibrate.max_draft(auto_num_draft(config))] if config.auto else []))


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
  if not isinstance(config.auto, bool):
    bad("auto", "True or False (a num_draft='auto' cell beside every K cell)", config.auto)
  if config.auto_choices != ():
    try:  # the K-set rule of generate's num_draft, worded for this field
      calibrate.draft_choices(tuple(config.auto_choices) if _int_seq(config.auto_choices) else None)
    except ValueError:
      bad("auto_choices", "() (auto over K = 0..8) or distinct ints >= 0 with one >= 1",
          config.auto_choices)
  if config.prompt_format not in PROMPT_FORMATS:
    bad("prompt_format", f"one of {PROMPT_FORMATS} ('chat': the tokenizer's chat template)",
        config.prompt_format)
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
  if fd.is_feature_draft(config.target_dir):
    bad("target_dir", "a model (a feature draft is a draft: config.draft_dir)", config.target_dir)
  if not config.tokenizer:  # the target's own: a GGUF file's, or a folder's tokenizer file
    if not (gguf.is_gguf(config.target_dir) or any(
        os.path.isfile(os.path.join(config.target_dir, name))
        for name in ("tokenizer.json", "tokenizer.model"))):
      bad("tokenizer", f"a tokenizer path ('' = the target's, but {config.target_dir} holds "
          "no tokenizer.json or tokenizer.model)", config.tokenizer)
  elif not os.path.exists(config.tokenizer):
    raise FileNotFoundError(f"config.tokenizer: {config.tokenizer} does not exist")


def tokenizer_path(config) -> str:
  """config.tokenizer, or ('') the target's own tokenizer."""
  return config.tokenizer or config.target_dir
