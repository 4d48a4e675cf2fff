r"""Measures the embedded pair and writes results/pair.json.

  python scripts/pair_metrics.py --pair=assets/pair --out=results/pair.json

Records, for the exported (bfloat16-stored, float32-run) target and draft:
  * parameter counts;
  * validation loss (nats/token) on the first `--val_batches` windows of the
    held-out corpus split, with the same windows for both models;
  * greedy agreement: the fraction of those positions where the draft's argmax
    equals the target's (the alpha of greedy speculative decoding);
  * decode step times (1 token, batch 1, cache of 512 with 256 filled), timed
    inside one jitted loop, and c = draft step / target step;
  * the training runs' step counts and final logged metrics.
"""

import json
import os

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from specsample import corpus as corpus_lib
from specsample import tokenizer as tokenizer_lib
from specsample.eval import speed
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.training import data as data_lib
from specsample.training import losses

_PAIR = flags.DEFINE_string("pair", "assets/pair", "Folder with target/ and draft/.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "assets/tokenizer/tokenizer.model", "Tokenizer.")
_OUT = flags.DEFINE_string("out", "results/pair.json", "Output JSON.")
_VAL_BATCHES = flags.DEFINE_integer("val_batches", 16, "Validation batches of 16 x 256 tokens.")


def _last_metrics(path: str) -> dict:
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  evals = [r for r in rows if "val_loss" in r]
  return {"final_step": rows[-1]["step"], "final_train_loss": rows[-1]["loss"],
          "final_logged_val_loss": evals[-1]["val_loss"] if evals else None,
          "median_train_tokens_per_s": float(np.median([r["tokens_per_s"] for r in rows]))}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  target = model_io.load_lm(os.path.join(_PAIR.value, "target"))
  draft = model_io.load_lm(os.path.join(_PAIR.value, "draft"))
  tok = tokenizer_lib.Tokenizer.load(_TOKENIZER.value)
  streams = data_lib.tokenize_corpus(corpus_lib.build_corpus(False), tok, ".cache/tokens")

  @jax.jit
  def scores(tparams, dparams, batch):
    t_logits, _ = tr.forward(target.config, tparams, batch["inputs"])
    d_logits, _ = tr.forward(draft.config, dparams, batch["inputs"])
    w = batch["weights"]
    t_sum = losses.cross_entropy(t_logits, batch["targets"], w)[0] * w.sum()
    d_sum = losses.cross_entropy(d_logits, batch["targets"], w)[0] * w.sum()
    agree = ((jnp.argmax(t_logits, -1) == jnp.argmax(d_logits, -1)) * w).sum()
    return jnp.stack([t_sum, d_sum, agree, w.sum()])

  totals = np.zeros(4)
  batches = data_lib.eval_batches(streams["val"], 256, 16)
  for _, batch in zip(range(_VAL_BATCHES.value), batches):
    totals += np.asarray(scores(target.params, draft.params, batch), np.float64)
  t_loss, d_loss, agree = totals[:3] / totals[3]

  step = {name: speed.time_forward(m, batch=1, num_tokens=1, cache_len=512, context_len=256,
                                   target_s=0.5, repeats=5)
          for name, m in (("target", target), ("draft", draft))}
  v5 = speed.time_forward(target, batch=1, num_tokens=5, cache_len=512, context_len=256,
                          target_s=0.5, repeats=5)
  out = {
      "what": "embedded pair assets/pair, measured by scripts/pair_metrics.py",
      "machine": speed.machine_info(),
      "params": {"target": tr.count_params(target.params), "draft": tr.count_params(draft.params)},
      "val_tokens": int(totals[3]),
      "val_loss": {"target": float(t_loss), "draft": float(d_loss)},
      "greedy_agreement": float(agree),
      "decode_step_ms_batch1": step,
      "c_draft_over_target": step["draft"] / step["target"],
      "target_5_token_pass_over_1_token": v5 / step["target"],
      "training": {name: _last_metrics(os.path.join(_PAIR.value, name, "metrics.jsonl"))
                   for name in ("target", "draft")},
  }
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  tmp = _OUT.value + ".tmp"
  with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
  os.replace(tmp, _OUT.value)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)
