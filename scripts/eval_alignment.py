r"""Evaluate aligned drafts: results/alignment.{json,md} and alignment_tau.png. See configs/align_eval.py.

  python scripts/eval_alignment.py --config=configs/align_eval.py --output_dir=results
"""

import sys

from absl import flags
from ml_collections import config_flags

from specsample import cli
from specsample.alignment import evaluate

_CONFIG = config_flags.DEFINE_config_file("config", cli.repo_path("configs/align_eval.py"),
                                          "Evaluation config file.", lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results", "Where the results are written.")


def main(argv):
  del argv
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "tokenizer"))
  config.drafts = tuple(f"{name}={cli.resolve_path(path)}"
                        for name, path in evaluate.parse_drafts(config.drafts))
  cli.start_jax(False)
  results = evaluate.run(config)
  for path in evaluate.write_results(results, _OUTPUT_DIR.value, " ".join(["python"] + sys.argv)):
    print("wrote", path)


if __name__ == "__main__":
  cli.run(main)
