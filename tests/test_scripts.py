"""Tests for scripts/benchmark.py, scripts/sample.py, eval/speed/bound.py and eval/speed/timing.py.

Both scripts run in-process through their absl `main` (config file, `:runlocal`
and `--config.x=y` overrides parsed by absl as on the command line) on a tiny
random pair saved to a temporary folder; the real tokenizer is used, so the
pair has its 4096-token vocabulary. Every script test compiles a few decode
loops: they share one pair and keep the runlocal shapes. The mesh tests use
the 8 fake CPU devices of tests/conftest.py in this process (a 2 x 4 mesh).
"""

import importlib.util
import json
import math
import os
import sys
from unittest import mock

from absl import flags
import jax
import numpy as np
import pytest

from specsample import sample_file
from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.eval.speed import benchmark, bound, timing
from specsample.eval.speed import report as benchmark_report
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.models.presets import get_preset
from specsample.tokenizer import Tokenizer

# data=2 splits the batch (runlocal's 2), tensor=4 the target's 4 heads, MLP and
# vocabulary; the draft is replicated: two layouts on one mesh.
MESH_FLAGS = ["--config.mesh.data=2", "--config.mesh.tensor=4", "--config.draft_rules=replicated"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "assets", "tokenizer", "tokenizer.model")


def _load_module(relpath: str):
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


def _run_main(script: str, args: list[str]):
  """Runs scripts/<script>.py's main as `python scripts/<script>.py args` would."""
  module = _load_module(f"scripts/{script}.py")
  argv = [f"scripts/{script}.py"] + args
  # config_flags finds the --config.x overrides in sys.argv, as under app.run.
  with mock.patch.object(sys, "argv", argv):
    flags.FLAGS(argv)
    module.main(argv[:1])
  return module


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
  """(target_dir, draft_dir): two random 1-layer models over the real 4096 vocabulary.

  One layer each keeps the decode loops quick to compile; different seeds make
  the draft disagree with the target.
  """
  root = tmp_path_factory.mktemp("pair")
  cfg = get_preset("tiny", vocab_size=4096, max_seq_len=128, num_layers=1)
  dirs = []
  for name, seed in (("target", 0), ("draft", 1)):
    dirs.append(model_io.save_lm(str(root / name), cfg, tr.init_params(cfg, jax.random.key(seed)),
                                 store_dtype="float32"))
  return tuple(dirs)


# ---------------------------------------------------------------------------
# The bound (hand-computed values).
# ---------------------------------------------------------------------------

def test_expected_tokens_hand_values():
  # (1 - 0.8^5) / 0.2 = (1 - 0.32768) / 0.2
  assert bound.expected_tokens(0.8, 4) == pytest.approx(3.3616)
  assert bound.expected_tokens(0.5, 1) == pytest.approx(1.5)
  assert bound.expected_tokens(0.0, 7) == pytest.approx(1.0)   # every draft rejected
  assert bound.expected_tokens(1.0, 7) == 8.0                  # all K + bonus
  assert bound.expected_tokens(0.999999, 3) == pytest.approx(4.0, rel=1e-5)  # continuous at 1


def test_speedup_bound_hand_values():
  # Leviathan et al.: E / (K c + 1); with v_K in place of the 1 on a CPU.
  assert bound.speedup_bound(3.3616, 4, 0.05) == pytest.approx(3.3616 / 1.2)
  assert bound.speedup_bound(1.5, 1, 0.1, v_k=2.0) == pytest.approx(1.5 / 2.1)
  # alpha = 0 and c > 0: speculative can only lose.
  assert bound.speedup_bound(bound.expected_tokens(0.0, 3), 3, 0.1) < 1


def test_acceptance_rate_iid_and_inverse():
  # E[accepted] / K = (3.3616 - 1) / 4: the docstring's 0.59 for alpha 0.8, K = 4.
  assert bound.acceptance_rate_iid(0.8, 4) == pytest.approx(0.5904)
  assert bound.acceptance_rate_iid(1.0, 3) == 1.0
  for alpha in (0.1, 0.5, 0.8, 0.95):
    assert bound.alpha_from_tokens(bound.expected_tokens(alpha, 5), 5) == pytest.approx(alpha, abs=1e-9)
  assert bound.alpha_from_tokens(1.0, 4) == 0.0
  assert bound.alpha_from_tokens(5.0, 4) == 1.0


def test_best_k_and_bad_alpha():
  assert bound.best_k({1: 1.2, 2: 1.5, 3: 1.5, 4: 0.9}) == 2  # ties go to the smaller K
  with pytest.raises(ValueError, match="alpha must be in"):
    bound.expected_tokens(1.2, 4)


