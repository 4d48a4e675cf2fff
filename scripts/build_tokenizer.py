"""Builds the corpus and trains the project tokenizer.

Writes `<outdir>/tokenizer.model` (+ `.vocab`) and the corpus statistics JSON,
then checks the exact round trip `decode(encode(f)) == f` file by file and
reports characters per token.

  python scripts/build_tokenizer.py --config=configs/tokenizer.py \
      --outdir=assets/tokenizer
"""

import os
import sys

# Runs from a plain checkout too (no `pip install -e .` needed): put the repo
# root, the parent of scripts/, first on the import path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from specsample import cli, tokenizer_build

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_ROOT, "configs/tokenizer.py"),
    "Tokenizer config file.", lock_config=True)
_OUTDIR = flags.DEFINE_string(
    "outdir", "assets/tokenizer", "Folder for tokenizer.model and .vocab.")


def main(argv):
  del argv
  tokenizer_build.build_tokenizer(_CONFIG.value, _OUTDIR.value)


if __name__ == "__main__":
  cli.run(main)
