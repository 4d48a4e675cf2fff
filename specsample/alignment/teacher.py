"""The frozen target's distributions over the distillation set, cached as top-k.

On this CPU the target's forward costs ~1.7x the draft's forward and backward
together, and the target is frozen: computing it once and sharing it across
the four losses (and every epoch) cuts a fine-tuning run's time ~2.7x.

A position's target distribution q is kept as its k most likely tokens with
their exact log-probabilities; the rest of the vocabulary is one "tail"
category of mass 1 - sum(top k). The losses then compare the draft and target
on these k + 1 categories (`coarsen`). Coarsening can only lower a divergence
(data processing inequality) and is exact on the top-k tokens, which include
the argmax (greedy) and, where the target is confident, the whole nucleus.
`teacher_topk = 0` in configs/distill.py recomputes the full q every step instead.
"""

from __future__ import annotations

import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from specsample import paths
from specsample.alignment import data as data_lib
from specsample.decoding import LM
from specsample.models import transformer as tr


@functools.partial(jax.jit, static_argnames=("config", "k"))
def _topk(config: tr.TransformerConfig, params, tokens_BL: jax.Array, k: int):
  log_q_BLV = jax.nn.log_softmax(tr.forward(config, params, tokens_BL)[0], axis=-1)
  logq_BLk, ids_BLk = jax.lax.top_k(log_q_BLV, k)
  return ids_BLk, logq_BLk


def topk_cache(target: LM, inputs_NL: np.ndarray, k: int, cache_dir: str,
               batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """([N, L, k] uint16/int32 ids, [N, L, k] float32 log q) of the target at every input position.

  Cached in `cache_dir` under a key of the target's identity, the inputs and k
  (written to a temporary name and renamed: a killed run never leaves half a cache).
  """
  key = hashlib.sha256(data_lib.params_fingerprint(target).encode() + inputs_NL.tobytes()
                       + str(k).encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"teacher-top{k}-{key}.npz")
  if paths.exists(path):
    with paths.open_file(path, "rb") as raw, np.load(raw) as f:
      return f["ids"], f["logq"]
  ids_dtype = np.uint16 if target.config.vocab_size <= 1 << 16 else np.int32
  n = len(inputs_NL)
  ids = np.zeros(inputs_NL.shape + (k,), ids_dtype)
  logq = np.zeros(inputs_NL.shape + (k,), np.float32)
  for start in tqdm(range(0, n, batch), desc=f"target top-{k}"):
    chunk = inputs_NL[start:start + batch]
    padded = np.zeros((batch,) + chunk.shape[1:], np.int32)  # one compiled shape
    padded[:len(chunk)] = chunk
    chunk_ids, chunk_logq = jax.device_get(_topk(target.config, target.params, padded, k))
    ids[start:start + len(chunk)] = chunk_ids[:len(chunk)]
    logq[start:start + len(chunk)] = chunk_logq[:len(chunk)]
  with paths.local_file(path) as tmp:
    np.savez(tmp, ids=ids, logq=logq)
  return ids, logq


def coarsen(draft_logits_BTV: jax.Array, topk_ids_BTk: jax.Array, topk_logq_BTk: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """Draft and target log-probabilities on the k + 1 categories (top-k tokens, tail).

  Returns:
    ([B, T, k+1] draft log p, [B, T, k+1] target log q); both normalised, so
    every loss of alignment.losses takes them as logits.
  """
  log_p_BTV = jax.nn.log_softmax(draft_logits_BTV.astype(jnp.float32), axis=-1)
  log_p_BTk = jnp.take_along_axis(log_p_BTV, topk_ids_BTk, axis=-1)

  def with_tail(log_top_BTk):
    top_mass = jnp.minimum(jnp.exp(log_top_BTk).sum(-1, keepdims=True), 1.0 - 1e-6)
    return jnp.concatenate([log_top_BTk, jnp.log1p(-top_mass)], axis=-1)

  return with_tail(log_p_BTk), with_tail(topk_logq_BTk.astype(jnp.float32))
