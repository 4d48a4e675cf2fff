r"""Record the target's continuations, top-k log-probs and features. See configs/record.py.

  python scripts/record_target.py --config=configs/record.py

A bad setting or a missing model prints one line and exits 2.
"""

from ml_collections import config_flags

from specsample import cli
from specsample.alignment import record

_CONFIG = config_flags.DEFINE_config_file("config", cli.repo_path("configs/record.py"),
                                          "Recording config file.", lock_config=True)


def main(argv):
  del argv
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "tokenizer", "data_dir"))
  record.check_config(config)
  cli.start_jax(False)
  print(record.run(config))


if __name__ == "__main__":
  cli.run(main)
