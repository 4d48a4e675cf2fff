r"""Measures the embedded pair and writes results/pair.json.

  python scripts/pair_metrics.py --pair=assets/pair --out=results/pair.json

Records, for the exported (bfloat16-stored, float32-run) target and draft:
parameter counts, validation loss and greedy agreement (the alpha of greedy
speculative decoding) on held-out windows, decode step times timed inside one
jitted loop, c = draft step / target step, and the training runs' final
metrics (specsample/eval/speed/pair.py).
"""

import json

from absl import flags, logging

from specsample import cli
from specsample.eval.speed import pair
from specsample.utils import write_atomic

_PAIR = flags.DEFINE_string("pair", "assets/pair", "Folder with target/ and draft/.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "assets/tokenizer/tokenizer.model", "Tokenizer.")
_OUT = flags.DEFINE_string("out", "results/pair.json", "Output JSON.")
_VAL_BATCHES = flags.DEFINE_integer("val_batches", 16, "Validation batches of 16 x 256 tokens.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  out = pair.measure(cli.resolve_path(_PAIR.value), cli.resolve_path(_TOKENIZER.value),
                     _VAL_BATCHES.value)
  write_atomic({_OUT.value: json.dumps(out, indent=2)})
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  cli.run(main)
