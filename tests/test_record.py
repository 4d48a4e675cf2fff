"""Recording the target while it generates (alignment/record.py): what is kept equals a
teacher-forced forward over the recorded rows, and a killed run resumes shard by shard."""

import glob
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from conftest import write_tiny_setup
from specsample import corpus as corpus_lib
from specsample.alignment import record
from specsample.eval.tasks import chat
from specsample.tokenizer import Tokenizer
from specsample.models import io as model_io
from specsample.models import transformer as tr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("record_config", os.path.join(REPO, "configs", "record.py"))
record_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_config)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  root = write_tiny_setup(tmp_path_factory.mktemp("record"), max_seq_len=128)
  c = record_config.get_config("runlocal")
  c.target_dir, c.tokenizer = str(root / "target"), os.path.join(REPO, "assets", "tokenizer",
                                                                 "tokenizer.model")
  c.corpus_root, c.data_dir = str(root / "corpus"), str(root / "data")
  c.kinds = ("code",)
  record.run(c)
  return c, root


def test_recorded_distributions_and_features_equal_a_teacher_forced_pass(recorded):
  c, _ = recorded
  target = model_io.load_lm(c.target_dir)
  forward = jax.jit(lambda ids: tr.forward_with_hidden(target.config, target.params, ids))
  shards = sorted(glob.glob(os.path.join(c.data_dir, "shard-*.npz")))
  assert len(shards) == c.num_shards
  for path in shards:
    with np.load(path) as d:
      assert json.loads(str(d["info"]))["kind"] == "code"
      for b in range(len(d["tokens"])):
        n, p = int(d["length"][b]), int(d["prompt_len"][b])
        assert p >= c.min_prompt_tokens and n == p + c.max_new_tokens  # no eos in a random model's 6
        logits, _, hidden = forward(d["tokens"][b:b + 1, :n])
        logp, ids = jax.lax.top_k(jax.nn.log_softmax(logits[0, :n - 1]), c.topk)
        np.testing.assert_array_equal(d["topk_ids"][b, :n - 1], ids)
        np.testing.assert_allclose(d["topk_logp"][b, :n - 1].astype(np.float32), logp, atol=5e-3)
        np.testing.assert_allclose(d["hidden"][b, :n - 1].astype(np.float32), hidden[0, :n - 1],
                                   rtol=2e-3, atol=2e-3)
        greedy = json.loads(str(d["info"]))["setting"] == "greedy"
        if greedy:  # the continuation is the target's argmax at every generated position
          np.testing.assert_array_equal(d["tokens"][b, p:n], d["topk_ids"][b, p - 1:n - 1, 0])


def test_resume_keeps_written_shards_and_refuses_another_target(recorded, tmp_path):
  c, root = recorded
  first = sorted(glob.glob(os.path.join(c.data_dir, "shard-*.npz")))
  os.remove(first[-1])
  stamps = {p: os.path.getmtime(p) for p in first[:-1]}
  record.run(c)
  assert {p: os.path.getmtime(p) for p in first[:-1]} == stamps and os.path.exists(first[-1])
  c2 = c.copy_and_resolve_references()
  c2.target_dir = str(root / "draft")
  with pytest.raises(ValueError, match="made by another target"):
    record.run(c2)


def test_bad_fields_are_named():
  c = record_config.get_config("runlocal")
  c.kinds = ("poems",)
  with pytest.raises(ValueError, match=r"config.kinds must be a non-empty tuple of \('code'"):
    record.check_config(c)
  c = record_config.get_config("runlocal")
  c.min_prompt_tokens = 100
  with pytest.raises(ValueError, match="config.min_prompt_tokens=100 exceeds max_prompt_tokens=60"):
    record.check_config(c)


