"""The distillation set: the target's own continuations of corpus prompts.

Prompts are prefixes of training-split files (never validation, never files
that overlap HumanEval: the corpus excludes those), cut at a line start and
kept to their last `prompt_len` tokens, `prompt_len` uniform in
[min_prompt_tokens, max_prompt_tokens]. The target continues each one with the
project's batched autoregressive loop under every sampling setting.

On disk (`data_dir`):
  manifest.json            what made the set: target and tokenizer fingerprints
                           and the settings; another target is a clear error
  shard-<setting>-<i>.parquet  one batch of rows: prompt, completion, setting

A shard is written to a temporary name and renamed, so a killed run resumes at
the first missing shard with no row lost or duplicated. Shard i's prompts are
a pure function of (seed, setting, i).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from specsample import corpus as corpus_lib
from specsample import paths
from specsample import utils
from specsample.decoding import LM, Sampling, generate
from specsample.models.lm import params_fingerprint  # the target's identity (re-exported)
from specsample.tokenizer import Tokenizer

# Sampling settings of the distillation set: greedy plus two temperatures, as
# in Goel et al., who sample the target at several temperatures.
SETTINGS = {"greedy": Sampling(temperature=0.0), "t0.6": Sampling(temperature=0.6),
            "t1.0": Sampling(temperature=1.0)}


def check_settings(config) -> None:
  """Raises ValueError naming a bad `config.data` field. No model needed."""
  d = config.data
  unknown = [s for s in d.settings if s not in SETTINGS]
  if unknown or not d.settings:
    raise ValueError(f"data.settings must be a non-empty tuple of {sorted(SETTINGS)}, "
                     f"got {tuple(d.settings)!r}")
  for name in ("batches_per_setting", "batch_size", "max_new_tokens", "min_prompt_tokens",
               "max_prompt_tokens"):
    value = d[name]
    if not utils.is_positive_int(value):
      raise ValueError(f"config.data.{name} must be an int >= 1, got {value!r}")
  if d.min_prompt_tokens > d.max_prompt_tokens:
    raise ValueError(f"config.data.min_prompt_tokens={d.min_prompt_tokens} exceeds "
                     f"max_prompt_tokens={d.max_prompt_tokens}")


def sample_prompts(files: Sequence[corpus_lib.SourceFile], tokenizer: Tokenizer, num: int,
                   min_tokens: int, max_tokens: int, seed: Sequence[int]) -> list[list[int]]:
  """`num` prompts: bos + a file's text up to a random line start, last N tokens kept.

  Raises:
    ValueError: when the files cannot give prompts of at least `min_tokens`.
  """
  rng = np.random.default_rng(list(seed))
  prompts, tries = [], 0
  while len(prompts) < num:
    tries += 1
    if tries > 50 * num + 1000:
      raise ValueError(f"prompt source has too little text: after {tries} tries only "
                       f"{len(prompts)} of {num} prompts reach min_prompt_tokens={min_tokens}")
    text = files[int(rng.integers(len(files)))].text
    starts = [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    if not starts:
      continue
    cut = starts[int(rng.integers(len(starts)))]
    want = int(rng.integers(min_tokens, max_tokens + 1))
    ids = tokenizer.encode(text[max(0, cut - 8 * want):cut], add_bos=True)
    if len(ids) >= min_tokens:
      prompts.append(ids[-want:])
  return prompts


def manifest_for(config, target: LM, tokenizer: Tokenizer) -> dict:
  """What identifies a distillation set: target, tokenizer, settings."""
  d = config.data
  return {"target": params_fingerprint(target), "tokenizer": tokenizer.fingerprint,
          "settings": list(d.settings), "batches_per_setting": d.batches_per_setting,
          "batch_size": d.batch_size, "max_new_tokens": d.max_new_tokens,
          "min_prompt_tokens": d.min_prompt_tokens, "max_prompt_tokens": d.max_prompt_tokens,
          "seed": config.seed}


def check_manifest(data_dir: str, expected: dict) -> None:
  """Raises ValueError when `data_dir` holds a set made by something else."""
  path = os.path.join(data_dir, "manifest.json")
  if not paths.exists(path):
    return
  found = json.loads(paths.read_text(path))
  diff = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
  if diff:
    what = ", ".join(f"{k}: {found.get(k)!r} there, {expected.get(k)!r} now" for k in diff)
    raise ValueError(f"distillation set {data_dir} was made by another target, tokenizer or "
                     f"settings ({what}); use a new data_dir")


def _shard_path(data_dir: str, setting: str, index: int) -> str:
  return os.path.join(data_dir, f"shard-{setting}-{index:05d}.parquet")


def build(config, target: LM, tokenizer: Tokenizer, data_dir: str,
          train_files: Sequence[corpus_lib.SourceFile]) -> list[str]:
  """Generates the missing shards of the distillation set; returns all shard paths."""
  import datasets  # slow import, only needed here
  check_settings(config)
  d = config.data
  if not train_files:
    raise ValueError("the prompt source (corpus training split) is empty")
  manifest = manifest_for(config, target, tokenizer)
  check_manifest(data_dir, manifest)
  utils.write_atomic({os.path.join(data_dir, "manifest.json"): json.dumps(manifest, indent=2)})
  jobs = [(s, i) for s in d.settings for i in range(d.batches_per_setting)]
  todo = [(s, i) for s, i in jobs if not paths.exists(_shard_path(data_dir, s, i))]
  for setting, index in tqdm(todo, desc="distillation set", initial=len(jobs) - len(todo),
                             total=len(jobs)):
    seed = (config.seed, list(SETTINGS).index(setting), index)
    prompts = sample_prompts(train_files, tokenizer, d.batch_size, d.min_prompt_tokens,
                             d.max_prompt_tokens, seed)
    out = generate(target, prompts, method="autoregressive", sampling=SETTINGS[setting],
                   max_new_tokens=d.max_new_tokens, eos_id=tokenizer.eos_id,
                   seed=int(np.random.default_rng(list(seed)).integers(1 << 31)), pad_to=d.max_prompt_tokens)
    rows = {"prompt": prompts, "completion": out.tokens, "setting": [setting] * len(prompts)}
    with paths.local_file(_shard_path(data_dir, setting, index)) as tmp:  # whole or absent
      datasets.Dataset.from_dict(rows).to_parquet(tmp)
  return [_shard_path(data_dir, s, i) for s, i in jobs]


class DistillBatches:
  """Fixed-shape training batches over the distillation set, resumable exactly.

  Each row is the LAST seq_len + 1 tokens of prompt + completion (the
  completion whole, with as much of its prompt as fits), right-padded; batch
  `step` is a pure function of (seed, step). `weights` marks the positions whose
  next token is real: all of them (`loss_on="all"`) or only those predicting
  the target's completion (`loss_on="completion"`). With a teacher cache
  (`attach_teacher`), batches also carry the target's top-k log-probabilities.
  """

  def __init__(self, rows: Sequence[dict[str, Any]], seq_len: int, batch_size: int,
               seed: int, loss_on: str = "all"):
    if loss_on not in ("all", "completion"):
      raise ValueError(f"loss_on must be 'all' or 'completion', got {loss_on!r}")
    if len(rows) < batch_size:
      raise ValueError(f"distillation set has {len(rows)} rows, fewer than batch_size={batch_size}")
    n = len(rows)
    self.tokens = np.zeros((n, seq_len + 1), np.int32)
    self.mask = np.zeros((n, seq_len), np.float32)
    for r, row in enumerate(rows):
      seq = list(row["prompt"]) + list(row["completion"])
      cut = max(0, len(seq) - (seq_len + 1))
      seq = seq[cut:]
      self.tokens[r, :len(seq)] = seq
      first = 0 if loss_on == "all" else max(len(row["prompt"]) - cut - 1, 0)
      self.mask[r, first:len(seq) - 1] = 1.0
    self.batch_size, self.seed = batch_size, seed
    self.steps_per_epoch = n // batch_size
    self.teacher: dict[str, np.ndarray] = {}

  def attach_teacher(self, topk_ids: np.ndarray, topk_logq: np.ndarray) -> None:
    """The target's top-k ids and log-probs at every position: [N, L, k] each."""
    self.teacher = {"topk_ids": topk_ids, "topk_logq": topk_logq}

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    epoch, index = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))
    rows = np.sort(order[index * self.batch_size:(index + 1) * self.batch_size])
    batch = {"inputs": self.tokens[rows, :-1], "targets": self.tokens[rows, 1:],
             "weights": self.mask[rows]}
    batch.update({k: v[rows].astype(np.int32 if k == "topk_ids" else np.float32)
                  for k, v in self.teacher.items()})
    return batch


def load_rows(data_dir: str, expected_manifest: dict | None = None) -> list[dict]:
  """Every row of a built set (in shard order), checked against a manifest."""
  import datasets
  if expected_manifest is not None:
    check_manifest(data_dir, expected_manifest)
  shards = sorted(f for f in paths.listdir(data_dir) if f.endswith(".parquet"))
  if not shards:
    raise ValueError(f"no distillation shards in {data_dir}")
  table = datasets.Dataset.from_parquet([os.path.join(data_dir, s) for s in shards])
  return table.to_list()
