r"""Prompt lookup, a draft and both against autoregressive. See configs/drafting.py.

  python scripts/drafting.py --config=configs/drafting.py --config.output_dir=results/drafting_smollm2
"""

import sys

from ml_collections import config_flags

from specsample import cli
from specsample.eval.speed import drafting

_CONFIG = config_flags.DEFINE_config_file("config", cli.repo_path("configs/drafting.py"),
                                          "Drafting benchmark config.", lock_config=True)


def main(argv):
  del argv
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "tokenizer", "draft_dir", "cache_dir", "output_dir"))
  cli.start_jax(False)
  result = drafting.run(config, " ".join(["python"] + sys.argv))
  print(drafting.markdown(result))


if __name__ == "__main__":
  cli.run(main)