def _feature_config(c, tmp):
  spec = importlib.util.spec_from_file_location("fd_config", os.path.join(REPO, "configs", "feature_draft.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  f = module.get_config("runlocal")
  f.target_dir, f.data_dir, f.head_size = c.target_dir, c.data_dir, 64
  return f


def test_feature_draft_training_resumes_exactly_and_exports(recorded, tmp_path):
  """Killed after step 2 and resumed = run straight to step 4; --export of the last
  checkpoint = the saved model; training never runs the target (only reads shards)."""
  from specsample.alignment import feature_train  # pylint: disable=g-import-not-at-top
  from specsample.models import feature_draft as fd  # pylint: disable=g-import-not-at-top
  c, _ = recorded
  f = _feature_config(c, tmp_path)
  straight = fd.load(feature_train.run(f, str(tmp_path / "straight")))
  f.stop_after_step = 2
  feature_train.run(f, str(tmp_path / "resumed"))
  f.stop_after_step = 0
  resumed = fd.load(feature_train.run(f, str(tmp_path / "resumed")))
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.params, straight.params)
  np.testing.assert_array_equal(resumed.head_ids, straight.head_ids)
  exported = fd.load(feature_train.export(f, str(tmp_path / "straight")))
  jax.tree_util.tree_map(np.testing.assert_array_equal, exported.params, straight.params)
  assert exported.tokenizer_id == model_io.load_lm(c.target_dir).tokenizer_id


def test_feature_training_reads_every_recorded_set_of_its_target(recorded, tmp_path):
  """extra_data_dirs: each set's shards join the run, each with its own held-out split;
  a set recorded from another target, or a bad field, is named before anything loads."""
  import shutil  # pylint: disable=g-import-not-at-top
  from specsample.alignment import data as data_lib  # pylint: disable=g-import-not-at-top
  from specsample.alignment import feature_train  # pylint: disable=g-import-not-at-top
  c, _ = recorded
  fingerprint = data_lib.params_fingerprint(model_io.load_lm(c.target_dir))
  other = str(tmp_path / "other")
  shutil.copytree(c.data_dir, other)
  f = _feature_config(c, tmp_path)
  f.val_every = 2
  _, train_one, val_one = feature_train.run_shards(f, fingerprint)
  f.extra_data_dirs = (other,)
  manifest, train, val = feature_train.run_shards(f, fingerprint)
  assert manifest["target"] == fingerprint and train_one and val_one
  assert train == train_one + [p.replace(c.data_dir, other) for p in train_one]
  assert val == val_one + [p.replace(c.data_dir, other) for p in val_one]
  with open(os.path.join(other, "manifest.json")) as fh:
    made = json.load(fh)
  made["target"] = "0" * 16
  with open(os.path.join(other, "manifest.json"), "w") as fh:
    json.dump(made, fh)
  with pytest.raises(ValueError, match=f"{other} was recorded from another target"):
    feature_train.run_shards(f, fingerprint)
  with f.ignore_type():
    f.extra_data_dirs = "not a tuple"
  with pytest.raises(ValueError, match="config.extra_data_dirs must be a tuple"):
    feature_train.check_config(f)


def test_code_chat_prompts_are_table1_humaneval_turns_of_training_code(recorded):
  """The code_chat kind: training-split prefixes in Table 1's chat format, within the budget."""
  _, root = recorded
  tok = Tokenizer.load(os.path.join(REPO, "tests", "fixtures", "gguf", "smollm2_tokenizer.gguf"))
  files = corpus_lib.build_corpus(root=str(root / "corpus")).train
  prompts = record.code_chat_prompts(files, tok, 3, 8, 160, (0, 5))
  assert len(prompts) == 3 and all(len(p) <= 160 for p in prompts)
  assert prompts == record.code_chat_prompts(files, tok, 3, 8, 160, (0, 5))  # a function of the seed
  for ids in prompts:
    # decode drops the template's special tokens (<|im_start|> ...): split on what is left.
    head, prefix = tok.decode(ids).split(f"\nassistant\n{chat.FENCE}python\n")
    assert f"{chat.HUMANEVAL_INSTRUCTION}{chat.FENCE}python\n{prefix}{chat.FENCE}" in head
    assert tok.encode(chat.humaneval_prompt(tok, prefix), add_bos=tok.add_bos_token) == ids
  with pytest.raises(ValueError, match="config.max_prompt_tokens=40 leaves no room"):
    record.code_chat_prompts(files, tok, 1, 8, 40, (0,))
