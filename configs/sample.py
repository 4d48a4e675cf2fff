r"""Sample completions of prompts from a file with the embedded pair.

  python scripts/sample.py --config=configs/sample.py \
      --config.input=prompts.jsonl --config.output=results/samples.jsonl
  python scripts/sample.py --config=configs/sample.py --config.input=prompts.txt \
      --config.output=/tmp/out.jsonl --config.method=autoregressive --config.temperature=0
  # On 8 devices: batch split in 2, both models' heads / MLP / vocab split in 4.
  python scripts/sample.py --config=configs/sample.py --config.input=prompts.txt \
      --config.output=/tmp/out.jsonl --config.mesh.data=2 --config.mesh.tensor=4

On every worker of a TPU slice add --distributed=auto (docs/tpu.md, step 5).

Input: `.txt`, one prompt per line (blank lines skipped; a prompt cannot
contain a newline), or `.jsonl`, one object per line with a string "prompt"
field (other fields are copied to the output row). Output: JSONL, one row per
prompt in input order: the input fields, prompt, completion (decoded text,
eos dropped), method, num_draft, seed, tokens (ids) and the statistics
target_calls, drafted, accepted, new_tokens, tokens_per_call, acceptance_rate.

Arguments after the colon (comma separated):
  runlocal   first 2 prompts, 8 new tokens, batch 2: a seconds-long smoke test.
  no_eos     eos_id = None: every row generates max_new_tokens (a flag cannot say None).
"""

import ml_collections
from ml_collections import config_dict

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The sampling config; `arg="runlocal"` shrinks it to a smoke test."""
  args = config_common.parse_arg(arg, "configs/sample.py", switches=("runlocal", "no_eos"))
  c = ml_collections.ConfigDict()
  # --- Files ---
  c.input = ""               # required: prompts, .txt (one per line) or .jsonl ("prompt" field)
  c.output = ""              # required: output .jsonl; its folder must exist; written atomically
  c.target_dir = "assets/pair/target"  # io.save_lm folder of the target
  c.draft_dir = "assets/pair/draft"    # io.save_lm folder or feature draft (speculative only)
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # its vocab must equal the models'
  c.add_bos = True           # prepend the tokenizer's bos id to every prompt
  c.limit = 0                # sample only the first `limit` prompts; 0 = all

  # --- Decoding (specsample.decoding.generate) ---
  c.method = "speculative"   # 'speculative' or 'autoregressive'
  c.num_draft = 4            # K, draft tokens per target call (speculative), >= 1
  # Sampling, applied to both models. Default: the paper's HumanEval setting
  # (Chen et al. 2023: temperature 0.8, nucleus top-p 0.95).
  c.temperature = 0.8        # >= 0; 0 = greedy
  c.top_k = 0                # >= 0; 0 = off
  c.top_p = 0.95             # in (0, 1]; 1 = off
  c.max_new_tokens = 128     # new tokens per prompt at most, >= 1
  # A row stops after emitting this id (the tokenizer's eos); None (`no_eos`) = never.
  c.eos_id = config_dict.FieldReference(None if args["no_eos"] else 2, field_type=int)
  c.seed = 0                 # PRNG seed; batch i uses seed + i
  c.batch_size = 8           # prompts per generate call, >= 1
  c.pad_to = 16              # prompt/buffer length rounding (fewer compiles)

  # --- Device mesh (specsample/sharding.py): mesh.*, target_rules, draft_rules, param_dtype ---
  # Every axis 1 (the default): one device. On a mesh a last, smaller batch is
  # padded with copies of its last prompt (dropped from the output); process 0
  # alone writes the output.
  config_common.add_pair_placement(c)

  if args["runlocal"]:
    c.limit, c.max_new_tokens, c.batch_size = 2, 8, 2
  return c
