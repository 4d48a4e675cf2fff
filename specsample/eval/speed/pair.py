"""Measures a draft/target pair: sizes, validation loss, greedy agreement, step costs (results/pair.json)."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from specsample import corpus as corpus_lib
from specsample import paths
from specsample import tokenizer as tokenizer_lib
from specsample.eval.speed import timing
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.training import data as data_lib
from specsample.training import losses

VAL_SEQ_LEN, VAL_BATCH_SIZE = 256, 16   # validation windows: [16, 256] tokens per batch
CACHE_LEN, CONTEXT_LEN = 512, 256       # decode-step timing: cache of 512, 256 filled
NUM_VERIFY = 5                          # target pass over K + 1 = 5 tokens (K = 4)


@functools.partial(jax.jit, static_argnames=("target_cfg", "draft_cfg"))
def _scores(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig, target_params,
            draft_params, batch) -> jax.Array:
  """[4]: summed target and draft losses, argmax agreements and weights of one batch."""
  t_logits_BLV, _ = tr.forward(target_cfg, target_params, batch["inputs"])
  d_logits_BLV, _ = tr.forward(draft_cfg, draft_params, batch["inputs"])
  w_BL = batch["weights"]
  t_sum = losses.cross_entropy(t_logits_BLV, batch["targets"], w_BL)[0] * w_BL.sum()
  d_sum = losses.cross_entropy(d_logits_BLV, batch["targets"], w_BL)[0] * w_BL.sum()
  agree = ((jnp.argmax(t_logits_BLV, -1) == jnp.argmax(d_logits_BLV, -1)) * w_BL).sum()
  return jnp.stack([t_sum, d_sum, agree, w_BL.sum()])


def _last_metrics(path: str) -> dict:
  rows = [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]
  evals = [r for r in rows if "val_loss" in r]
  return {"final_step": rows[-1]["step"], "final_train_loss": rows[-1]["loss"],
          "final_logged_val_loss": evals[-1]["val_loss"] if evals else None,
          "median_train_tokens_per_s": _median([r["tokens_per_s"] for r in rows
                                                if "tokens_per_s" in r])}


def _median(values: list) -> float | None:
  return float(np.median(values)) if values else None


def measure(pair_dir: str, tokenizer_path: str, val_batches: int) -> dict:
  """Parameter counts, validation loss and greedy agreement on the first `val_batches`
  held-out windows (the same for both models), 1-token decode step times, c and v_4,
  and the training runs' final metrics."""
  target = model_io.load_lm(os.path.join(pair_dir, "target"))
  draft = model_io.load_lm(os.path.join(pair_dir, "draft"))
  tok = tokenizer_lib.Tokenizer.load(tokenizer_path)
  streams = data_lib.tokenize_corpus(corpus_lib.build_corpus(False), tok, ".cache/tokens")
  totals = np.zeros(4)
  batches = data_lib.eval_batches(streams["val"], VAL_SEQ_LEN, VAL_BATCH_SIZE)
  for _, batch in zip(range(val_batches), batches):
    totals += np.asarray(_scores(target.config, draft.config, target.params, draft.params,
                                 batch), np.float64)
  t_loss, d_loss, agree = totals[:3] / totals[3]

  step_ms = lambda model, tokens: timing.time_forward(
      model, batch=1, num_tokens=tokens, cache_len=CACHE_LEN, context_len=CONTEXT_LEN,
      target_s=0.5, repeats=5)
  step = {name: step_ms(m, 1) for name, m in (("target", target), ("draft", draft))}
  verify = step_ms(target, NUM_VERIFY)
  return {
      "what": "embedded pair assets/pair, measured by scripts/pair_metrics.py",
      "machine": timing.machine_info(),
      "params": {"target": tr.count_params(target.params), "draft": tr.count_params(draft.params)},
      "val_tokens": int(totals[3]),
      "val_loss": {"target": float(t_loss), "draft": float(d_loss)},
      "greedy_agreement": float(agree),
      "decode_step_ms_batch1": step,
      "c_draft_over_target": step["draft"] / step["target"],
      "target_5_token_pass_over_1_token": verify / step["target"],
      "training": {name: _last_metrics(os.path.join(pair_dir, name, "metrics.jsonl"))
                   for name in ("target", "draft")},
  }
