r"""Evaluate drafts against the embedded target: alpha, tau, MBSU, speedup (results/alignment.*).

  python scripts/eval_alignment.py --config=configs/align_eval.py --output_dir=results

The drafts are the folders the README "Align the draft" commands write.
Arguments after the colon: runlocal (tiny sizes, for smoke tests).
"""

import ml_collections

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  runlocal = config_common.parse_arg(arg, "configs/align_eval.py", switches=("runlocal",))["runlocal"]
  c = ml_collections.ConfigDict()
  c.target_dir = "assets/pair/target"      # the target q
  c.tokenizer = "assets/tokenizer/tokenizer.model"
  # "name=draft folder" (models.io), in table order; the first is the reference.
  c.drafts = (
      "pretrained=assets/pair/draft_pretrained",
      "fkl_corpus_baseline=workdirs/align/loss_fkl_source_corpus/model",
      "fkl=workdirs/align/loss_fkl/model",
      "rkl=workdirs/align/loss_rkl/model",
      "tvd=workdirs/align/loss_tvd/model",
      "tvdpp=workdirs/align/loss_tvdpp/model",
      "shipped (fkl, 1200 steps)=assets/pair/draft",  # configs/distill.py docstring: its command
  )
  c.corpus_root = ""                       # '' = the standard library corpus (its validation split)
  c.seed = 0                               # held-out prompt choice and sampling
  c.num_val_prompts = 16                   # validation-split prefixes (never trained on)
  c.num_humaneval_prompts = 16             # first HumanEval prompts
  c.min_prompt_tokens = 64                 # validation prefixes: length in [min, max]
  c.max_prompt_tokens = 256                # every prompt is cut to its last max tokens
  c.max_new_tokens = 64                    # tokens per continuation
  c.k_values = (2, 4, 6)                   # K of the tau curve
  c.speed_k = 4                            # K of the wall-clock speedups
  c.speed_batches = (1, 8)                 # batch sizes of the wall-clock speedups
  c.speed_prompts = 8                      # prompts timed per setting
  c.repeats = 2                            # timed passes; the fastest per call is kept
  if runlocal:
    c.num_val_prompts = c.num_humaneval_prompts = 2
    c.k_values, c.speed_batches, c.speed_prompts, c.max_new_tokens = (1, 2), (1, 2), 2, 8
    c.speed_k, c.repeats = 2, 1
  return c
