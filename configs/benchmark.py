r"""Speed of speculative vs autoregressive sampling, and the bound of PAPERS.md section 2.

Full run (the embedded pair; writes results/benchmark.json and results/benchmark.md):

  nice -n 10 python scripts/benchmark.py --config=configs/benchmark.py

Seconds-long smoke test (use any pair, e.g. a random one saved with io.save_lm):

  python scripts/benchmark.py --config=configs/benchmark.py:runlocal \
      --config.target_dir=/tmp/pair/target --config.draft_dir=/tmp/pair/draft \
      --config.output_dir=/tmp/bench

On a device mesh (every worker of a TPU slice: add --distributed=auto; docs/tpu.md, step 5):

  python scripts/benchmark.py --config=configs/benchmark.py \
      --config.mesh.data=2 --config.mesh.tensor=4 --config.batch_sizes='(2, 8)'

Size of the default run: 8 HumanEval prompts cut to their last 96 tokens, 64
new tokens each, K = 1..8, greedy and nucleus, batch 1 (8 calls of one prompt)
and batch 8 (one call): 2 batch sizes x 2 samplings x (1 AR + 8 K + auto) = 40
decode loops, plus 7 breakdown loops (K = 0..8 each) per setting, each compiled
once; most of a cold run is compilation, which `compilation_cache_dir` saves on
a rerun. Its timings are in results/benchmark.md.

Arguments after the colon (comma separated):
  runlocal   2 prompts of 16 tokens, 8 new tokens, K = 2 only, no auto and no breakdown, one
             call of batch 2, nucleus only: 2 decode loops to compile, the bulk of its time (a smoke test;
             nucleus exercises everything greedy does except the greedy AR-equality flag).
"""

import ml_collections
from ml_collections import config_dict

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark config; `arg="runlocal"` shrinks it to a smoke test."""
  args = config_common.parse_arg(arg, "configs/benchmark.py", switches=("runlocal",))
  c = ml_collections.ConfigDict()
  # --- Models and data ---
  c.target_dir = "assets/pair/target"   # io.save_lm folder of the target (q)
  c.draft_dir = "assets/pair/draft"     # io.save_lm folder of the draft (p)
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # its vocab must equal the models'
  c.num_prompts = 8          # first HumanEval prompts with >= prompt_tokens tokens
  c.prompt_tokens = 96       # each prompt is cut to its LAST this many tokens (equal shapes)
  c.max_new_tokens = 64      # tokens generated per row
  # A row stops after emitting this id (2: the tokenizer's eos); None: every row generates
  # exactly max_new_tokens (the same work for every method).
  c.eos_id = config_dict.placeholder(int)

  # --- What is compared ---
  c.k_sweep = tuple(range(1, 9))  # the K values timed (speculative)
  c.batch_sizes = (1, 8)     # rows per generate call; each must divide num_prompts
  c.samplings = ("greedy", "nucleus")  # applied to both models; greedy = temperature 0
  # Nucleus: the paper's HumanEval setting (Chen et al. 2023: temperature 0.8, top-p 0.95).
  c.nucleus = ml_collections.ConfigDict({"temperature": 0.8, "top_k": 0, "top_p": 0.95})
  c.seed = 0                 # PRNG seed of every generate call
  c.auto = True              # also time num_draft="auto" (K chosen per iteration) per setting
  # K values of the breakdown (eval/speed/breakdown.py): one loop per setting with these
  # K, compiled once, each K timed and profiled inside it; must include 0 (the
  # unit of c and v_K). () skips it.
  c.breakdown_ks = tuple(range(0, 9))
  c.breakdown_trips = 16     # loop iterations per timed / traced breakdown call
  # Also the ablation cross-check: one more loop per part and setting (6 compiles
  # of ~15 s each per setting), which does not add up (eval/speed/breakdown.py).
  c.breakdown_ablation = False

  # --- Timing ---
  # Timed rounds after every loop's warm-up: one round is a pass of AR, of every
  # K, then of auto (round-robin, so the machine's drift hits all alike); each
  # call's fastest wall over the rounds is kept. About 1 min per round.
  c.repeats = 3
  c.pad_to = 16              # generate's pad_to (prompt and buffer rounding)
  c.forward_seconds = 0.1    # each c / v_K / prefill / sampling measurement runs about this long
  c.forward_repeats = 3      # such measurements per quantity; the minimum is kept
  # Persistent XLA compilation cache ("" = off). Compiling the 36 decode loops is
  # about half of a cold run; a second run on the same shapes (e.g. after
  # re-exporting the pair: params are arguments, not constants) skips it.
  c.compilation_cache_dir = ".cache/jax"

  # --- Device mesh (specsample/sharding.py): mesh.*, target_rules, draft_rules, param_dtype ---
  # Every axis 1 (the default): one device. On a mesh every generate call,
  # forward and alpha measurement runs on it; the sampling-transform timings
  # stay on one device per process.
  config_common.add_pair_placement(c)

  # --- Output (process 0 alone writes) ---
  c.output_dir = "results"   # benchmark.json and benchmark.md, written atomically

  if args["runlocal"]:
    c.num_prompts, c.prompt_tokens, c.max_new_tokens = 2, 16, 8
    c.k_sweep, c.batch_sizes, c.samplings = (2,), (2,), ("nucleus",)
    c.auto, c.breakdown_ks = False, ()
    c.repeats, c.forward_seconds, c.forward_repeats = 1, 0.005, 2
    c.compilation_cache_dir = ""
  return c
