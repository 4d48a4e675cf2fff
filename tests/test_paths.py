"""specsample.paths: local paths and gs:// (served by tests/object_store.py, no network),
atomic writes per backend, the commit markers of checkpoints and model folders, and
the bad-input errors (missing client library, unwritable bucket)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specsample import checkpoint as ckpt_lib
from specsample import cli, paths
from specsample.models import io as model_io
from specsample.models.presets import get_preset
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer
from specsample.training import train as train_lib

from object_store import fake_gcs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_GCS_CLIENT = any(importlib.util.find_spec(m) is not None for m in ("gcsfs", "tensorflow"))


@pytest.fixture
def gcs():
  with fake_gcs(buckets=("bucket", "readonly"), read_only=("readonly",)) as store:
    yield store


@pytest.mark.parametrize("root", ["local", "gs://bucket/run"])
def test_files_round_trip_on_both_backends(root, tmp_path, gcs):
  root = str(tmp_path / "run") if root == "local" else root
  paths.write_atomic({f"{root}/a.json": '{"x": 1}', f"{root}/sub/b.bin": b"\x00\xff"})
  assert json.loads(paths.read_text(f"{root}/a.json")) == {"x": 1}
  assert paths.read_bytes(f"{root}/sub/b.bin") == b"\x00\xff"
  assert paths.isfile(f"{root}/a.json") and not paths.isfile(f"{root}/sub")
  assert paths.isdir(f"{root}/sub") and sorted(paths.listdir(root)) == ["a.json", "sub"]
  paths.append_line(f"{root}/m.jsonl", '{"step": 1}')
  paths.append_line(f"{root}/m.jsonl", '{"step": 2}')
  assert paths.read_text(f"{root}/m.jsonl") == '{"step": 1}\n{"step": 2}\n'
  assert paths.glob(f"{root}/*.json*") == [f"{root}/a.json", f"{root}/m.jsonl"]
  assert paths.walk_files(root) == ["a.json", "m.jsonl", "sub/b.bin"]
  with paths.local_file(f"{root}/c.npy") as tmp:
    np.save(tmp, np.arange(4))
  with paths.open_file(f"{root}/c.npy", "rb") as f:
    np.testing.assert_array_equal(np.load(f), np.arange(4))
  paths.copy(f"{root}/a.json", str(tmp_path / "copied.json"))
  assert paths.read_text(str(tmp_path / "copied.json")) == '{"x": 1}'
  # Nothing half-written or temporary is left beside the files.
  assert paths.walk_files(root) == ["a.json", "c.npy", "m.jsonl", "sub/b.bin"]
  paths.rmtree(root)
  assert not paths.exists(f"{root}/a.json")
  assert gcs.renames == 0  # the bucket path never relies on a rename


@pytest.mark.parametrize("root", ["local", "gs://bucket/run"])
def test_failed_write_keeps_the_old_file(root, tmp_path, gcs):
  root = str(tmp_path) if root == "local" else root
  target = f"{root}/cache.npy"
  paths.write_atomic({target: b"old"})
  with pytest.raises(RuntimeError):
    with paths.local_file(target) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("killed mid-write")
  assert paths.read_bytes(target) == b"old"
  assert paths.listdir(root) == ["cache.npy"]


def test_bucket_paths_are_not_made_local():
  assert cli.resolve_path("gs://bucket/pair/target") == "gs://bucket/pair/target"
  assert paths.absolute("gs://bucket/x") == "gs://bucket/x"
  assert paths.absolute("x") == os.path.abspath("x")
  assert not paths.supports_rename("gs://bucket/x") and paths.supports_rename("/tmp/x")


def test_consumers_read_and_write_buckets(gcs):
  """The tokenizer, prompt files and model configs load from gs:// like local files."""
  tok = Tokenizer.load(os.path.join(REPO, "assets/tokenizer"))
  tok.save("gs://bucket/tok")
  assert Tokenizer.load("gs://bucket/tok").fingerprint == tok.fingerprint
  paths.write_atomic({"gs://bucket/prompts.txt": "def f(x):\nclass A:\n"})
  from specsample import sample_file
  assert [r["prompt"] for r in sample_file.read_prompts("gs://bucket/prompts.txt")] == [
      "def f(x):", "class A:"]
  src = os.path.join(REPO, "assets/pair/draft/config.json")
  paths.copy(src, "gs://bucket/draft/config.json")
  model_io.check_model_dir("gs://bucket/draft", "draft_dir")
  assert model_io.load_config("gs://bucket/draft")[0] == model_io.load_config(
      os.path.dirname(src))[0]
  with pytest.raises(FileNotFoundError, match="config.target_dir"):
    model_io.check_model_dir("gs://bucket/none", "target_dir")


def test_resumed_run_truncates_bucket_metrics(gcs):
  """A resumed run drops the metrics rows logged after its checkpoint, on a bucket too
  (objects cannot be appended to or truncated: the object is rewritten whole)."""
  path = "gs://bucket/run/metrics.jsonl"
  for step in (10, 20, 30):
    paths.append_line(path, json.dumps({"step": step, "loss": 1.0}))
  train_lib._truncate_metrics(path, 20)  # pylint: disable=protected-access
  assert [json.loads(l)["step"] for l in paths.read_text(path).splitlines()] == [10, 20]
  assert gcs.renames == 0


