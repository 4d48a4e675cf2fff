r"""Reproduce Table 1 (Chen et al. 2023). See configs/reproduce.py for the commands and fields.

  nice -n 10 python scripts/reproduce.py                                  # the real pair
  python scripts/reproduce.py --config=configs/reproduce.py:toy           # the embedded pair

Writes results/table1.{md,csv,json} and results/table1_*.png; cell records go
to --workdir, so a killed run resumes. Prints the markdown table at the end.
A bad setting or a missing model prints one line and exits with status 2.
"""

import sys

from absl import flags
from ml_collections import config_flags

from specsample import cli
from specsample.eval.table1 import reproduce

_CONFIG = config_flags.DEFINE_config_file(
    "config", cli.repo_path("configs/reproduce.py"),
    "Reproduction config file (:toy, :runlocal or :full).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/reproduce",
                               "Cell records; a rerun reuses the finished ones.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "results", "Where table1.* and plots go.")


def main(argv):
  del argv
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "draft_dir", "tokenizer", "xsum.path"))
  results = reproduce.run(config, _WORKDIR.value, _RESULTS_DIR.value,
                          command=" ".join(sys.argv), start=lambda: cli.start_jax(False))
  print(results["markdown"])
  if config.strict_parity and not results["parity_ok"]:
    sys.exit(f"{results['parity_failures']} parity check(s) failed (config.strict_parity)")


if __name__ == "__main__":
  cli.run(main)
