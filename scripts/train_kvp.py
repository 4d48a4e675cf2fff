r"""Train a KV Prediction auxiliary model and predictor. See configs/kvp.py for commands and fields.

  python scripts/train_kvp.py --config=configs/kvp.py:aux=draft --workdir=workdirs/kvp/draft

Resumes from <workdir>'s last checkpoint; the result is <workdir>/model. A bad
setting or a missing model prints one line and exits 2.
"""

from absl import flags
from ml_collections import config_flags

from specsample import cli
from specsample.training import kvp_train

_CONFIG = config_flags.DEFINE_config_file("config", cli.repo_path("configs/kvp.py"),
                                          "KV Prediction training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (resumed if it holds a checkpoint).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "aux_dir", "tokenizer"))
  kvp_train.check_config(config)
  cli.start_jax(False)
  print(kvp_train.run(config, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