def test_unwritable_bucket_fails_before_training(gcs, monkeypatch):
  """The write probe runs before data, optimizer or compile: make_optimizer must not be reached."""
  monkeypatch.setattr(train_lib, "make_optimizer",
                      lambda *_: pytest.fail("training started on an unwritable bucket"))
  config = _train_config()
  for workdir, why in (("gs://readonly/run", "PermissionError"),
                       ("gs://nosuchbucket/run", "FileNotFoundError")):
    with pytest.raises(ValueError, match=f"workdir: cannot write to {workdir} .{why}"):
      train_lib.train(config, workdir, datasets=object())


@pytest.mark.skipif(HAS_GCS_CLIENT, reason="a gs:// client is installed here")
def test_missing_client_is_one_line():
  """scripts/train.py with a gs:// workdir and no gcsfs: exit 2, one line naming the package."""
  proc = subprocess.run(
      [sys.executable, "scripts/train.py", "--config=configs/train.py:model=tiny,runlocal",
       "--workdir=gs://bucket/run"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == cli.USER_ERROR_STATUS, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "gs:// paths need the gcsfs package: pip install gcsfs" in last, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def _train_config():
  spec = importlib.util.spec_from_file_location("train_config", os.path.join(REPO, "configs/train.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("model=tiny,runlocal")


def test_checkpoints_without_rename_use_the_commit_marker(tmp_path, monkeypatch):
  """Where rename is not atomic (buckets; forced here on local disk) a step without
  orbax's commit_success.txt, i.e. one whose save died, is never the latest."""
  monkeypatch.setattr(paths, "supports_rename", lambda _: False)
  state = {"w": jnp.zeros(3)}
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), save_every=1)
  for step in (1, 2):
    ckpt.save(step, {"w": jnp.full(3, float(step))}, {"step": step})
  ckpt.wait()
  ckpt.close()
  assert (tmp_path / "2" / "commit_success.txt").exists()
  os.remove(tmp_path / "2" / "commit_success.txt")  # step 2's save "killed" before its marker
  step, restored, meta = ckpt_lib.Checkpointer(str(tmp_path)).restore(state)
  assert step == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(restored["w"], np.ones(3))


def test_model_folder_without_rename_is_committed_by_config_json(tmp_path, monkeypatch):
  """save_lm's bucket path (forced on local disk): params go to params-<id>/ and
  config.json, written last, names them. A save that dies before config.json
  leaves the previous model loadable; the next save removes the stray folder."""
  monkeypatch.setattr(paths, "supports_rename", lambda _: False)
  config = get_preset("tiny", vocab_size=16)
  params = [jax.tree_util.tree_map(lambda x, v=v: jnp.full(x.shape, v, jnp.float32),
                                   tr.param_shapes(config)) for v in (1.0, 2.0, 3.0)]
  directory = str(tmp_path / "model")

  def loaded():
    return jax.tree_util.tree_leaves(model_io.load_lm(directory).params)[0].ravel()[0]

  model_io.save_lm(directory, config, params[0], store_dtype="float32")
  first = json.loads(paths.read_text(f"{directory}/config.json"))["params_dir"]
  assert loaded() == 1.0

  monkeypatch.setattr(model_io.utils, "write_atomic",
                      lambda files: (_ for _ in ()).throw(OSError("preempted")))
  with pytest.raises(OSError, match="preempted"):
    model_io.save_lm(directory, config, params[1], store_dtype="float32")
  assert loaded() == 1.0  # the interrupted save is invisible
  monkeypatch.undo()
  monkeypatch.setattr(paths, "supports_rename", lambda _: False)

  model_io.save_lm(directory, config, params[2], store_dtype="float32")
  assert loaded() == 3.0
  names = sorted(os.listdir(directory))
  assert len(names) == 2 and names[0] == "config.json" and names[1].startswith("params-")
  assert first not in names


class _PathsCheckpointer:
  """orbax's StandardCheckpointer writing one .npz object through specsample.paths: orbax
  writes arrays with tensorstore, which talks to real GCS, not to the in-memory bucket."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def save(self, directory, tree):
    leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
    with paths.local_file(f"{directory}/arrays.npz") as tmp:
      np.savez(tmp, *leaves)

  def wait_until_finished(self):
    pass

  def restore(self, directory, abstract):
    with paths.open_file(f"{directory}/arrays.npz", "rb") as f:
      arrays = np.load(f)
      leaves = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)


def test_kv_predictor_saves_to_and_loads_from_a_bucket(gcs, monkeypatch):
  """save_kvp on gs://: no folder rename; kvp.json, written last, names the predictor's
  folder; a second save replaces it and leaves no stray predictor behind."""
  from specsample.decoding import LM, kv_prediction as kvpd
  from specsample.models import kv_predictor as kp
  monkeypatch.setattr(model_io.ocp, "StandardCheckpointer", _PathsCheckpointer)
  config = get_preset("tiny", vocab_size=16)
  target = LM(config, tr.init_params(config, jax.random.key(0)))
  aux_cfg = config.replace(num_layers=1)
  aux = LM(aux_cfg, tr.init_params(aux_cfg, jax.random.key(1)))
  kvp_cfg = kp.KVPConfig(config, aux_cfg).validate()
  folder = "gs://bucket/kvp"
  for seed in (2, 3):
    predictor = kp.init_params(kvp_cfg, jax.random.key(seed))
    assert kvpd.save_kvp(folder, target, aux, predictor, kvp_cfg.layer_map) == folder
  meta = json.loads(paths.read_text(f"{folder}/kvp.json"))
  assert sorted(paths.listdir(folder)) == sorted(["aux", meta["predictor_dir"], "kvp.json"])
  loaded = kvpd.load_kvp(folder, target)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, predictor)
  assert kvpd.fingerprint(loaded.aux) == kvpd.fingerprint(aux)
  assert gcs.renames == 0
