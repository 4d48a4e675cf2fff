r"""KV Prediction measured (results/kvp.{json,md}, results/kvp_pareto.png; README "KV Prediction").

After training both auxiliary models (configs/kvp.py), quality first (no timing, low priority),
then the timings alone on the machine under the shared lock:

  nice -n 19 python scripts/eval_kvp.py --config=configs/kvp_eval.py:phases=quality
  flock /tmp/timing.lock python scripts/eval_kvp.py --config=configs/kvp_eval.py:phases=timing

Each phase updates results/kvp.json and rewrites the report from it.

Arguments after the colon (comma separated):
  phases=<a+b>   quality, timing (TTFT and latency), latency, or quality+timing (default)
  runlocal       tiny lengths and repeats, for smoke tests
"""

import ml_collections

from specsample import config_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/kvp_eval.py", switches=("runlocal",),
                                 options={"phases": "quality+timing"})
  c = ml_collections.ConfigDict()
  c.target_dir = "assets/pair/target"      # the target the predictors were trained for
  c.kvp_dirs = ml_collections.ConfigDict({  # name -> KVP folder (scripts/train_kvp.py's <workdir>/model)
      "draft": "workdirs/kvp/draft/model",
      "pruned": "workdirs/kvp/pruned/model"})
  c.tokenizer = "assets/tokenizer/tokenizer.model"
  c.cache_dir = ".cache/tokens"            # tokenized corpus cache
  c.corpus_root = ""                       # '' = the standard library corpus
  c.max_seq_len = 2048                     # load-time override: a 1024-token prompt + 128 new tokens
  c.phases = tuple(args["phases"].split("+"))  # quality, timing (TTFT + latency), latency
  c.out_dir = "results"                    # kvp.json, kvp.md, kvp_pareto.png

  c.ttft_prompt_lens = (256, 512, 1024)    # TTFT prompt lengths
  c.warmup = 2                             # untimed calls per TTFT measurement (the first compiles)
  c.repeats = 9                            # timed calls; the median is reported

  c.quality = ml_collections.ConfigDict()
  c.quality.num_windows = 64               # validation windows, evenly spaced in the split
  c.quality.prompt_len = 192               # within the predictors' training range [16, 192]
  c.quality.continuation = 64              # prompt + continuation = the target's training length
  c.quality.humaneval_limit = 0            # HumanEval problems scored; 0 = all 164

  c.latency = ml_collections.ConfigDict()
  c.latency.aux = "draft"                  # which KVP's auxiliary model is the speculative draft
  c.latency.prompt_lens = (1024,)          # prompt lengths of the total-latency runs
  c.latency.new_tokens = 128               # new tokens per run (greedy, no eos)
  c.latency.num_draft = 4                  # the paper's K
  c.latency.repeats = 3                    # timed runs after one warm-up; the median is reported

  if args["runlocal"]:
    c.ttft_prompt_lens, c.warmup, c.repeats = (32, 64), 1, 2
    c.quality.num_windows, c.quality.prompt_len, c.quality.continuation = 4, 16, 8
    c.quality.humaneval_limit = 4
    c.latency.prompt_lens, c.latency.new_tokens, c.latency.repeats = (32,), 8, 1
  return c
