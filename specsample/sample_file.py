"""Sampling prompts from a .txt or .jsonl file into JSONL with completions and statistics.

Every setting, the mesh and both files are checked before any model is loaded
or compiled (configs/sample.py has the fields and formats). With a mesh every
process of a multi-host run samples every row; process 0 alone writes the
output, atomically.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from specsample import paths
from specsample import placement
from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.models import feature_draft as fd
from specsample.models import io as model_io
from specsample.tokenizer import Tokenizer
from specsample.utils import is_int, round_up, write_atomic

INPUT_SUFFIXES = (".txt", ".jsonl")
STAT_KEYS = ("target_calls", "drafted", "accepted", "new_tokens", "tokens_per_call",
             "acceptance_rate")


def check_config(config) -> None:
  """Raises ValueError / FileNotFoundError naming the field and what it allows. No I/O beyond stat."""
  if config.method not in api.METHODS:
    raise ValueError(f"method must be one of {api.METHODS}, got {config.method!r}")
  if not is_int(config.num_draft) or config.num_draft < 1:
    raise ValueError(f"num_draft (K, draft tokens per target call) must be an int >= 1, "
                     f"got {config.num_draft!r}")
  if isinstance(config.temperature, bool) or not isinstance(config.temperature, (int, float)) \
      or not config.temperature >= 0:
    raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {config.temperature!r}")
  if not is_int(config.top_k) or config.top_k < 0:
    raise ValueError(f"top_k must be an int >= 0 (0 = off), got {config.top_k!r}")
  if isinstance(config.top_p, bool) or not isinstance(config.top_p, (int, float)) \
      or not 0 < config.top_p <= 1:
    raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {config.top_p!r}")
  for name, low in (("max_new_tokens", 1), ("batch_size", 1), ("pad_to", 1), ("limit", 0)):
    if not is_int(config[name]) or config[name] < low:
      raise ValueError(f"{name} must be an int >= {low}, got {config[name]!r}")
  if not is_int(config.seed):
    raise ValueError(f"seed must be an int, got {config.seed!r}")
  if config.eos_id is not None and (not is_int(config.eos_id) or config.eos_id < 0):
    raise ValueError(f"eos_id must be None (never stop early) or a token id >= 0, got "
                     f"{config.eos_id!r}")

  if not config.input:
    raise ValueError(f"input is required: --config.input=<file> with one of {INPUT_SUFFIXES}")
  if os.path.splitext(config.input)[1] not in INPUT_SUFFIXES:
    raise ValueError(f"input must end in one of {INPUT_SUFFIXES} (text: one prompt per line; "
                     f"JSONL: a 'prompt' field), got {config.input!r}")
  if not paths.isfile(config.input):
    raise FileNotFoundError(f"input: no such file {config.input!r}")
  if not config.output:
    raise ValueError("output is required: --config.output=<file>.jsonl")
  out_dir = os.path.dirname(paths.absolute(config.output))
  if paths.is_remote(out_dir):  # a bucket has no folders to create: probe a write instead
    paths.check_writable(out_dir, "output")
  elif not os.path.isdir(out_dir):
    raise FileNotFoundError(f"output: folder {out_dir!r} does not exist (output={config.output!r}); "
                            "create it first")
  if paths.isdir(config.output):
    raise ValueError(f"output must be a file path, got the folder {config.output!r}")
  if paths.absolute(config.output) == paths.absolute(config.input):
    raise ValueError(f"output must differ from input, both are {config.input!r}")
  if not paths.isfile(config.tokenizer):
    raise FileNotFoundError(f"tokenizer: no such file {config.tokenizer!r}")
  models = ("target_dir", "draft_dir") if config.method == "speculative" else ("target_dir",)
  for name in models:
    model_io.check_model_dir(config[name], name)
  if speculative_on_mesh(config) and fd.is_feature_draft(config.draft_dir):
    raise ValueError(f"draft_dir: {config.draft_dir} is a feature draft, which runs on one "
                     "device: leave every mesh axis at 1")


def speculative_on_mesh(config) -> bool:
  """Speculative sampling with a mesh of more than one device asked for."""
  return config.method == "speculative" and any(
      config.mesh[axis] != 1 for axis in ("data", "fsdp", "tensor"))


def read_prompts(path: str, limit: int = 0) -> list[dict]:
  """Rows {"prompt": str, ...} from a .txt (one prompt per line) or .jsonl file.

  Raises:
    ValueError: a JSONL line that is not an object with a string "prompt"
      (the message gives the line number), or a file with no prompts.
  """
  rows = []
  with paths.open_file(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip("\r\n") if path.endswith(".txt") else line.strip()
      if not line:
        continue  # blank lines separate nothing
      if path.endswith(".txt"):
        rows.append({"prompt": line})
      else:
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"input {path}:{line_no}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
          raise ValueError(f"input {path}:{line_no}: each JSONL line must be an object with a "
                           "string 'prompt' field")
        rows.append(obj)
      if limit and len(rows) == limit:
        break
  if not rows:
    raise ValueError(f"input {path} holds no prompts")
  return rows


def _model_configs(config) -> dict:
  """{field: TransformerConfig} of the models used, from config.json (no params)."""
  models = ("target_dir", "draft_dir") if config.method == "speculative" else ("target_dir",)
  out = {}
  for name in models:
    if name == "draft_dir" and fd.is_feature_draft(config[name]):
      out[name] = model_io.load_draft_config(config[name])[0]  # its block: float32, one device
      continue
    model_cfg = model_io.load_config(config[name])[0]
    if config.param_dtype:
      try:
        model_cfg = model_cfg.replace(param_dtype=config.param_dtype).validate()
      except ValueError as e:
        raise ValueError(f"param_dtype: {e}") from e
    out[name] = model_cfg
  return out


def _check_lengths(config, token_prompts: list[list[int]]) -> None:
  """Rejects prompts too long for the models' caches, from config.json alone (no params)."""
  max_seq_len = min(c.max_seq_len for c in _model_configs(config).values())
  for i, tokens in enumerate(token_prompts):
    # The buffer generate allocates for this prompt.
    need = api.buffer_len(round_up(len(tokens), config.pad_to), config.max_new_tokens,
                          config.num_draft, config.method, config.pad_to)
    if need > max_seq_len:
      raise ValueError(f"prompt {i} has {len(tokens)} tokens: with max_new_tokens="
                       f"{config.max_new_tokens} it needs {need} cache positions, above the "
                       f"models' max_seq_len={max_seq_len}; lower max_new_tokens or shorten it")