def test_summarise_keeps_each_calls_fastest_wall():
  def out(n):  # one row with n new tokens in n // 2 target calls
    stats = {k: np.array([v]) for k, v in dict(new_tokens=n, target_calls=n // 2).items()}
    return api.GenerateOutput(tokens=[[5] * n], stats=stats)
  outputs = [out(8), out(4)]
  passes = [timing.Pass(wall_ms=50.0, tokens=12.0, outputs=outputs, call_ms=[40.0, 10.0]),
            timing.Pass(wall_ms=80.0, tokens=12.0, outputs=outputs, call_ms=[20.0, 60.0])]
  summary = timing.summarise(passes, warmup_s=1.0, recompiled=False)
  assert summary.wall_ms == 30.0  # 20 (call 0, pass 1) + 10 (call 1, pass 0)
  assert summary.ms_per_token == pytest.approx(30.0 / 12.0)
  assert summary.ms_per_token_runs == pytest.approx([50 / 12, 80 / 12])
  assert summary.loop_iterations == [4, 2] and summary.mean_new_tokens == 6.0
  assert timing.tokens_per_iteration(summary, [1, 1]) == pytest.approx(12 / 6)


def test_measure_alpha_is_the_overlap_at_generated_positions(tiny_pair):
  target, draft = tiny_pair
  sampling = Sampling(temperature=1.0)
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
  completions = [[9, 10, 11, 12], [13, 14]]  # different lengths: checks the mask
  alpha, per_row = bound.measure_alpha(target, draft, prompts, completions, sampling)
  # Reference: the distribution each new token was drawn from sits one position
  # earlier. Both rows have 7 tokens, so one unpadded jitted call scores them.
  seqs = np.array([p + c for p, c in zip(prompts, completions)])
  both = jax.jit(lambda t, d, x: (sampling.probs(tr.forward(target.config, t, x)[0]),
                                  sampling.probs(tr.forward(draft.config, d, x)[0])))
  q_BLV, p_BLV = (np.asarray(a) for a in both(target.params, draft.params, seqs))
  overlaps = [[float(np.minimum(q_BLV[b, len(p) - 1 + j], p_BLV[b, len(p) - 1 + j]).sum())
               for j in range(len(c))] for b, (p, c) in enumerate(zip(prompts, completions))]
  np.testing.assert_allclose(per_row, [np.mean(o) for o in overlaps], rtol=1e-5)
  assert alpha == pytest.approx(np.mean(sum(overlaps, [])), rel=1e-5)  # pooled over positions
  same, _ = bound.measure_alpha(target, target, prompts, completions, sampling)
  assert same == pytest.approx(1.0, abs=1e-5)


def test_write_results_never_half_overwrites(tmp_path):
  json_path, md_path = tmp_path / "benchmark.json", tmp_path / "benchmark.md"
  json_path.write_text("old json")
  md_path.write_text("old md")
  with pytest.raises(KeyError):
    benchmark_report.write_results({"machine": {}}, str(tmp_path))  # unformattable: nothing is written
  assert json_path.read_text() == "old json" and md_path.read_text() == "old md"
  assert sorted(os.listdir(tmp_path)) == ["benchmark.json", "benchmark.md"]  # no temporaries


# ---------------------------------------------------------------------------
# scripts/benchmark.py
# ---------------------------------------------------------------------------

def _bench_config(saved_pair, tmp_path, **fields):
  config = _load_module("configs/benchmark.py").get_config("runlocal")
  config.target_dir, config.draft_dir = saved_pair
  config.tokenizer, config.output_dir = TOKENIZER, str(tmp_path)
  for name, value in fields.items():
    config[name] = value
  return config


def test_benchmark_runlocal_via_flags(saved_pair, tmp_path):
  _run_main("benchmark", [
      f"--config={REPO}/configs/benchmark.py:runlocal", f"--config.target_dir={saved_pair[0]}",
      f"--config.draft_dir={saved_pair[1]}", f"--config.tokenizer={TOKENIZER}",
      f"--config.output_dir={tmp_path}"])
  results = json.loads((tmp_path / "benchmark.json").read_text())
  markdown = (tmp_path / "benchmark.md").read_text()
  assert sorted(os.listdir(tmp_path)) == ["benchmark.json", "benchmark.md"]
  assert [(s["batch_size"], s["sampling"]) for s in results["settings"]] == [(2, "nucleus")]
  for s in results["settings"]:
    assert 0 <= s["alpha"] <= 1 + 1e-6
    assert not s["autoregressive"]["recompiled"]
    (r,) = s["speculative"]
    assert r["K"] == 2 and s["best_k"] == 2 and not r["recompiled"]
    assert r["mean_new_tokens"] == results["config"]["max_new_tokens"]  # no eos stop
    assert 1 <= r["tokens_per_call"] <= 3
    # The reported bound is the formula of PAPERS.md section 2 on the reported parts.
    e = (1 - s["alpha"] ** 3) / (1 - s["alpha"]) if s["alpha"] < 1 else 3.0
    assert r["expected_tokens"] == pytest.approx(e)
    assert r["bound"] == pytest.approx(e / (2 * r["c"] + r["v_k"]))
    assert r["measured_over_bound"] == pytest.approx(r["speedup"] / r["bound"])
  # Every table row names the machine.
  label = results["machine"]["label"]
  rows = [l for l in markdown.splitlines() if l.startswith("| ") and "ms/token" not in l]
  k_rows = [l for l in rows if l.split("|")[1].strip().isdigit()]
  assert len(k_rows) == 1 + 1 and all(label in l for l in k_rows)  # summary + per-K row


def test_benchmark_on_a_mesh(saved_pair, tmp_path):
  """The whole benchmark on a 2 x 4 mesh: sharded generate, forwards and alpha; greedy,
  so speculative must reproduce the autoregressive tokens."""
  traces = dict(api.TRACE_COUNT)
  _run_main("benchmark", [
      f"--config={REPO}/configs/benchmark.py:runlocal", f"--config.target_dir={saved_pair[0]}",
      f"--config.draft_dir={saved_pair[1]}", f"--config.tokenizer={TOKENIZER}",
      f"--config.output_dir={tmp_path}", *MESH_FLAGS])
  results = json.loads((tmp_path / "benchmark.json").read_text())
  assert results["mesh"] == {"data": 2, "fsdp": 1, "tensor": 4}
  assert "Mesh: {'data': 2" in (tmp_path / "benchmark.md").read_text()
  # One sharded loop per method, each compiled once.
  assert {k: api.TRACE_COUNT[k] - traces[k] for k in traces} == {
      "autoregressive": 1, "speculative": 1}
  (s,) = results["settings"]
  (r,) = s["speculative"]
  assert not s["autoregressive"]["recompiled"] and not r["recompiled"]
  assert 0 <= s["alpha"] <= 1 + 1e-6 and 1 <= r["tokens_per_call"] <= 3
  # Measured durations: finite, and c, v_K made from the reported parts (no sign or size:
  # the machine is shared).
  assert all(math.isfinite(v) for v in (r["c"], r["v_k"], r["target_step_ms"]))
  assert r["c"] == pytest.approx(r["draft_step_ms"] / r["target_step_ms"])
  assert r["v_k"] == pytest.approx(r["verify_ms"] / r["target_step_ms"])


@pytest.mark.parametrize("fields, message", [
    ({"batch_sizes": (3,)}, "batch_sizes"),
    ({"k_sweep": (0, 2)}, "k_sweep"),
    ({"samplings": ("beam",)}, r"samplings must be a non-empty subset of \('greedy', 'nucleus'\)"),
    ({"repeats": 0}, "repeats must be an int >= 1"),
    ({"nucleus": {"temperature": 0.8, "top_k": 0, "top_p": 0.0}}, r"nucleus: .*top_p"),
    ({"target_dir": "/nonexistent/target"}, "target_dir: no model at /nonexistent/target"),
])
def test_benchmark_bad_config_raises_before_loading(saved_pair, tmp_path, monkeypatch, fields,
                                                    message):
  monkeypatch.setattr(model_io, "load_lm", lambda *a, **k: pytest.fail("a model was loaded"))
  config = _bench_config(saved_pair, tmp_path)
  with config.unlocked():
    for name, value in fields.items():
      config[name] = value
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    benchmark.run(config)


# ---------------------------------------------------------------------------
# scripts/sample.py
# ---------------------------------------------------------------------------

def test_sample_runlocal_via_flags(saved_pair, tmp_path):
  prompts = [{"prompt": "def add(a, b):\n    return", "task_id": "t0"},
             {"prompt": "import os\n"}, {"prompt": "beyond the runlocal limit of 2"}]
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
  out = tmp_path / "out.jsonl"
  out.write_text("previous run\n")
  _run_main("sample", [
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
  config = _load_module("configs/sample.py").get_config("runlocal")
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
  _run_main("sample", [
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
