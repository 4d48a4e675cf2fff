"""Training: resumption is exact, broken checkpoints fail clearly, bad configs fail early."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from specsample import checkpoint as ckpt_lib
from specsample.training import data as data_lib
from specsample.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import train as train_config  # noqa: E402


class _Synthetic:
  """A random token stream standing in for the corpus (no tokenizing in tests)."""

  def __init__(self, config):
    stream = np.random.default_rng(0).integers(0, config.model.vocab_size, 5000).astype(np.int32)
    self.train = data_lib.PackedDataset(stream, config.data.seq_len, config.data.batch_size,
                                        seed=config.seed)
    self.val = data_lib.PackedDataset(stream[::-1].copy(), config.data.seq_len,
                                      config.data.batch_size, seed=1)

  def batch_at(self, step):
    return self.train.batch_at(step)

  def val_batches(self, n):
    return [self.val.batch_at(i) for i in range(n)]


def _config(**overrides):
  config = train_config.get_config("model=tiny,runlocal")
  config.num_steps = 6
  config.checkpoint_every = 2
  config.log_every = config.eval_every = 3
  for key, value in overrides.items():
    config[key] = value
  return config


def _same(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  config = _config()
  out = train_lib.train(config, str(tmp_path_factory.mktemp("full")), datasets=_Synthetic(config))
  return out


def test_killed_and_resumed_run_ends_with_identical_params(tmp_path, uninterrupted):
  config = _config(log_every=1)  # logging does not change the params
  data = _Synthetic(config)
  # "Killed" after step 5: the last checkpoint is step 4, so step 5 is redone.
  partial = train_lib.train(config, str(tmp_path), datasets=data, stop_after_step=5)
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 4
  with pytest.raises(AssertionError):
    _same(partial["params"], uninterrupted["params"])  # not trivially equal
  resumed = train_lib.train(config, str(tmp_path), datasets=data)
  _same(resumed["params"], uninterrupted["params"])
  assert resumed["step"] == 6 and np.isfinite(resumed["val_loss"])
  # Step 5 was logged, lost, and redone: metrics.jsonl holds it once.
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_temporary_checkpoint_folder_is_never_picked_up(tmp_path, uninterrupted):
  config = _config()
  train_lib.train(config, str(tmp_path), datasets=_Synthetic(config), stop_after_step=4)
  ckpts = tmp_path / "checkpoints"
  # What a save killed half-way leaves behind: orbax's temporary folder.
  os.makedirs(ckpts / "6.orbax-checkpoint-tmp-1234" / "state")
  assert ckpt_lib.Checkpointer(str(ckpts)).latest_step() == 4
  resumed = train_lib.train(config, str(tmp_path), datasets=_Synthetic(config))
  _same(resumed["params"], uninterrupted["params"])


def test_corrupt_or_missing_checkpoint_gives_clear_error(tmp_path):
  config = _config(num_steps=2)
  train_lib.train(config, str(tmp_path), datasets=_Synthetic(config))
  ckpts = str(tmp_path / "checkpoints")
  checkpointer = ckpt_lib.Checkpointer(ckpts)
  abstract = train_lib.init_state(train_lib.model_config_from(config),
                                  train_lib.make_optimizer(config), 0)
  with pytest.raises(ckpt_lib.CheckpointError, match="step 99 not found"):
    checkpointer.restore(abstract, step=99)
  with pytest.raises(ckpt_lib.CheckpointError, match="no complete checkpoint"):
    ckpt_lib.Checkpointer(str(tmp_path / "empty")).restore(abstract)
  # Damage every data file of the latest step.
  files = [f for f in glob.glob(os.path.join(ckpts, "2", "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and "metadata" not in os.path.basename(f)]
  assert files
  for f in files:
    with open(f, "wb") as fh:
      fh.write(b"garbage")
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/2 is corrupt"):
    train_lib.train(config, str(tmp_path), datasets=_Synthetic(config))


@pytest.mark.parametrize("field,value,message", [
    ("num_steps", 0, "config.num_steps must be a positive int"),
    ("data.batch_size", -1, "config.data.batch_size must be a positive int"),
    ("data.seq_len", 4096, "config.data.seq_len=4096 exceeds"),
    ("optim.peak_lr", 0.0, "config.optim.peak_lr must be > 0"),
    ("model.num_kv_heads", 3, "model.num_kv_heads=3 must divide model.num_heads=4"),
    ("model.d_model", 0, "model.d_model must be a positive int"),
    ("model.head_dim", 6, r"model.num_heads \* model.head_dim must equal model.d_model"),
])
def test_invalid_config_names_the_field(tmp_path, field, value, message):
  config = _config()
  node, _, leaf = field.rpartition(".")
  (config[node] if node else config)[leaf] = value
  with pytest.raises(ValueError, match=message):
    train_lib.train(config, str(tmp_path / "run"))  # fails before data, compile or writes
  assert not os.path.exists(tmp_path / "run")


def test_vocab_mismatch_with_tokenizer_is_an_error(tmp_path):
  config = _config()
  config.tokenizer = os.path.join(REPO, "assets/tokenizer/tokenizer.model")
  with pytest.raises(ValueError, match=r"model.vocab_size=32 does not match the tokenizer"):
    train_lib.train(config, str(tmp_path))


def test_unknown_preset_and_argument():
  with pytest.raises(ValueError, match="model preset 'huge' is unknown; choose one of"):
    train_config.get_config("model=huge")
  with pytest.raises(ValueError, match="unknown argument 'modle'"):
    train_config.get_config("modle=tiny")


def test_train_script_rejects_wrong_type_before_work(tmp_path):
  """The absl/ml_collections path: a wrong type names the field and the script exits."""
  proc = subprocess.run(
      [sys.executable, "scripts/train.py", "--config=configs/train.py:model=tiny,runlocal",
       f"--workdir={tmp_path}/run", "--config.num_steps=many"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "num_steps" in proc.stderr and "many" in proc.stderr
  assert not os.path.exists(tmp_path / "run")
