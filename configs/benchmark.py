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
and batch 8 (one call). That is 2 batch sizes x 2 samplings x (1 AR + 8 K) =
36 decode loops, each compiled once. Estimated from CPU time measured with a
random pair of the embedded shapes (target d320 L6, 7.8M params; draft d128
L2, 0.9M) on this 2-core EPYC while it was shared: about 9 to 11 minutes
cold on a quiet machine, of which roughly 5 compiling (4 to 8 s per AR loop,
8 to 13 s per speculative loop), 4 generating (a batch-1 pass of 8 x 64
tokens takes about 3 s, a batch-8 pass about 1.5 s; each K: warm-up + 1 timed
pass, plus 1 AR pass) and 1 timing forwards and sampling; about 5 minutes
when `compilation_cache_dir` already holds the loops. A trained pair (tau
above 1) makes speculative passes shorter than the random pair's.

Arguments after the colon (comma separated):
  runlocal   2 prompts of 16 tokens, 8 new tokens, K = 2 only, one call of batch 2,
             nucleus only: 2 decode loops to compile, the bulk of its time (a smoke test;
             nucleus exercises everything greedy does except the greedy AR-equality flag).
"""

import ml_collections


def _parse(arg: str | None) -> dict:
  out = {"runlocal": False}
  for part in filter(None, (arg or "").split(",")):
    if part == "runlocal":
      out["runlocal"] = True
    else:
      raise ValueError(f"configs/benchmark.py: unknown argument {part!r}; allowed: runlocal")
  return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark config; `arg="runlocal"` shrinks it to a smoke test."""
  args = _parse(arg)
  c = ml_collections.ConfigDict()
  # --- Models and data ---
  c.target_dir = "assets/pair/target"   # io.save_lm folder of the target (q)
  c.draft_dir = "assets/pair/draft"     # io.save_lm folder of the draft (p)
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # its vocab must equal the models'
  c.num_prompts = 8          # first HumanEval prompts with >= prompt_tokens tokens
  c.prompt_tokens = 96       # each prompt is cut to its LAST this many tokens (equal shapes)
  c.max_new_tokens = 64      # tokens generated per row
  c.stop_at_eos = False      # False: every row generates exactly max_new_tokens (same work)

  # --- What is compared ---
  c.num_draft = tuple(range(1, 9))  # the K values timed (speculative)
  c.batch_sizes = (1, 8)     # rows per generate call; each must divide num_prompts
  # Name -> Sampling fields, applied to both models. Nucleus is the paper's
  # HumanEval setting (Chen et al. 2023: temperature 0.8, top-p 0.95).
  c.samplings = ml_collections.ConfigDict({
      "greedy": {"temperature": 0.0, "top_k": 0, "top_p": 1.0},
      "nucleus": {"temperature": 0.8, "top_k": 0, "top_p": 0.95},
  })
  c.seed = 0                 # PRNG seed of every generate call

  # --- Timing ---
  # Timed speculative passes per K after its warm-up (each call's fastest is
  # kept). Autoregressive passes are interleaved, one per K, so AR gets
  # len(num_draft) + 1 of them. On a loaded machine use 2 or 3 (+2 to 4 min).
  c.repeats = 1
  c.pad_to = 16              # generate's pad_to (prompt and buffer rounding)
  c.forward_seconds = 0.1    # each c / v_K / prefill / sampling measurement runs about this long
  c.forward_repeats = 3      # such measurements per quantity; the minimum is kept
  # Persistent XLA compilation cache ("" = off). Compiling the 36 decode loops is
  # about half of a cold run; a second run on the same shapes (e.g. after
  # re-exporting the pair: params are arguments, not constants) skips it.
  c.compilation_cache_dir = ".cache/jax"

  # --- Device mesh (specsample/sharding.py), as in configs/sample.py ---
  # Every axis 1 (the default): one device, api.generate. Otherwise both models
  # are read shard by shard onto one mesh over all devices (of all processes)
  # and every generate call, forward and alpha measurement runs on it
  # (decoding/sharded.py); data x fsdp must divide every batch size. The
  # sampling-transform timings stay on one device per process.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1            # batch split, parameters replicated; -1 = all devices left
  c.mesh.fsdp = 1            # batch split and parameters' embed dim split (ZeRO-3)
  c.mesh.tensor = 1          # heads / kv heads / MLP / vocab split (Megatron)
  c.target_rules = "tensor_parallel"  # sharding.RULES name: the target's logical axis -> mesh axes
  c.draft_rules = "tensor_parallel"   # the draft's; 'replicated' keeps a small draft whole per device
  c.param_dtype = ""         # "" = each model's saved param_dtype; e.g. "bfloat16" halves weight memory

  # --- Output (process 0 alone writes) ---
  c.output_dir = "results"   # benchmark.json and benchmark.md, written atomically

  if args["runlocal"]:
    c.num_prompts, c.prompt_tokens, c.max_new_tokens = 2, 16, 8
    c.num_draft, c.batch_sizes = (2,), (2,)
    c.samplings = ml_collections.ConfigDict({"nucleus": c.samplings.nucleus.to_dict()})
    c.repeats, c.forward_seconds, c.forward_repeats = 1, 0.005, 2
    c.compilation_cache_dir = ""
  return c