def run(config, start: Callable[[], None] = lambda: None) -> list[dict]:
  """Checks everything, samples every prompt, writes config.output; returns the rows.

  With a mesh (config.mesh), every process of a multi-host run calls this with
  the same config, gets every row, and process 0 alone writes the file.

  Args:
    config: a configs/sample.py config.
    start: called once the config is checked, before any JAX work (scripts
      start jax.distributed there: cli.start_jax).
  """
  check_config(config)
  start()
  mesh = placement.mesh_from_config(config, [config.batch_size])  # None: one device
  rows = read_prompts(config.input, config.limit)
  tokenizer = Tokenizer.load(config.tokenizer)
  if config.eos_id is not None and config.eos_id >= tokenizer.vocab_size:
    raise ValueError(f"eos_id must be None or in [0, {tokenizer.vocab_size}), got {config.eos_id}")
  token_prompts = [tokenizer.encode(r["prompt"], add_bos=config.add_bos) for r in rows]
  for i, tokens in enumerate(token_prompts):
    if not tokens:
      raise ValueError(f"prompt {i} is empty and add_bos=False: it has no token to start from")
  _check_lengths(config, token_prompts)
  sampling = Sampling(config.temperature, config.top_k, config.top_p)
  speculative = config.method == "speculative"

  # Only now: load (and then compile).
  target = placement.load_lm_from_config(config, "target_dir", mesh)
  draft = None
  if speculative and fd.is_feature_draft(config.draft_dir):
    # Checked against the target; a param_dtype override changes the target's
    # fingerprint, so the feature draft's target identity is then not compared.
    draft = model_io.load_draft(config.draft_dir, target, identity=not config.param_dtype)
  elif speculative:
    draft = placement.load_lm_from_config(config, "draft_dir", mesh)
  if target.config.vocab_size != tokenizer.vocab_size:
    raise ValueError(f"tokenizer: vocab {tokenizer.vocab_size} != target vocab_size "
                     f"{target.config.vocab_size}")
  decode = dict(draft=draft, method=config.method, num_draft=config.num_draft,
                sampling=sampling, max_new_tokens=config.max_new_tokens, eos_id=config.eos_id,
                pad_to=config.pad_to, **placement.rules_from_config(config, mesh))
  is_main = jax.process_index() == 0
  out_rows = []
  starts = range(0, len(rows), config.batch_size)
  for batch_index, start in enumerate(tqdm(starts, desc="sample", unit="batch",
                                           disable=not is_main)):
    batch = token_prompts[start:start + config.batch_size]
    num_rows = len(batch)
    seed = config.seed + batch_index
    if mesh is not None:
      # Every batch the same size, divisible by the mesh's batch axes (and one
      # compiled loop): pad with copies of the last prompt, drop their rows.
      batch = batch + [batch[-1]] * (config.batch_size - len(batch))
    out = api.generate(target, batch, seed=seed, **decode)
    for b, tokens in enumerate(out.tokens[:num_rows]):
      row = dict(rows[start + b])
      row.update(prompt=rows[start + b]["prompt"], completion=tokenizer.decode(tokens),
                 method=config.method, num_draft=config.num_draft if speculative else None,
                 seed=seed, tokens=tokens)
      row.update({k: np.asarray(out.stats[k][b]).item() for k in STAT_KEYS})
      out_rows.append(row)
  if is_main:
    write_atomic({config.output: "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                          for row in out_rows)})
  return out_rows
