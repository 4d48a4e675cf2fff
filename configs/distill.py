r"""Draft alignment by distillation (Goel et al. 2024; README "Align the draft").

The comparison runs of results/alignment.md (each loss: 300 steps of 16 x 160 tokens):

  python scripts/distill.py --config=configs/distill.py:loss=tvdpp --workdir=workdirs/align/loss_tvdpp

with loss=fkl, rkl, tvd or tvdpp. The shipped draft (assets/pair/draft) is this run's <workdir>/model, four times
the comparison runs' budget of 300 steps:

  python scripts/distill.py --config=configs/distill.py:loss=fkl --config.num_steps=1200 \
      --workdir=workdirs/align/loss_fkl_1200

The first run builds the distillation set (the target's continuations of
corpus prompts) under data.data_dir; runs with other losses reuse it. The
plain teacher-forced baseline trains on corpus windows instead:

  python scripts/distill.py --config=configs/distill.py:loss=fkl,source=corpus \
      --workdir=workdirs/align/loss_fkl_source_corpus

Arguments after the colon (comma separated):
  loss=<name>      fkl | rkl | tvd | tvdpp (default fkl)
  source=<name>    distill (default) | corpus
  runlocal         a few tiny steps on a tiny set, for smoke tests
"""

import ml_collections

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/distill.py", switches=("runlocal",),
                                 options={"loss": "fkl", "source": "distill"})
  c = ml_collections.ConfigDict()
  c.loss = args["loss"]                    # alignment.losses.LOSSES
  c.target_dir = "assets/pair/target"      # frozen teacher q (models.io folder)
  c.draft_dir = "assets/pair/draft_pretrained"  # student p before alignment (trained on data only)
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # both models' tokenizer
  c.seed = 0                               # prompts, generation, batch order, TVD++ samples

  c.data = ml_collections.ConfigDict()
  c.data.source = args["source"]           # distill: target continuations; corpus: raw windows
  c.data.data_dir = "workdirs/distill_data"  # the distillation set; '' = <workdir>/data
  c.data.settings = ("greedy", "t0.6", "t1.0")  # target sampling settings (alignment.data.SETTINGS)
  c.data.batches_per_setting = 12          # generate calls per setting
  c.data.batch_size = 64                   # prompts per generate call
  c.data.min_prompt_tokens = 32            # prompt length drawn uniformly in [min, max]
  c.data.max_prompt_tokens = 256
  c.data.max_new_tokens = 96               # target tokens generated per prompt
  c.data.loss_on = "all"                   # all positions, or 'completion' only
  c.data.cache_dir = ".cache/tokens"       # tokenized corpus cache (source=corpus)
  c.data.corpus_root = ""                  # '' = the standard library (configs/train.py's corpus)

  c.teacher_topk = 64                      # distill source: target as top-k + tail (alignment/teacher.py); 0 = exact.
                                           # The corpus baseline always uses the exact target.
  c.num_steps = 300                        # optimizer steps; every loss gets the same budget
  c.stop_after_step = 0                    # > 0: stop (resumably) after this step
  c.batch_size = 16                        # sequences per step
  c.seq_len = 160                          # a row: the last seq_len + 1 tokens of prompt + completion
  c.log_every = 10                         # metrics.jsonl cadence
  c.checkpoint_every = 50                  # orbax save cadence

  c.optim = ml_collections.ConfigDict()    # training.train.make_optimizer fields
  c.optim.peak_lr = 1e-3
  c.optim.warmup_steps = 20
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0               # fine-tuning: no decay towards zero
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.grad_clip = 1.0

  if args["runlocal"]:
    c.data.data_dir = ""
    c.data.batches_per_setting, c.data.batch_size = 1, 4
    c.data.min_prompt_tokens, c.data.max_prompt_tokens, c.data.max_new_tokens = 8, 24, 8
    c.num_steps, c.batch_size, c.seq_len, c.teacher_topk = 4, 2, 32, 8
    c.log_every, c.checkpoint_every, c.optim.warmup_steps = 2, 2, 1
  return c
