"""The target's own continuations, recorded while it generates: tokens, top-k log-probs, features.

A draft for a real target is trained on what the target does, and the target
is the expensive part on a CPU. So the target runs once: one jitted function
per shard prefills the prompts in chunks and decodes `max_new_tokens` in a
`lax.scan`, and at every position, prompt and generated alike, it keeps

  topk_ids, topk_logp  [B, L, k]  the k most likely next tokens and their exact
                                  log-probabilities (temperature 1, no top-p):
                                  the distillation target at that prefix
  hidden               [B, L, D]  the last block's output before the final norm
                                  (float16): what a feature-conditioned draft reads

beside tokens [B, L] and each row's length (prompt + completion, cut after
eos). Distributions are kept for positions 0 .. length - 2 (each predicts a
token of the row); the rest is padding.

Shard i's prompts are a pure function of (seed, i): kind kinds[i % len(kinds)] (code
prefixes of training-split files, docstring summaries of training-split
definitions as a 1-shot prompt, or the same as a chat turn, or code prefixes in
Table 1's HumanEval chat format, "code_chat") and sampling
setting SETTINGS[(i // len(kinds)) % 2]. A shard is written whole (temporary name,
then rename) and a manifest fingerprints the target, tokenizer and settings,
so a killed job resumes at the first missing shard and another target's set
is refused.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from specsample import corpus as corpus_lib
from specsample import paths
from specsample import utils
from specsample.alignment import data as data_lib
from specsample.decoding import LM
from specsample.decoding import common
from specsample.decoding.sampling import Sampling, sample
from specsample.eval.tasks import docsum, xsum
from specsample.eval.tasks.chat import CHAT_INSTRUCTION, chat, humaneval_prompt
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer

KINDS = ("code", "docsum", "docsum_chat", "code_chat")
SETTINGS = {"greedy": Sampling(temperature=0.0),
            "nucleus": Sampling(temperature=0.8, top_p=0.95)}
CHUNK = 64  # prefill tokens per forward: bounds the [B, CHUNK, V] logits


@functools.partial(jax.jit, static_argnames=("config", "sampling", "new_tokens", "k"))
def _record(config: tr.TransformerConfig, params, prompts_BP: jax.Array, prompt_len_B: jax.Array,
            key: jax.Array, *, sampling: Sampling, new_tokens: int, k: int):
  """Prefill + `new_tokens` decode steps, keeping top-k log-probs and features everywhere."""
  B, P = prompts_BP.shape
  L = P + new_tokens
  D = config.d_model
  tokens_BL = common.init_buffer(prompts_BP, L)
  ids_BLk = jnp.zeros((B, L, k), jnp.int32)
  logp_BLk = jnp.zeros((B, L, k), jnp.float32)
  hidden_BLD = jnp.zeros((B, L, D), jnp.float16)

  def observe(logits_BTV, hidden_BTD):
    logp_BTk, ids_BTk = jax.lax.top_k(jax.nn.log_softmax(logits_BTV, axis=-1), k)
    return ids_BTk, logp_BTk, hidden_BTD.astype(jnp.float16)

  cache = tr.init_cache(config, B, L)
  for start in range(0, P, CHUNK):  # positions >= length - 1 are rewritten by decode below
    logits, cache, hidden = tr.forward_with_hidden(config, params, prompts_BP[:, start:start + CHUNK], cache)
    ids, logp, feats = observe(logits, hidden)
    ids_BLk = ids_BLk.at[:, start:start + ids.shape[1]].set(ids)
    logp_BLk = logp_BLk.at[:, start:start + ids.shape[1]].set(logp)
    hidden_BLD = hidden_BLD.at[:, start:start + ids.shape[1]].set(feats)
  cache = cache.with_lengths(prompt_len_B - 1)

  def step(carry, step_key):
    tokens_BL, ids_BLk, logp_BLk, hidden_BLD, cache = carry
    pos_B = cache.lengths
    logits, cache, hidden = tr.forward_with_hidden(
        config, params, common.read_rows(tokens_BL, pos_B, 1), cache)
    ids, logp, feats = observe(logits, hidden)
    next_B = sample(step_key, sampling.probs(logits[:, 0]), greedy=sampling.greedy)
    return (common.write_rows(tokens_BL, next_B[:, None], pos_B + 1),
            common.write_rows(ids_BLk, ids, pos_B), common.write_rows(logp_BLk, logp, pos_B),
            common.write_rows(hidden_BLD, feats, pos_B), cache), None

  carry = (tokens_BL, ids_BLk, logp_BLk, hidden_BLD, cache)
  (tokens_BL, ids_BLk, logp_BLk, hidden_BLD, _), _ = jax.lax.scan(
      step, carry, jax.random.split(key, new_tokens))
  return tokens_BL, ids_BLk, logp_BLk.astype(jnp.float16), hidden_BLD


def lengths_after_eos(tokens_BL: np.ndarray, prompt_len_B: np.ndarray, new_tokens: int,
                      eos_id: int | None) -> np.ndarray:
  """Each row's length: prompt + completion, the completion cut just after its first eos."""
  out = (prompt_len_B + new_tokens).astype(np.int32)
  if eos_id is None:
    return out
  for b in range(len(out)):
    hits = np.nonzero(tokens_BL[b, prompt_len_B[b]:out[b]] == eos_id)[0]
    if len(hits):
      out[b] = prompt_len_B[b] + hits[0] + 1
  return out


