r"""Prompt lookup, a draft, and both, against autoregressive (eval/speed/drafting.py).

The real pair: SmolLM2-135M-Instruct with its shipped feature draft, lookup, and both
(results/smollm2/drafting.*; --config.draft_dir='' measures lookup alone):

  python scripts/drafting.py --config=configs/drafting.py --config.output_dir=results/smollm2

The embedded toy pair, all four methods:

  python scripts/drafting.py --config=configs/drafting.py:toy --config.output_dir=results/toy/drafting

Arguments after the colon: `toy` (the embedded pair), `runlocal` (seconds, for tests).
"""

import ml_collections

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/drafting.py", switches=("toy", "runlocal"))
  c = ml_collections.ConfigDict()
  c.target_dir = "smollm2-135m-instruct"    # model folder, HF folder, .gguf or a fetchable name
  c.tokenizer = ""                         # '' = the target's own
  c.draft_dir = "assets/smollm2/feature_draft"  # a draft model or feature draft folder; '' = lookup only
  c.tasks = ("humaneval", "docsum")        # eval/speed/drafting.TASKS
  c.batch_sizes = (1, 8)
  c.samplings = ("greedy", "nucleus")      # nucleus: temperature 0.8, top-p 0.95 (HumanEval's)
  c.num_prompts = 8                        # prompts per task (one batch at batch 8)
  c.num_draft = 4                          # K of every speculative method
  c.max_ngram = 3                          # lookup: longest suffix tried first
  c.min_ngram = 1                          # lookup: shortest suffix that counts
  c.lookup_auto = tuple(range(9))          # also lookup with this K set (0..8: num_draft='auto's;
                                           # K from its matches); () = not measured
  c.min_draft_probs = (0.2,)               # draft+lookup variants: PromptLookup.min_draft_prob each
                                           # (greedy ignores it: every copy is used)
  c.max_new_tokens = 64
  c.eos_id = None                          # None: rows run to max_new_tokens (equal work per method)
  c.passes = 2                             # timed round-robin passes after the warm-up
  c.cache_dir = "workdirs/reproduce"       # where the docsum stand-in is built (docsum/)
  c.output_dir = "results/drafting"
  if args["toy"] or args["runlocal"]:
    c.target_dir, c.draft_dir = "assets/pair/target", "assets/pair/draft"
    c.min_draft_probs = (0.0, 0.2)
    c.tokenizer = "assets/tokenizer/tokenizer.model"
  if args["runlocal"]:
    c.tasks, c.batch_sizes, c.samplings = ("humaneval",), (2,), ("greedy",)
    c.num_prompts, c.max_new_tokens, c.passes, c.num_draft = 2, 8, 1, 2
    c.min_draft_probs = (0.0,)           # greedy only: a gate would change nothing
    c.lookup_auto = (0, 2)
    c.output_dir = "workdirs/drafting_runlocal"
  return c
