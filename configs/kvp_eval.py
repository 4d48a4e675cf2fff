r"""KV Prediction measured (<out_dir>/kvp.{json,md}, kvp_pareto.png; README "KV Prediction").

The real pair (results/kvp.*): SmolLM2-135M-Instruct with the shipped predictor
assets/smollm2/kvp (configs/kvp.py:pair=smollm2) and, for SpS, the shipped feature draft.
Quality first (no timing), then the timings alone on the machine:

  python scripts/eval_kvp.py --config=configs/kvp_eval.py:pair=smollm2,phases=quality
  python scripts/eval_kvp.py --config=configs/kvp_eval.py:pair=smollm2,phases=timing
  python scripts/eval_kvp.py --config=configs/kvp_eval.py:pair=smollm2,phases=tasks

The embedded pair (results/toy/kvp.*), after training both auxiliary models (configs/kvp.py):

  nice -n 19 python scripts/eval_kvp.py --config=configs/kvp_eval.py:phases=quality
  flock /tmp/timing.lock python scripts/eval_kvp.py --config=configs/kvp_eval.py:phases=timing

Each phase updates <out_dir>/kvp.json and rewrites the report from it.

Arguments after the colon (comma separated):
  pair=<name>    toy (default) or smollm2
  stage1=<dir>   smollm2: also score configs/kvp.py's first-stage predictor (its
                 <workdir>/model), as trained and with a 16-token exact tail
  tail=<n>       the exact tail of every predictor, instead of each folder's own (a
                 longer tail runs more prompt positions in the target itself)
  phases=<a+b>   quality, timing (TTFT and latency), latency, tasks (pass@1 / ROUGE-2 on
                 long prompts, full prefill against KVP), joined by +; default quality+timing
  runlocal       tiny lengths and repeats, for smoke tests
"""

import ml_collections

from specsample import config_common

