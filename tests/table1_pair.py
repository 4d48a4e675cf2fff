"""The tiny random pair the Table 1 tests run on (tests/test_reproduce*.py)."""

import os

import jax
import numpy as np
import pytest

from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.models.presets import get_preset
from specsample.tokenizer import Tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO_ROOT, "assets", "tokenizer", "tokenizer.model")


def _random_params(config, seed: int):
  """Random parameters drawn with numpy (flax init costs ~30 s here on a loaded CPU).

  Norm scales 1, dense weights N(0, 1 / fan_in), embeddings N(0, 0.3^2): the
  next-token distributions are neither uniform nor one-hot.
  """
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return np.ones(shape.shape, np.float32)
    std = 0.3 if "embedding" in name else np.prod(shape.shape[:-1]) ** -0.5
    return (rng.standard_normal(shape.shape) * std).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, tr.param_shapes(config))


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
  """A random tiny target (2 layers) and draft (1 layer) saved with io.save_lm."""
  root = tmp_path_factory.mktemp("pair")
  fingerprint = Tokenizer.load(TOKENIZER).fingerprint
  target_cfg = get_preset("tiny", vocab_size=4096, max_seq_len=1024)
  for name, cfg, seed in (("target", target_cfg, 0),
                          ("draft", target_cfg.replace(num_layers=1), 1)):
    model_io.save_lm(str(root / name), cfg, _random_params(cfg, seed), tokenizer_id=fingerprint)
  return root
