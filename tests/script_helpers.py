"""What the script tests share: run a script's absl `main` in-process as the command line
would, and where the repository's files are."""

import importlib.util
import os
import sys
from unittest import mock

from absl import flags
import jax

from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.models.presets import get_preset

# data=2 splits the batch (runlocal's 2), tensor=4 the target's 4 heads, MLP and
# vocabulary; the draft is replicated: two layouts on one mesh.
MESH_FLAGS = ["--config.mesh.data=2", "--config.mesh.tensor=4", "--config.draft_rules=replicated"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "assets", "tokenizer", "tokenizer.model")


def load_module(relpath: str):
  """Imports a script or config file by path.

  Both scripts define the absl flag --config in the global FLAGS, so a
  previously defined one, and the --config.x overrides its parse defined, are
  removed first (tests only; never in the scripts).
  """
  if relpath.startswith("scripts/"):
    for name in [n for n in flags.FLAGS if n == "config" or n.startswith("config.")]:
      delattr(flags.FLAGS, name)
  spec = importlib.util.spec_from_file_location(os.path.basename(relpath)[:-3],
                                                os.path.join(REPO, relpath))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_main(script: str, args: list[str]):
  """Runs scripts/<script>.py's main as `python scripts/<script>.py args` would."""
  module = load_module(f"scripts/{script}.py")
  argv = [f"scripts/{script}.py"] + args
  # config_flags finds the --config.x overrides in sys.argv, as under app.run.
  with mock.patch.object(sys, "argv", argv):
    flags.FLAGS(argv)
    module.main(argv[:1])
  return module


def save_tiny_pair(root) -> tuple[str, str]:
  """(target_dir, draft_dir): two random 1-layer models over the real 4096 vocabulary.

  One layer each keeps the decode loops quick to compile; different seeds make
  the draft disagree with the target.
  """
  cfg = get_preset("tiny", vocab_size=4096, max_seq_len=128, num_layers=1)
  dirs = []
  for name, seed in (("target", 0), ("draft", 1)):
    dirs.append(model_io.save_lm(str(root / name), cfg, tr.init_params(cfg, jax.random.key(seed)),
                                 store_dtype="float32"))
  return tuple(dirs)
