"""Tests for scripts/benchmark.py, scripts/auto_overhead.py, eval/speed/bound.py and
eval/speed/timing.py.

The scripts run in-process through their absl `main` (config file, `:runlocal`
and `--config.x=y` overrides parsed by absl as on the command line) on a tiny
random pair saved to a temporary folder; the real tokenizer is used, so the
pair has its 4096-token vocabulary. The mesh test uses the 8 fake CPU devices
of tests/conftest.py in this process (a 2 x 4 mesh).
"""

import json
import math
import os

import jax
import numpy as np
import pytest

from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.eval.speed import benchmark, bound, timing
from specsample.eval.speed import report as benchmark_report
from specsample.models import io as model_io
from specsample.models import transformer as tr
from script_helpers import MESH_FLAGS, REPO, TOKENIZER, load_module, run_main, save_tiny_pair


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
  return save_tiny_pair(tmp_path_factory.mktemp("pair"))


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
  config = load_module("configs/benchmark.py").get_config("runlocal")
  config.target_dir, config.draft_dir = saved_pair
  config.tokenizer, config.output_dir = TOKENIZER, str(tmp_path)
  for name, value in fields.items():
    config[name] = value
  return config


def test_benchmark_runlocal_via_flags(saved_pair, tmp_path):
  run_main("benchmark", [
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
  run_main("benchmark", [
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


def test_auto_overhead_runs_and_reports(saved_pair, tmp_path):
  """scripts/auto_overhead.py at one small batch: every row's walls are present and add up as
  its docstring says (no verdict on their size: the machine is shared); the table joins
  results/benchmark.md when a benchmark.json is there."""
  (tmp_path / "benchmark.json").write_text(json.dumps(_minimal_results()))
  pair = os.path.dirname(saved_pair[0])
  run_main("auto_overhead", [f"--pair={pair}", f"--tokenizer={TOKENIZER}", "--batches=2",
                             "--max_new_tokens=3", "--num_draft=2", "--auto=0,2",
                             f"--output_dir={tmp_path}"])
  result = json.loads((tmp_path / "auto_first_call.json").read_text())
  assert [r["batch"] for r in result["rows"]] == [2]
  for r in result["rows"]:
    assert all(math.isfinite(r[k]) for k in ("fixed_first", "auto_calib", "auto_rerun"))
    assert r["calibration"] == pytest.approx(r["auto_calib"] - r["auto_rerun"])
  markdown = (tmp_path / "benchmark.md").read_text()
  assert "first-call overhead" in markdown and "| 2 | " in markdown
  assert json.loads((tmp_path / "benchmark.json").read_text())["auto_first_call"] == result


def _minimal_results() -> dict:
  """A benchmark.json with no settings (what format_markdown needs to render)."""
  machine = {"label": "test machine", "platform": "p", "jax_devices": [], "niceness": 0,
             "load_average_1_5_15": [0, 0, 0]}
  config = {"target_dir": "t", "draft_dir": "d", "prompt_tokens": 1, "max_new_tokens": 1,
            "repeats": 1}
  layers = {"num_layers": 1, "d_model": 1}
  return {"machine": machine, "config": config, "command": "c", "started": "s", "elapsed_s": 0,
          "load_average_at_end": [0, 0, 0], "target": layers, "draft": layers,
          "prompts": ["p"], "settings": []}
