r"""The first-call overhead of num_draft="auto" against a fixed K, per batch size.

  nice -n 10 python scripts/auto_overhead.py --batches=1,8,64,2000
  python scripts/auto_overhead.py --batches=1,2 --max_new_tokens=4 --output_dir=/tmp/auto

Writes <output_dir>/auto_first_call.json and, when <output_dir>/benchmark.json
exists, adds the table to it and re-renders benchmark.md (rerun this after
scripts/benchmark.py). specsample/eval/speed/auto_overhead.py says what is measured.
"""

import json
import os
import sys

from absl import flags
import jax

from specsample import cli, paths
from specsample.eval.speed import auto_overhead
from specsample.eval.speed import report
from specsample.models import io as model_io
from specsample.tokenizer import Tokenizer
from specsample.utils import write_atomic

_PAIR = flags.DEFINE_string("pair", "assets/pair", "Folder with target/ and draft/.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "assets/tokenizer/tokenizer.model", "Tokenizer.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8", "64", "2000"], "Batch sizes (rows).")
_NEW = flags.DEFINE_integer("max_new_tokens", 8, "New tokens per row.")
_K = flags.DEFINE_integer("num_draft", 4, "The fixed K compared with auto.")
_AUTO = flags.DEFINE_string("auto", "auto", "num_draft of the adaptive calls: auto, or K,K,...")
_OUT = flags.DEFINE_string("output_dir", "results", "Where the JSON (and benchmark.md) go.")


def main(argv):
  del argv
  batches = [int(b) for b in _BATCHES.value]
  if not batches or min(batches) < 1:
    raise ValueError(f"batches must be ints >= 1, got {_BATCHES.value}")
  pair = cli.resolve_path(_PAIR.value)
  target = model_io.load_lm(os.path.join(pair, "target"))
  draft = model_io.load_lm(os.path.join(pair, "draft"))
  prompt = Tokenizer.load(cli.resolve_path(_TOKENIZER.value)).encode(auto_overhead.PROMPT,
                                                                      add_bos=True)
  auto = "auto" if _AUTO.value == "auto" else tuple(int(k) for k in _AUTO.value.split(","))
  result = auto_overhead.measure(target, draft, prompt, batches, _NEW.value, _K.value, auto)
  result["command"] = " ".join(["python"] + sys.argv)
  if jax.process_index() != 0:
    return
  write_atomic({os.path.join(_OUT.value, "auto_first_call.json"): json.dumps(result, indent=1)})
  bench = os.path.join(_OUT.value, "benchmark.json")
  if paths.exists(bench):
    results = json.loads(paths.read_text(bench))
    results["auto_first_call"] = result
    report.write_results(results, _OUT.value)
  print("\n".join(auto_overhead.markdown(result)))


if __name__ == "__main__":
  cli.run(main)
