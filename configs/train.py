r"""Language-model training on the offline Python corpus.

Train the embedded pair (the exact commands that produced assets/pair/):

  python scripts/train.py --config=configs/train.py:model=draft_small --workdir=workdirs/draft_small
  # The target was trained in two stages (a planned 400-step run, stopped at
  # step 300 and continued on an 800-step schedule, for lack of CPU time);
  # data order and params are pure functions of (seed, step), so these two
  # commands reproduce it exactly:
  python scripts/train.py --config=configs/train.py:model=target_small --workdir=workdirs/target_small \
      --config.num_steps=400 --config.stop_after_step=300
  python scripts/train.py --config=configs/train.py:model=target_small --workdir=workdirs/target_small

Arguments after the colon (comma separated):
  model=<preset>   one of specsample.models.presets.PRESETS (default target_small)
  runlocal         a few tiny steps, for smoke tests

Any field can be overridden: --config.num_steps=100 --config.model.num_layers=4
"""

import ml_collections

from specsample import config_common
from specsample.models import presets


# Steps of the embedded pair (measured throughputs in results/pair.json).
_STEPS = {"target_small": 800, "draft_small": 800}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/train.py", switches=("runlocal",),
                                options={"model": "target_small"})
  model = presets.get_preset(args["model"])  # raises naming the known presets
  c = ml_collections.ConfigDict()
  c.preset = args["model"]                 # informational: which preset model came from
  c.seed = 0                               # parameter init and data order
  c.model = ml_collections.ConfigDict(model.__dict__)  # every TransformerConfig field
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # sentencepiece model; vocab must equal model.vocab_size

  c.data = ml_collections.ConfigDict()
  c.data.seq_len = 256                     # tokens per training window
  c.data.batch_size = 16                   # windows per step
  c.data.cache_dir = ".cache/tokens"         # tokenized corpus cache (.npy), keyed by content hashes
  c.data.include_site_packages = False     # corpus: stdlib only (deterministic on one Python build)

  c.optim = ml_collections.ConfigDict()
  c.optim.peak_lr = 3e-3                   # AdamW peak learning rate
  c.optim.warmup_steps = 30                # linear warmup from 0
  c.optim.min_lr_ratio = 0.1               # cosine decays to peak_lr * this
  c.optim.weight_decay = 0.1               # decoupled, matrices only
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.grad_clip = 1.0                  # global-norm clipping

  # Device mesh (specsample/sharding.py). Every axis 1: one device, no sharding.
  # E.g. --config.mesh.data=-1 splits each batch over all devices; on a TPU slice
  # see docs/tpu.md. data x fsdp must divide data.batch_size.
  config_common.add_mesh(c)
  c.sharding_rules = "tensor_parallel"     # sharding.RULES name: logical axis -> mesh axes

  c.num_steps = _STEPS.get(args["model"], 600)  # total optimizer steps (sets the cosine length)
  c.stop_after_step = 0                    # > 0: stop (resumably) after this step; 0 = off
  c.log_every = 10                         # metrics.jsonl cadence
  c.eval_every = 100                       # validation loss cadence
  c.eval_batches = 8                       # validation batches per evaluation
  c.checkpoint_every = 50                  # orbax save cadence
  c.keep_checkpoints = 3                   # most recent checkpoints kept

  if args["runlocal"]:
    c.data.seq_len, c.data.batch_size = 32, 2
    c.num_steps, c.optim.warmup_steps = 4, 1
    c.log_every = c.eval_every = c.checkpoint_every = 2
    c.eval_batches = 1
  return c
