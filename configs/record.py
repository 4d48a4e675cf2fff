r"""Record the real target's continuations with its top-k log-probs and features (alignment/record.py).

The data of the real pair's draft (README "Real models"): SmolLM2-135M-Instruct
continuing training-split code and docstring-summary prompts.

  python scripts/record_target.py --config=configs/record.py

Resumable: a killed run continues at the first missing shard. Arguments after
the colon: `runlocal` (two tiny shards on the embedded toy target, for tests).
"""

import ml_collections

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/record.py", switches=("runlocal",))
  c = ml_collections.ConfigDict()
  c.target_dir = "smollm2-135m-instruct"    # a model folder, HF folder, .gguf, or a name of models/fetch.py
  c.tokenizer = ""                         # '' = the target's own (its folder or GGUF)
  c.data_dir = "workdirs/record/smollm2"   # shards + manifest.json
  c.corpus_root = ""                       # '' = the standard library (configs/train.py's corpus)
  c.kinds = ("code", "docsum", "docsum_chat")  # prompt kinds, rotating by shard (alignment/record.py);
                                           # also "code_chat" (Table 1's HumanEval chat turns). The
                                           # kinds are in the manifest: another set needs a new data_dir
  c.seed = 0                               # prompts and sampling keys: shard i is a function of (seed, i)
  c.num_shards = 600                       # shards to record (kinds and settings rotate by shard)
  c.batch_size = 32                        # prompts per shard (one generate call)
  c.min_prompt_tokens = 48                 # code prompts: length uniform in [min, max]
  c.max_prompt_tokens = 384                # also the cap of summary prompts; padded to a multiple of 64
  c.max_new_tokens = 128                   # target tokens generated per prompt
  c.topk = 32                              # log-probs kept per position
  if args["runlocal"]:
    c.target_dir, c.tokenizer = "assets/pair/target", "assets/tokenizer/tokenizer.model"
    c.data_dir = "workdirs/record/runlocal"
    c.num_shards, c.batch_size, c.min_prompt_tokens, c.max_prompt_tokens = 3, 2, 8, 60
    c.max_new_tokens, c.topk, c.kinds = 6, 4, ("code", "docsum")
  return c
