r"""Reproduce Table 1 (Chen et al. 2023). See configs/reproduce.py for the commands and fields.

  nice -n 10 python scripts/reproduce.py --config=configs/reproduce.py

Writes results/table1.{md,csv,json} and results/table1_*.png; cell records go
to --workdir, so a killed run resumes. Prints the markdown table at the end.
"""

import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from specsample.eval import reproduce

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/reproduce.py", "Reproduction config file (:runlocal or :full).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/reproduce",
                               "Cell records; a rerun reuses the finished ones.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "results", "Where table1.* and plots go.")


def main(argv):
  del argv
  reproduce.check_config(_CONFIG.value)  # bad values fail before JAX starts any work
  logging.info("devices: %s", jax.devices())
  results = reproduce.run(_CONFIG.value, _WORKDIR.value, _RESULTS_DIR.value,
                          command=" ".join(sys.argv))
  print(results["markdown"])
  if _CONFIG.value.strict_parity and not results["parity_ok"]:
    sys.exit(f"{results['parity_failures']} parity check(s) failed (config.strict_parity)")


if __name__ == "__main__":
  app.run(main)
