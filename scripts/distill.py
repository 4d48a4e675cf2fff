r"""Align the draft to the target by distillation. See configs/distill.py for commands and fields.

  python scripts/distill.py --config=configs/distill.py:loss=tvdpp --workdir=workdirs/align/tvdpp

Builds (or resumes) the distillation set, then fine-tunes the draft; the result
is <workdir>/model. A bad setting or a missing model prints one line and exits 2.
"""

from absl import flags
from ml_collections import config_flags

from specsample import cli
from specsample.alignment import distill

_CONFIG = config_flags.DEFINE_config_file("config", cli.repo_path("configs/distill.py"),
                                          "Distillation config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (resumed if it holds a checkpoint).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "draft_dir", "tokenizer"))
  distill.check_config(config)
  cli.start_jax(False)
  print(distill.run(config, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