PHASES = ("quality", "timing", "latency", "tasks")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_common.parse_arg(arg, "configs/kvp_eval.py", switches=("runlocal",),
                                 options={"phases": "quality+timing", "pair": "toy",
                                          "stage1": "", "tail": ""})
  if args["pair"] not in ("toy", "smollm2"):
    raise ValueError(f"configs/kvp_eval.py: pair must be toy or smollm2, got {args['pair']!r}")
  c = ml_collections.ConfigDict()
  c.target_dir = "assets/pair/target"      # the target the predictors were trained for
  c.kvp_dirs = ml_collections.ConfigDict({  # name -> KVP folder (scripts/train_kvp.py's <workdir>/model)
      "draft": "workdirs/kvp/draft/model",
      "pruned": "workdirs/kvp/pruned/model"})
  c.pair_name = "the embedded pair"        # the report's title
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # '' = the target folder's
  c.cache_dir = ".cache/tokens"            # tokenized corpus cache
  c.corpus_root = ""                       # '' = the standard library corpus
  c.exact_tail = ml_collections.ConfigDict()  # name -> exact tail used instead of the folder's own
  c.max_seq_len = 2048                     # load-time override: a 1024-token prompt + 128 new tokens
  c.phases = tuple(args["phases"].split("+"))  # quality, timing (TTFT + latency), latency, tasks
  unknown = [p for p in c.phases if p not in PHASES]
  if unknown:
    raise ValueError(f"configs/kvp_eval.py: phases must be {', '.join(PHASES)} joined by +, "
                     f"got {args['phases']!r}")
  c.out_dir = "results/toy"                # kvp.json, kvp.md, kvp_pareto.png

  c.ttft_prompt_lens = (256, 512, 1024)    # TTFT prompt lengths
  c.warmup = 2                             # untimed calls per TTFT measurement (the first compiles)
  c.repeats = 9                            # timed calls; the median is reported

  c.quality = ml_collections.ConfigDict()
  c.quality.num_windows = 64               # validation windows, evenly spaced in the split
  c.quality.prompt_len = 192               # within the predictors' training range [16, 192]
  c.quality.continuation = 64              # prompt + continuation = the target's training length
  c.quality.humaneval_limit = 0            # HumanEval problems scored; 0 = all 164
  c.quality.humaneval_prefix = 0           # > 0: validation-split code tokens before each prompt
  c.quality.tail = 0                       # > 0: also score the target on the last `tail` prompt tokens
  c.quality.rows = 8                       # batch rows per scoring call

  c.latency = ml_collections.ConfigDict()
  c.latency.aux = "draft"                  # which KVP the +KVP settings use
  c.latency.draft_dir = ""                 # SpS's draft; '' = that KVP's auxiliary model
  c.latency.prompt_lens = (1024,)          # prompt lengths of the total-latency runs
  c.latency.new_tokens = 128               # new tokens per run (greedy, no eos)
  c.latency.num_draft = 4                  # the paper's K
  c.latency.repeats = 3                    # timed runs after one warm-up; the median is reported
  c.latency.lookup = False                 # also SpS with the draft beside prompt lookup, and lookup
                                           # alone, K from its matches (each +KVP)
  c.latency.lookup_choices = tuple(range(9))  # lookup alone's K set (0..8: num_draft="auto"'s)

  # Task quality on long-prompt variants of Table 1's tasks (eval/kvp/tasks.py).
  c.tasks = ml_collections.ConfigDict()
  c.tasks.aux = "draft"                    # which KVP (a kvp_dirs name)
  c.tasks.num_items = 8                    # HumanEval problems and stand-in items, from the first
  c.tasks.context_tokens = 1024            # validation-split code before each HumanEval prompt
  c.tasks.shots = 4                        # solved examples before each summarization item
  c.tasks.max_doc_chars = 1000             # per document, each shot's included (Table 1's)
  c.tasks.max_new_tokens = 128             # Table 1's
  c.tasks.pad_to = 128                     # prompt width rounding (one batch a variant)
  c.tasks.timeout_s, c.tasks.workers = 3.0, 2  # HumanEval execution
  c.tasks.docsum_dir = "workdirs/docsum"   # the stand-in, built once

  if args["pair"] == "smollm2":
    c.pair_name = "the real pair (SmolLM2-135M-Instruct)"
    c.target_dir, c.tokenizer, c.out_dir = "smollm2-135m-instruct", "", "results"
    c.kvp_dirs = ml_collections.ConfigDict({"pruned4": "assets/smollm2/kvp"})
    if args["stage1"]:  # configs/kvp.py's first stage beside it: as trained, and with a tail
      c.kvp_dirs.stage1 = c.kvp_dirs.stage1_tail16 = args["stage1"]
      c.exact_tail.stage1_tail16 = 16
    c.max_seq_len = 8192                   # the target's own: its fingerprint (the feature draft names it) unchanged
    c.ttft_prompt_lens, c.warmup, c.repeats = (512, 1024, 2048), 1, 5
    c.quality.num_windows, c.quality.prompt_len, c.quality.continuation = 32, 1024, 64
    c.quality.humaneval_prefix, c.quality.tail, c.quality.rows = 1024, 16, 4
    c.quality.humaneval_limit = 40         # the first 40 problems: each long row costs ~5 s
    c.latency.aux, c.latency.draft_dir = "pruned4", "assets/smollm2/feature_draft"
    c.latency.prompt_lens, c.latency.num_draft, c.latency.lookup = (1024, 2048), 3, True
    c.tasks.aux = "pruned4"
  if args["tail"]:
    if not args["tail"].isdigit():
      raise ValueError(f"configs/kvp_eval.py: tail must be a whole number >= 0, got {args['tail']!r}")
    for name in c.kvp_dirs:
      c.exact_tail[name] = int(args["tail"])
  if args["runlocal"]:
    c.ttft_prompt_lens, c.warmup, c.repeats = (32, 64), 1, 2
    c.quality.num_windows, c.quality.prompt_len, c.quality.continuation = 4, 16, 8
    c.quality.humaneval_limit = 4
    c.latency.prompt_lens, c.latency.new_tokens, c.latency.repeats = (32,), 8, 1
    c.latency.lookup_choices = (0, 2)
    c.tasks.update(num_items=2, context_tokens=24, shots=1, max_doc_chars=120, max_new_tokens=4,
                   pad_to=16, workers=1)
  return c
