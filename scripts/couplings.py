r"""Acceptance and speed of the Gumbel-max coupling against rejection sampling; writes
results/couplings.json and results/couplings.md (specsample/eval/speed/couplings.py).

  flock /tmp/timing.lock python scripts/couplings.py

Defaults: the embedded pair, the benchmark's 8 HumanEval prompts (last 96
tokens), 64 new tokens, K = 4, nucleus (temperature 0.8, top_p 0.95) and
temperature 1, batch 1 and 8.
"""

import json

from absl import flags, logging

from specsample import cli
from specsample.eval.speed import couplings
from specsample.utils import write_atomic

_OUT = flags.DEFINE_string("out", "results/couplings", "Output path without extension.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed passes of each loop, interleaved.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "New tokens per row.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  results = couplings.run(target_dir=cli.resolve_path("assets/pair/target"),
                          draft_dir=cli.resolve_path("assets/pair/draft"),
                          tokenizer=cli.resolve_path("assets/tokenizer/tokenizer.model"),
                          repeats=_REPEATS.value, max_new_tokens=_MAX_NEW.value)
  results["command"] = "python scripts/couplings.py" + (
      f" --repeats={_REPEATS.value}" if _REPEATS.value != 2 else "")
  markdown = couplings.format_markdown(results)
  write_atomic({_OUT.value + ".json": json.dumps(results, indent=2),
                _OUT.value + ".md": markdown})
  print(markdown)


if __name__ == "__main__":
  cli.run(main)
