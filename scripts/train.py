r"""Train a model. See configs/train.py for the commands and every field.

  python scripts/train.py --config=configs/train.py:model=target_small --workdir=workdirs/target_small
"""

from absl import flags, logging
import jax
from ml_collections import config_flags

from specsample import cli, distributed
from specsample.training import train as train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (resumed if it holds a checkpoint).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  distributed.maybe_initialize()
  logging.info("devices: %s", jax.devices())
  metrics = train_lib.train(_CONFIG.value, _WORKDIR.value)
  print({k: v for k, v in metrics.items() if k != "params"})


if __name__ == "__main__":
  cli.run(main)
