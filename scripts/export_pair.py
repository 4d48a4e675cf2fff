r"""Exports trained target and draft checkpoints as the embedded pair.

  python scripts/export_pair.py --target_workdir=workdirs/target_small \
      --draft_workdir=workdirs/draft_small --out=assets/pair

Writes <out>/target and <out>/draft (config.json with the training config and
tokenizer fingerprint, bfloat16 params) and copies each run's metrics.jsonl
beside them. The tokenizer stays at assets/tokenizer/. Then measure the pair:
python scripts/pair_metrics.py (writes results/pair.json).
"""

import os
import shutil

from absl import app, flags
import jax

from specsample.models import io as model_io
from specsample import tokenizer as tokenizer_lib
from specsample.training import train as train_lib
import ml_collections

_TARGET = flags.DEFINE_string("target_workdir", "workdirs/target_small", "Target training workdir.")
_DRAFT = flags.DEFINE_string("draft_workdir", "workdirs/draft_small", "Draft training workdir.")
_OUT = flags.DEFINE_string("out", "assets/pair", "Output folder.")


def export(workdir: str, out: str) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(__import__("json").load(f))
  model_cfg = train_lib.model_config_from(config)
  optimizer = train_lib.make_optimizer(config)
  state = train_lib.init_state(model_cfg, optimizer, config.seed)
  from specsample import checkpoint as ckpt_lib
  step, state, _ = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)
  tok = tokenizer_lib.Tokenizer.load(config.tokenizer)
  model_io.save_lm(out, model_cfg, state.params, tokenizer_id=tok.fingerprint,
                   extra={"trained_steps": step, "train_config": config.to_dict()})
  shutil.copy(os.path.join(workdir, "metrics.jsonl"), os.path.join(out, "metrics.jsonl"))
  print(f"exported {workdir} step {step} -> {out}")


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  export(_TARGET.value, os.path.join(_OUT.value, "target"))
  export(_DRAFT.value, os.path.join(_OUT.value, "draft"))


if __name__ == "__main__":
  app.run(main)
