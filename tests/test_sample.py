"""Tests for scripts/sample.py (specsample/sample_file.py), run in-process through its absl
`main` on a tiny random pair with the real tokenizer; the mesh test uses the 8 fake CPU
devices of tests/conftest.py in this process (a 2 x 4 mesh)."""

import json
import os

import jax
import numpy as np
import pytest

from specsample import sample_file
from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.models import feature_draft as fd
from specsample.models import io as model_io
from specsample.models.lm import params_fingerprint
from specsample.tokenizer import Tokenizer
from script_helpers import MESH_FLAGS, REPO, TOKENIZER, load_module, run_main, save_tiny_pair


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
  return save_tiny_pair(tmp_path_factory.mktemp("pair"))


def test_sample_runlocal_via_flags(saved_pair, tmp_path):
  prompts = [{"prompt": "def add(a, b):\n    return", "task_id": "t0"},
             {"prompt": "import os\n"}, {"prompt": "beyond the runlocal limit of 2"}]
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
  out = tmp_path / "out.jsonl"
  out.write_text("previous run\n")
  run_main("sample", [
      f"--config={REPO}/configs/sample.py:runlocal", f"--config.input={path}",
      f"--config.output={out}", f"--config.target_dir={saved_pair[0]}",
      f"--config.draft_dir={saved_pair[1]}", f"--config.tokenizer={TOKENIZER}",
      "--config.num_draft=3"])
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  tokenizer = Tokenizer.load(TOKENIZER)
  assert [r["prompt"] for r in rows] == [p["prompt"] for p in prompts[:2]]  # limit 2, in order
  assert rows[0]["task_id"] == "t0"  # other input fields are kept
  for r in rows:
    assert r["method"] == "speculative" and r["num_draft"] == 3
    assert r["completion"] == tokenizer.decode(r["tokens"])
    assert r["new_tokens"] == len(r["tokens"]) and 1 <= r["new_tokens"] <= 8
    assert r["tokens_per_call"] == pytest.approx(r["new_tokens"] / r["target_calls"])
    assert r["drafted"] == 3 * r["target_calls"] and 0 <= r["accepted"] <= r["drafted"]
  assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "prompts.jsonl"]  # no temporaries


def test_read_prompts_text_and_jsonl(tmp_path):
  txt = tmp_path / "p.txt"
  txt.write_text("def f(x):\n\n  indented = 1  \nlast")
  assert [r["prompt"] for r in sample_file.read_prompts(str(txt))] == [
      "def f(x):", "  indented = 1  ", "last"]  # blank lines skipped, spaces kept
  assert len(sample_file.read_prompts(str(txt), limit=2)) == 2
  bad = tmp_path / "p.jsonl"
  bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
  with pytest.raises(ValueError, match=r"p.jsonl:2: .*'prompt' field"):
    sample_file.read_prompts(str(bad))


def _sample_config(saved_pair, tmp_path, **fields):
  """The runlocal config on one prompt; `fields` may name sub-fields ("mesh.data")."""
  config = load_module("configs/sample.py").get_config("runlocal")
  (tmp_path / "p.txt").write_text("def f(x):\n")
  config.input, config.output = str(tmp_path / "p.txt"), str(tmp_path / "out.jsonl")
  config.target_dir, config.draft_dir = saved_pair
  config.tokenizer = TOKENIZER
  config.update_from_flattened_dict(fields)
  return config


@pytest.mark.parametrize("fields, error, message", [
    ({"method": "beam"}, ValueError,
     r"method must be one of \('autoregressive', 'speculative'\), got 'beam'"),
    ({"num_draft": 0}, ValueError, r"num_draft \(K, .*\) must be an int >= 1, got 0"),
    ({"temperature": -0.5}, ValueError, r"temperature must be a number >= 0 \(0 = greedy\)"),
    ({"top_k": -1}, ValueError, r"top_k must be an int >= 0"),
    ({"top_p": 1.5}, ValueError, r"top_p must be a number in \(0, 1\]"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be an int >= 1"),
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"eos_id": -2}, ValueError, "eos_id must be None"),
    ({"eos_id": 4096}, ValueError, r"eos_id must be None or in \[0, 4096\)"),
    ({"input": "/nonexistent/prompts.txt"}, FileNotFoundError, "input: no such file"),
    ({"input": "prompts.csv"}, ValueError, r"input must end in one of \('.txt', '.jsonl'\)"),
    ({"input": ""}, ValueError, "input is required"),
    ({"output": "/nonexistent/folder/out.jsonl"}, FileNotFoundError,
     "output: folder '/nonexistent/folder' does not exist"),
    ({"draft_dir": "/nonexistent/draft"}, FileNotFoundError, "draft_dir: no model at"),
    ({"max_new_tokens": 120}, ValueError, "max_seq_len=128"),  # prompt + 120 > cache
    ({"param_dtype": "int8"}, ValueError, "param_dtype: model.param_dtype must be one of"),
    # Meshes (8 fake devices), checked before loading and compiling:
    ({"mesh.data": 16}, ValueError, r"mesh: mesh \(data=16, fsdp=1, tensor=1\) has 16 devices "
     r"but 8 cpu devices .*--config.mesh.data"),
    ({"mesh.tensor": 0}, ValueError, r"mesh: mesh axis 'tensor' size must be an int >= 1"),
    ({"mesh.data": 8}, ValueError, r"batch size 2 with target_rules='tensor_parallel': "
     r"dimension 0 \('batch', size 2\) is not divisible by mesh axes \('data', 'fsdp'\) of size 8"),
    ({"mesh.tensor": 8, "target_rules": "megatron"}, ValueError,
     r"target_rules must be one of \['replicated', 'tensor_parallel'\] .*got 'megatron'"),
    # tiny preset: 4 heads cannot be split 8 ways; named before any param is read.
    ({"mesh.tensor": 8}, ValueError,
     r"target_dir=.* with target_rules='tensor_parallel' on mesh .*'heads', size 4"),
])
def test_sample_bad_settings_raise_before_loading(saved_pair, tmp_path, monkeypatch, fields,
                                                  error, message):
  monkeypatch.setattr(model_io, "load_lm", lambda *a, **k: pytest.fail("a model was loaded"))
  monkeypatch.setattr(api, "generate", lambda *a, **k: pytest.fail("generate was called"))
  monkeypatch.setattr(api, "make_loop", lambda *a, **k: pytest.fail("a loop was compiled"))
  with pytest.raises(error, match=message):
    sample_file.run(_sample_config(saved_pair, tmp_path, **fields))
  assert not os.path.exists(tmp_path / "out.jsonl")


