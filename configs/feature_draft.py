r"""Train the real pair's draft: a feature draft (EAGLE-style, FR-Spec head) on the recorded target.

  python scripts/record_target.py --config=configs/record.py        # first: the data (resumable)
  python scripts/train_feature_draft.py --config=configs/feature_draft.py --workdir=workdirs/feature_draft

Trains only on recorded shards (alignment/feature_train.py): the target is not
run again. Resumes from <workdir>/checkpoints; the draft is <workdir>/model.
Arguments after the colon: `runlocal` (a few steps on configs/record.py:runlocal's data).
"""

import ml_collections

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/feature_draft.py", switches=("runlocal",))
  c = ml_collections.ConfigDict()
  c.target_dir = "smollm2-135m-instruct"    # the target the shards were recorded from
  c.data_dir = "workdirs/record/smollm2"   # recorded shards (configs/record.py)
  c.extra_data_dirs = ()                   # more recorded sets of the same target (e.g. other
                                           # kinds: a set's kinds are fixed by its manifest)
  c.init_from = ""                         # a feature draft folder to start from ('' = the
                                           # target's last block); read at the first start only
  c.seed = 0                               # init noise, batch order, feature noise
  c.head_size = 8192                       # FR-Spec: head tokens (the target's most frequent argmaxes)
  c.val_every = 10                         # shards whose index is a multiple of this are held out
  c.num_steps = 2000                       # optimizer steps
  c.stop_after_step = 0                    # > 0: stop (resumably) after this step
  c.batch_size = 8                         # windows per step
  c.seq_len = 256                          # consecutive pairs per window
  c.feature_noise = 0.05                   # input feature noise, times the feature RMS
  c.feature_weight = 1.0                   # smooth L1 on normalised features (EAGLE's 1.0)
  c.class_weight = 1.0                     # coarse cross-entropy against the target (EAGLE's 0.1;
                                           # 1.0 once the draft trains on its own outputs)
  c.unroll = 3                             # draft steps trained on the draft's own outputs (EAGLE-3's
                                           # training-time test); 1 = EAGLE-1's teacher forcing
  c.step_decay = 0.8                       # weight of step k's loss: step_decay ** k
  c.log_every = 50                         # metrics.jsonl cadence (with held-out metrics)
  c.eval_batches = 4                       # held-out batches per log line
  c.checkpoint_every = 100                 # orbax save cadence

  c.optim = ml_collections.ConfigDict()    # training.train.make_optimizer fields
  c.optim.peak_lr = 5e-4
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.grad_clip = 1.0
  if args["runlocal"]:
    c.target_dir, c.data_dir = "assets/pair/target", "workdirs/record/runlocal"
    c.head_size, c.val_every, c.num_steps, c.batch_size, c.seq_len = 512, 3, 4, 2, 16
    c.log_every, c.eval_batches, c.checkpoint_every, c.optim.warmup_steps = 2, 1, 2, 1
  return c