def code_prompts(files: Sequence[corpus_lib.SourceFile], tokenizer, num: int, min_tokens: int,
                 max_tokens: int, seed: Sequence[int]) -> list[list[int]]:
  """Prefixes of training-split files cut at a line start (alignment.data.sample_prompts)."""
  prompts = data_lib.sample_prompts(files, tokenizer, num, min_tokens, max_tokens, seed)
  bos = getattr(tokenizer, "add_bos_token", True)
  return [p if bos or p[:1] != [tokenizer.bos_id] else p[1:] for p in prompts]


def code_chat_prompts(files: Sequence[corpus_lib.SourceFile], tokenizer, num: int,
                      min_tokens: int, max_tokens: int, seed: Sequence[int]) -> list[list[int]]:
  """Code prefixes in Table 1's HumanEval chat format (chat.humaneval_prompt: the prefix
  in the user turn and again after the assistant's opening fence), at most max_tokens
  each. The format holds the prefix twice, so prefixes get about half the budget."""
  half = max(min_tokens, (max_tokens - 64) // 2)
  add_bos = getattr(tokenizer, "add_bos_token", True)
  out, attempt = [], 0
  while len(out) < num:
    for prefix in code_prompts(files, tokenizer, num, min_tokens, half, (*seed, attempt)):
      body = prefix[1:] if prefix[:1] == [tokenizer.bos_id] else prefix
      text = humaneval_prompt(tokenizer, tokenizer.decode(body))
      ids = tokenizer.encode(text, add_bos=add_bos)
      if len(ids) <= max_tokens and len(out) < num:
        out.append(ids)
    attempt += 1
    if attempt > 100:
      raise ValueError(f"config.max_prompt_tokens={max_tokens} leaves no room for code_chat "
                       "prompts (chat template + the prefix twice); raise it")
  return out


def summary_prompts(items: Sequence[dict], tokenizer, num: int, max_tokens: int, as_chat: bool,
                    seed: Sequence[int]) -> list[list[int]]:
  """Docstring-summary prompts from training-split items: 1-shot (the XSum path's
  format, the shot another training item) or a chat turn; at most max_tokens each."""
  rng = np.random.default_rng(list(seed))
  out = []
  while len(out) < num:
    item, shot = (items[int(i)] for i in rng.choice(len(items), 2, replace=False))
    text = (chat(tokenizer, CHAT_INSTRUCTION + item["document"]) if as_chat else
            xsum.build_prompt(item["document"], {"document": shot["document"], "summary": shot["summary"]}))
    ids = tokenizer.encode(text, add_bos=getattr(tokenizer, "add_bos_token", True))
    if len(ids) <= max_tokens:
      out.append(ids)
  return out


def manifest_for(config, target: LM, tokenizer) -> dict:
  """What identifies a recorded set: target, tokenizer and every setting."""
  return {"target": data_lib.params_fingerprint(target), "tokenizer": tokenizer.fingerprint,
          "kinds": list(config.kinds), "settings": {n: repr(s) for n, s in SETTINGS.items()},
          **{k: config[k] for k in ("seed", "batch_size", "min_prompt_tokens", "max_prompt_tokens",
                                    "max_new_tokens", "topk")}}


def shard_path(data_dir: str, index: int) -> str:
  return os.path.join(data_dir, f"shard-{index:05d}.npz")


def check_config(config) -> None:
  """ValueError naming the first bad field; nothing is loaded."""
  for name in ("num_shards", "batch_size", "min_prompt_tokens", "max_prompt_tokens",
               "max_new_tokens", "topk"):
    if not utils.is_positive_int(config[name]):
      raise ValueError(f"config.{name} must be an int >= 1, got {config[name]!r}")
  if config.min_prompt_tokens > config.max_prompt_tokens:
    raise ValueError(f"config.min_prompt_tokens={config.min_prompt_tokens} exceeds "
                     f"max_prompt_tokens={config.max_prompt_tokens}")
  if not config.kinds or set(config.kinds) - set(KINDS):
    raise ValueError(f"config.kinds must be a non-empty tuple of {KINDS}, got {tuple(config.kinds)!r}")


def build(config, target: LM, tokenizer, data_dir: str,
          train_files: Sequence[corpus_lib.SourceFile]) -> list[str]:
  """Records the missing shards under data_dir; returns every shard's path."""
  check_config(config)
  manifest = manifest_for(config, target, tokenizer)
  data_lib.check_manifest(data_dir, manifest)
  utils.write_atomic({os.path.join(data_dir, "manifest.json"): json.dumps(manifest, indent=2)})
  todo = [i for i in range(config.num_shards) if not paths.exists(shard_path(data_dir, i))]
  items = None
  for index in tqdm(todo, desc="recording the target", initial=config.num_shards - len(todo),
                    total=config.num_shards):
    kinds = tuple(config.kinds)
    kind, setting = kinds[index % len(kinds)], list(SETTINGS)[(index // len(kinds)) % len(SETTINGS)]
    seed = (config.seed, index)
    if kind in ("code", "code_chat"):
      make = code_prompts if kind == "code" else code_chat_prompts
      prompts = make(train_files, tokenizer, config.batch_size, config.min_prompt_tokens,
                     config.max_prompt_tokens, seed)
    else:
      if items is None:
        items, _ = docsum.build_items(train_files, lambda text: len(tokenizer.encode(text)),
                                      max_doc_tokens=config.max_prompt_tokens // 3)
      prompts = summary_prompts(items, tokenizer, config.batch_size, config.max_prompt_tokens,
                                kind == "docsum_chat", seed)
    record_shard(config, target, tokenizer, prompts, setting, seed, shard_path(data_dir, index),
                 {"kind": kind, "setting": setting})
  return [shard_path(data_dir, i) for i in range(config.num_shards)]


def record_shard(config, target: LM, tokenizer, prompts: list[list[int]], setting: str,
                 seed: Sequence[int], path: str, info: dict[str, Any]) -> None:
  """Runs the target on one batch of prompts and writes the shard (whole or not at all)."""
  # One compiled shape per padded prompt length (a multiple of CHUNK).
  P = -(-config.max_prompt_tokens // CHUNK) * CHUNK
  prompts_BP = np.zeros((len(prompts), P), np.int32)
  prompt_len = np.array([len(p) for p in prompts], np.int32)
  for b, p in enumerate(prompts):
    prompts_BP[b, :len(p)] = p
  key = jax.random.key(int(np.random.default_rng(list(seed)).integers(1 << 31)))
  out = jax.device_get(_record(target.config, target.params, prompts_BP, prompt_len, key,
                               sampling=SETTINGS[setting], new_tokens=config.max_new_tokens,
                               k=config.topk))
  tokens, ids, logp, hidden = out  # row b: its prompt, then its completion, then padding
  length = lengths_after_eos(tokens, prompt_len, config.max_new_tokens, tokenizer.eos_id)
  with paths.local_file(path) as tmp:
    np.savez(tmp, tokens=tokens, prompt_len=prompt_len, length=length,
           topk_ids=ids.astype(np.uint16 if target.config.vocab_size <= 1 << 16 else np.int32),
             topk_logp=logp, hidden=hidden, info=json.dumps(info))


def run(config) -> str:
  """Loads the target, its tokenizer and the corpus's training split; records the set."""
  check_config(config)
  tokenizer_path = config.tokenizer or config.target_dir
  tokenizer = Tokenizer.load(tokenizer_path)
  target = model_io.load_lm(config.target_dir)
  tokenizer.check_model("target", target, tokenizer_path, f" at {config.target_dir}")
  corpus = corpus_lib.build_corpus(root=config.corpus_root or None)
  build(config, target, tokenizer, config.data_dir, corpus.train)
  return config.data_dir
