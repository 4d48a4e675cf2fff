"""models.io.load_draft: a model folder gives an LM, a feature-draft folder a FeatureDraft, and
a draft made for another tokenizer, target shape or target is refused in one line naming the
field. No compilation beyond the tiny models' init."""

import os

import jax
import numpy as np
import pytest

from specsample.models import feature_draft as fd
from specsample.models import io as model_io
from specsample.models import presets
from specsample.models import transformer as tr
from specsample.models.lm import LM, params_fingerprint


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """A tiny target, an LM draft and a feature draft made for that target, saved."""
  root = tmp_path_factory.mktemp("drafts")
  cfg = presets.get_preset("tiny", vocab_size=16, max_seq_len=64)
  model_io.save_lm(str(root / "target"), cfg, tr.init_params(cfg, jax.random.key(0)),
                   tokenizer_id="tok", store_dtype="float32")
  model_io.save_lm(str(root / "lm_draft"), cfg.replace(num_layers=1),
                   tr.init_params(cfg.replace(num_layers=1), jax.random.key(1)),
                   tokenizer_id="tok", store_dtype="float32")
  target = model_io.load_lm(str(root / "target"))
  draft_cfg = fd.config_for(cfg, head_size=8)
  params = fd.init_params(draft_cfg, jax.random.key(2))

  def save_feature(name, tokenizer_id="tok", made_for=None, config=draft_cfg, p=params):
    return fd.save(str(root / name), config, p, np.arange(8), tokenizer_id=tokenizer_id,
                   extra={"target": made_for or params_fingerprint(target)})

  save_feature("feature")
  save_feature("other_tokenizer", tokenizer_id="another")
  save_feature("other_target", made_for="0123456789abcdef")
  wide = fd.config_for(cfg.replace(d_model=cfg.d_model * 2, head_dim=cfg.head_dim * 2), 8)
  save_feature("other_width", config=wide, p=fd.init_params(wide, jax.random.key(3)))
  return root, target


def test_model_folder_loads_as_an_lm_and_a_feature_draft_as_one(folders):
  root, target = folders
  lm = model_io.load_draft(str(root / "lm_draft"), target)
  assert isinstance(lm, LM) and lm.config.num_layers == 1
  feature = model_io.load_draft(str(root / "feature"), target)
  assert isinstance(feature, fd.FeatureDraft)
  np.testing.assert_array_equal(feature.head_ids, np.arange(8))
  # config.json alone: the block's config for the checks; load_config names the mistake.
  block, meta = model_io.load_draft_config(str(root / "feature"))
  assert meta["kind"] == fd.KIND and (block.d_model, block.vocab_size) == (
      target.config.d_model, target.config.vocab_size)
  assert model_io.load_draft_config(str(root / "lm_draft"))[0] == lm.config
  with pytest.raises(ValueError, match="is a feature draft.*load_draft"):
    model_io.load_config(str(root / "feature"))
  model_io.check_model_dir(str(root / "feature"), "draft_dir")


@pytest.mark.parametrize("name, match", [
    ("other_tokenizer", r"^config\.draft_dir: the draft was trained for another tokenizer"),
    ("other_target", r"^config\.draft_dir: the feature draft was trained on another target"),
    ("other_width", r"^config\.draft_dir: feature draft made for d_model="),
])
def test_a_draft_for_another_tokenizer_or_target_is_refused(folders, name, match):
  root, target = folders
  with pytest.raises(ValueError, match=match) as error:
    model_io.load_draft(str(root / name), target)
  assert "\n" not in str(error.value)
  model_io.load_draft(str(root / name))  # without a target there is nothing to check against


def test_a_target_loaded_with_overrides_skips_only_the_identity_check(folders):
  root, target = folders
  # Another context length or compute dtype is the same target: its drafts load.
  for runtime in (dict(max_seq_len=32), dict(dtype="bfloat16")):
    same = LM(target.config.replace(**runtime), target.params, target.tokenizer_id)
    assert params_fingerprint(same) == params_fingerprint(target)
    model_io.check_draft(fd.load(str(root / "feature")), same)
  # Another function (here its norm's epsilon) is another target.
  other = LM(target.config.replace(norm_eps=1e-3), target.params, target.tokenizer_id)
  with pytest.raises(ValueError, match="another target"):
    model_io.check_draft(fd.load(str(root / "feature")), other)
  model_io.check_draft(fd.load(str(root / "feature")), other, identity=False)


def test_a_feature_draft_without_params_is_named(folders, tmp_path):
  root, _ = folders
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text((root / "feature" / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match=r"config\.draft_dir: .* has no params\.npz"):
    model_io.check_model_dir(str(broken), "draft_dir")
  assert os.path.isfile(root / "feature" / "params.npz")


def test_the_shipped_draft_and_predictor_name_the_same_target():
  """Both SmolLM2 assets were made for one target: each records its identity
  (params_fingerprint: architecture and weights, not max_seq_len or dtypes). The
  target is fetched, not shipped: tests/test_gguf.py checks the fetched one's value."""
  import json  # pylint: disable=g-import-not-at-top
  draft_meta = json.load(open("assets/smollm2/feature_draft/config.json"))
  kvp_meta = json.load(open("assets/smollm2/kvp/kvp.json"))
  assert draft_meta["target"] == kvp_meta["target_fingerprint"]
