r"""KV Prediction (Horton et al. 2024; README "KV Prediction"): train an auxiliary model and predictor.

The two auxiliary models of results/kvp.md (run one after the other or together):

  python scripts/train_kvp.py --config=configs/kvp.py:aux=draft --workdir=workdirs/kvp/draft
  python scripts/train_kvp.py --config=configs/kvp.py:aux=pruned --workdir=workdirs/kvp/pruned

The result, <workdir>/model, is a KVP folder: load it with
specsample.decoding.kv_prediction.load_kvp(folder, target).

The real pair's predictor (SmolLM2-135M-Instruct, fetched on first use; the auxiliary is
the target's first 4 layers, frozen; the predictor starts from its least-squares fit):

  python scripts/train_kvp.py --config=configs/kvp.py:pair=smollm2 --workdir=workdirs/kvp/smollm2
  python scripts/train_kvp.py --config=configs/kvp.py:pair=smollm2,stage=tail \
      --workdir=workdirs/kvp/smollm2_tail

The second stage starts from the first's predictor and adds an exact 16-token tail
(decoding/kv_prediction.py) on 512-2,048-token prompts: assets/smollm2/kvp.

Arguments after the colon (comma separated):
  aux=<kind>   draft (default): the embedded draft assets/pair/draft, also usable as the
               speculative draft; pruned: a copy of the target keeping keep_layers
  pair=<name>  toy (default): the embedded pair; smollm2: the real pair (aux=pruned)
  stage=<s>    1 (default); tail: the real pair's second stage (above)
  runlocal     a few tiny steps, for smoke tests
"""

import ml_collections

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/kvp.py", switches=("runlocal",),
                                 options={"aux": "draft", "pair": "toy", "stage": "1"})
  if args["pair"] not in ("toy", "smollm2"):
    raise ValueError(f"configs/kvp.py: pair must be toy or smollm2, got {args['pair']!r}")
  c = ml_collections.ConfigDict()
  c.target_dir = "assets/pair/target"      # the frozen target (models.io folder)
  c.aux = args["aux"]                      # draft | pruned (training.kvp_train.AUX_KINDS)
  c.aux_dir = "assets/pair/draft"          # aux=draft: the auxiliary model's starting point
  c.keep_layers = (0, 3)                   # aux=pruned: target layers kept (2 of 6)
  c.layer_map = ()                         # target layer i -> aux layer; () = floor(i * L_aux / L_target)
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # both models' tokenizer; '' = the target folder's
  c.train_aux = True                       # False: the auxiliary is frozen, only the predictor learns
  c.init = "random"                        # predictor start: random | lstsq (training/kvp_fit.py)
                                           # | kvp (init_dir); lstsq and kvp replace layer_map
  c.init_dir = ""                          # init="kvp": the KVP folder to start from
  c.exact_tail = 0                         # prompt positions before the last that the target
                                           # runs itself (decoding/kv_prediction.py); 0 = paper
  c.fit = ml_collections.ConfigDict()      # init="lstsq": the least-squares fit
  c.fit.num_windows = 16                   # corpus training windows (one forward of each model each)
  c.fit.window = 1024                      # tokens per window
  c.fit.ridge = 1e-2                       # ridge, relative to the mean input second moment
  c.seed = 0                               # predictor init, batch order, prompt splits

  c.data = ml_collections.ConfigDict()
  c.data.min_prompt = 16                   # prompt length P drawn per row, uniform in [min, max]
  c.data.max_prompt = 192
  c.data.continuation = 32                 # tokens the target runs after the predicted cache
  c.data.cache_dir = ".cache/tokens"       # tokenized corpus cache
  c.data.corpus_root = ""                  # '' = the standard library (configs/train.py's corpus)

  c.weights = ml_collections.ConfigDict()  # loss weights; 1 each in the paper
  c.weights.target_ce = 1.0                # target CE on the continuation, predicted prompt cache
  c.weights.aux_ce = 1.0                   # auxiliary CE on the whole window
  c.weights.l1 = 1.0                       # L1 between predicted and real target K / V

  c.num_steps = 300                        # optimizer steps
  c.stop_after_step = 0                    # > 0: stop (resumably) after this step
  c.batch_size = 8                         # windows per step
  c.log_every = 10                         # metrics.jsonl cadence
  c.checkpoint_every = 50                  # orbax save cadence

  c.optim = ml_collections.ConfigDict()    # training.train.make_optimizer fields
  c.optim.peak_lr = 1e-3
  c.optim.warmup_steps = 20
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0               # fine-tuning the aux: no decay towards zero
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.grad_clip = 1.0

  if args["pair"] == "smollm2":
    c.target_dir, c.tokenizer = "smollm2-135m-instruct", ""
    c.aux, c.keep_layers = "pruned", (0, 1, 2, 3)
    c.train_aux, c.init = False, "lstsq"
    c.data.min_prompt, c.data.max_prompt, c.data.continuation = 64, 512, 32
    # Only the target's CE: the frozen 4-layer auxiliary has no CE worth keeping, and a
    # better L2 fit of the cache does not give a better target (the closing note's numbers).
    c.weights.aux_ce, c.weights.l1 = 0.0, 0.0
    c.num_steps, c.batch_size, c.optim.warmup_steps = 900, 4, 20  # assets/smollm2/README.md
  if args["stage"] == "tail":
    if args["pair"] != "smollm2":
      raise ValueError("configs/kvp.py: stage=tail is the real pair's second stage: add pair=smollm2")
    # Stage 2 (the shipped predictor): from stage 1's predictor, with an exact 16-token
    # tail, on the 512-2,048-token prompts (stage 1 saw 64-512).
    c.init, c.init_dir, c.exact_tail = "kvp", "workdirs/kvp/smollm2/model", 16
    c.data.min_prompt, c.data.max_prompt = 512, 2048
    c.num_steps, c.batch_size, c.optim.warmup_steps, c.optim.peak_lr = 300, 2, 10, 3e-4
    c.checkpoint_every = 25
  elif args["stage"] != "1":
    raise ValueError(f"configs/kvp.py: stage must be 1 or tail, got {args['stage']!r}")
  if args["runlocal"]:
    c.data.min_prompt, c.data.max_prompt, c.data.continuation = 4, 16, 8
    c.num_steps, c.batch_size = 6, 2
    c.log_every, c.checkpoint_every, c.optim.warmup_steps = 2, 2, 1
    c.fit.num_windows, c.fit.window = 4, 32
  return c