def test_sample_autoregressive_ignores_missing_draft(saved_pair, tmp_path):
  sample_file.check_config(_sample_config(saved_pair, tmp_path, method="autoregressive",
                                          draft_dir="/nonexistent/draft"))  # no error


def test_sample_on_a_mesh_matches_one_device(saved_pair, tmp_path):
  """scripts/sample.py on a 2 x 4 mesh, greedy: token for token the unsharded output.

  3 prompts in batches of 2: the last batch is padded to 2 rows for the mesh
  and the padding dropped, so both batches share one compiled loop.
  """
  prompts = ["def add(a, b):", "import os", "class Stack:"]  # .txt: one prompt per line
  path = tmp_path / "prompts.txt"
  path.write_text("\n".join(prompts) + "\n")
  out = tmp_path / "out.jsonl"
  traces = api.TRACE_COUNT["speculative"]
  run_main("sample", [
      f"--config={REPO}/configs/sample.py:runlocal", f"--config.input={path}",
      f"--config.output={out}", f"--config.target_dir={saved_pair[0]}",
      f"--config.draft_dir={saved_pair[1]}", f"--config.tokenizer={TOKENIZER}",
      "--config.limit=0", "--config.temperature=0", "--config.num_draft=3", *MESH_FLAGS])
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert api.TRACE_COUNT["speculative"] == traces + 1  # one loop for both batches
  assert [r["prompt"] for r in rows] == prompts and sorted(os.listdir(tmp_path)) == [
      "out.jsonl", "prompts.txt"]

  # Reference: one device, one batch of all 3 (greedy rows do not depend on their batch).
  tokenizer = Tokenizer.load(TOKENIZER)
  target, draft = (model_io.load_lm(d) for d in saved_pair)
  reference = api.generate(target, [tokenizer.encode(p, add_bos=True) for p in prompts],
                           draft=draft, method="speculative", num_draft=3,
                           sampling=Sampling(temperature=0.0), max_new_tokens=8,
                           eos_id=tokenizer.eos_id)
  assert [r["tokens"] for r in rows] == reference.tokens
  assert [r["target_calls"] for r in rows] == reference.stats["target_calls"].tolist()


def test_sample_with_a_feature_draft(saved_pair, tmp_path):
  """A feature-draft folder as draft_dir (models.io.load_draft); on a mesh it is refused
  before anything loads, naming draft_dir."""
  target = model_io.load_lm(saved_pair[0])
  draft_cfg = fd.config_for(target.config, head_size=64)
  folder = fd.save(str(tmp_path / "feature"), draft_cfg,
                   fd.init_params(draft_cfg, jax.random.key(3), target.params), np.arange(64),
                   extra={"target": params_fingerprint(target)})
  path = tmp_path / "prompts.txt"
  path.write_text("def add(a, b):\nimport os\n")
  out = tmp_path / "out.jsonl"
  flags = [f"--config={REPO}/configs/sample.py:runlocal", f"--config.input={path}",
           f"--config.output={out}", f"--config.target_dir={saved_pair[0]}",
           f"--config.draft_dir={folder}", f"--config.tokenizer={TOKENIZER}",
           "--config.num_draft=2"]
  with pytest.raises(ValueError, match=r"draft_dir: .* is a feature draft, which runs on one"):
    run_main("sample", flags + ["--config.mesh.data=2"])
  run_main("sample", flags)
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == 2 and all(r["drafted"] == 2 * r["target_calls"] > 0 for r in rows)
