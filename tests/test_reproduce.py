"""Tests for the Table 1 reproduction: config checks, the grid, resume, the report.
(The quality checks themselves: tests/test_reproduce_parity.py; the pair: tests/table1_pair.py.)

One end-to-end run of the runlocal setting on a tiny random pair (vocab 4096,
so the real tokenizer works), shrunk to batch 1 and no sweep, with XSum
nucleus set to HumanEval's so both tasks share the four compiled loops. The
batched rows and the K sweep are covered by the planning and report tests on
fabricated records, which need no compilation.
"""

import importlib.util
import json
import os
import re

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import pytest

from table1_pair import REPO_ROOT, TOKENIZER, pair_dir  # noqa: F401  pylint: disable=g-bad-import-order,unused-import
from specsample.decoding import api
from specsample.eval.speed import timing
from specsample.eval.tasks import docsum
from specsample.eval.table1 import grid, markdown, report, reproduce
from specsample.models import io as model_io

FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures", "xsum_fixture.jsonl")
_spec = importlib.util.spec_from_file_location(
    "reproduce_config", os.path.join(REPO_ROOT, "configs", "reproduce.py"))
reproduce_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce_config)


def _config(pair_dir, **overrides):
  """The runlocal config on the test pair; overrides use dotted field names."""
  c = reproduce_config.get_config("runlocal")
  c.target_dir, c.draft_dir = str(pair_dir / "target"), str(pair_dir / "draft")
  c.tokenizer, c.xsum.path = TOKENIZER, FIXTURE
  c.update_from_flattened_dict(overrides)
  return c


# ------------------------------------------------------------------ config


def test_config_settings_and_unknown_argument():
  default = reproduce_config.get_config()
  assert default.setting == "default"
  # The real pair in its chat format, the tokenizer its own, auto K beside K = 4.
  assert (default.target_dir, default.draft_dir, default.tokenizer, default.prompt_format,
          default.auto) == ("smollm2-135m-instruct", "assets/smollm2/feature_draft", "", "chat",
                            True)
  assert default.humaneval.pad_to == default.xsum.pad_to  # one width: shared greedy loops
  toy = reproduce_config.get_config("toy")  # the embedded pair, the previous default's grid
  assert (toy.target_dir, toy.tokenizer, toy.prompt_format, toy.auto, tuple(toy.k_sweep)) == (
      "assets/pair/target", "assets/tokenizer/tokenizer.model", "raw", False, (1, 2, 3, 6))
  assert (toy.humaneval.num_problems, toy.humaneval.num_samples, toy.humaneval.pad_to) == (
      12, 4, 192)
  runlocal = reproduce_config.get_config("runlocal")
  assert (runlocal.target_dir, runlocal.prompt_format, runlocal.auto) == (
      "assets/pair/target", "raw", True)
  full = reproduce_config.get_config("full")
  assert (full.humaneval.num_problems, full.humaneval.num_samples,
          full.humaneval.max_new_tokens, full.xsum.max_new_tokens) == (164, 100, 512, 128)
  assert full.prompt_format == "chat" and full.auto
  with pytest.raises(ValueError, match="toy, runlocal, full"):
    reproduce_config.get_config("fast")
  with pytest.raises(ValueError, match="at most one"):
    reproduce_config.get_config("toy,full")


@pytest.mark.parametrize("field, value, match", [
    ("tasks", ("mbpp",), r"config\.tasks .*humaneval"),
    ("samplings", ("beam",), r"config\.samplings .*greedy"),
    ("num_draft", 0, r"config\.num_draft .*>= 1"),
    ("k_sweep", (0, 2), r"config\.k_sweep"),
    ("batch_sizes", (8,), r"config\.batch_sizes .*includes 1"),
    ("humaneval.num_problems", 200, r"config\.humaneval\.num_problems .*\[1, 164\]"),
    ("humaneval.top_p", 1.5, r"config\.humaneval\.top_p .*\(0, 1\]"),
    ("xsum.temperature", 0.0, r"config\.xsum\.temperature"),
    ("xsum.path", "/nonexistent/xsum.jsonl", r"config\.xsum\.path"),
    ("humaneval.max_new_tokens", 1000, r"config\.humaneval\.max_new_tokens=1000 .*max_seq_len"),
    ("prompt_format", "markdown", r"config\.prompt_format must be one of \('raw', 'chat'\)"),
    ("prompt_format", "chat", r"config\.prompt_format='chat' needs a tokenizer with a chat"),
    ("tokenizer", "", r"config\.tokenizer must be a tokenizer path \(''.* holds no tokenizer"),
])
def test_bad_config_fails_before_models_load(pair_dir, monkeypatch, field, value, match):
  def no_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the config was checked")
  monkeypatch.setattr(model_io, "load_lm", no_load)
  traces = dict(api.TRACE_COUNT)
  with pytest.raises(ValueError, match=match):
    reproduce.run(_config(pair_dir, **{field: value}), "/nonexistent/wd", "/nonexistent/res")
  assert api.TRACE_COUNT == traces


def test_missing_model_names_the_field(pair_dir):
  with pytest.raises(FileNotFoundError, match="config.draft_dir"):
    grid.check_config(_config(pair_dir, draft_dir="/nonexistent/draft"))


def test_auto_must_be_a_bool(pair_dir):
  config = _config(pair_dir)
  with config.ignore_type():
    config.auto = "yes"
  with pytest.raises(ValueError, match=r"config\.auto must be True or False"):
    grid.check_config(config)


@pytest.mark.parametrize("choices", [(0,), (1, 1), (-1, 2), ("a",)])
def test_auto_choices_must_be_a_k_set(pair_dir, choices):
  config = _config(pair_dir)
  with config.ignore_type():
    config.auto_choices = choices
  with pytest.raises(ValueError, match=r"config\.auto_choices must be \(\) .* distinct ints"):
    grid.check_config(config)


def test_a_draft_for_another_tokenizer_is_refused_before_loading(pair_dir, tmp_path, monkeypatch):
  """Named from config.json alone: no model is loaded, nothing compiles."""
  other = tmp_path / "draft"
  other.mkdir()
  meta = json.loads((pair_dir / "draft" / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**meta, "tokenizer_id": "another"}))
  monkeypatch.setattr(model_io, "load_lm", lambda *a, **k: pytest.fail("a model was loaded"))
  with pytest.raises(ValueError, match=r"^config\.draft_dir: made for another tokenizer"):
    reproduce.run(_config(pair_dir, draft_dir=str(other)), str(tmp_path / "wd"),
                  str(tmp_path / "res"))


# ------------------------------------------------------------------ grid


def test_plan_has_paper_rows_batched_rows_and_sweep(pair_dir):
  c = reproduce_config.get_config("toy")
  keys = [cell.key for cell in grid.plan_cells(c)]
  assert keys[:4] == ["humaneval-greedy-autoregressive-K0-B1-n1",
                      "humaneval-greedy-speculative-K4-B1-n1",
                      "humaneval-nucleus-autoregressive-K0-B1-n4",
                      "humaneval-nucleus-speculative-K4-B1-n4"]
  assert "humaneval-canonical-loglik" in keys
  assert "humaneval-nucleus-speculative-K4-B8-n4" in keys
  assert "humaneval-nucleus-speculative-K6-B1-n1" in keys
  assert "humaneval-greedy-speculative-K4-B1-n1" in keys  # main cell doubles as sweep point
  assert "xsum-nucleus-speculative-K4-B1-n1" in keys      # no data path: the docstring stand-in
  assert len(keys) == len(set(keys))
  c.tasks = ("humaneval",)
  assert not any(cell.task == "xsum" for cell in grid.plan_cells(c))
  assert not any("Kauto" in cell.key for cell in grid.plan_cells(c))
  # The real pair's default: an auto cell beside every K cell, batch 1 and 8, no sweep.
  keys = [cell.key for cell in grid.plan_cells(reproduce_config.get_config())]
  assert keys[:3] == ["humaneval-greedy-autoregressive-K0-B1-n1",
                      "humaneval-greedy-speculative-K4-B1-n1",
                      "humaneval-greedy-speculative-Kauto-B1-n1"]
  assert {"xsum-nucleus-speculative-Kauto-B8-n1", "humaneval-nucleus-speculative-K4-B8-n1"
          } <= set(keys)
  assert len(keys) == 2 * 2 * 2 * 3 + 1  # tasks x samplings x batches x methods + canonical


# ------------------------------------------------------------------ end to end


def _cell_files(workdir):
  cells = os.path.join(workdir, "cells")
  return {name: os.stat(os.path.join(cells, name)).st_mtime_ns for name in os.listdir(cells)}


def test_runlocal_end_to_end_resume_and_report(pair_dir, tmp_path, monkeypatch):
  # The summarization rows on the docstring stand-in (runlocal's default; the real-XSum
  # loader is tested on its fixtures in test_eval.py and test_docsum.py).
  config = _config(pair_dir, batch_sizes=(1,), k_sweep=(), **{"xsum.path": ""})
  config.xsum.temperature, config.xsum.top_p = config.humaneval.temperature, config.humaneval.top_p
  workdir, results_dir = str(tmp_path / "wd"), str(tmp_path / "results")
  calls, warm_ups = [], []
  real_generate, real_warm_up = api.generate, timing.warm_up
  monkeypatch.setattr(api, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
  monkeypatch.setattr(timing, "warm_up", lambda *a, **k: warm_ups.append(1) or real_warm_up(*a, **k))

  first = reproduce.run(config, workdir, results_dir, command="test", progress=False)
  planned = [c.key for c in grid.plan_cells(config)]
  assert sorted(first["computed"]) == sorted(planned) and first["reused"] == []
  assert calls
  # One warm-up per loop, not per cell: the two tasks share a width, and their nucleus
  # settings differ only in values, so AR, K = 2 and auto x greedy / nucleus: 6 loops.
  generate_cells = [c for c in grid.plan_cells(config) if c.kind == "generate"]
  assert len(generate_cells) == 12 and len(warm_ups) == 6
  # Each cell's prefill is timed and taken out of its decode ms/token (no assertion on
  # the measured values: only on how they are put together).
  ar_decode = {(r["task"], r["sampling"], r["batch_size"]): r["decode_ms_per_token"]
               for r in first["rows"] if r["method"] == "autoregressive"}
  for row in first["rows"]:
    assert row["prefill_s"] > 0 and 0 <= row["decode_ms_per_token"] <= row["ms_per_token"], row
    ref = ar_decode[row["task"], row["sampling"], row["batch_size"]]
    if row["method"] == "speculative" and ref and row["decode_ms_per_token"]:
      assert row["decode_speedup"] == pytest.approx(ref / row["decode_ms_per_token"])
  for name in ("table1.md", "table1.csv", "table1.json", "table1_speedup_vs_k.png",
               "table1_acceptance_vs_k.png", "table1_ms_per_token.png"):
    assert os.path.getsize(os.path.join(results_dir, name)) > 0, name
  md = first["markdown"]
  # Paper numbers (Table 1) beside ours, and the machine each number was measured on.
  for paper_number in ("pass@100 45.1%", "pass@100 47.0%", "ROUGE-2 0.157", "5.73", "2.46x"):
    assert paper_number in md
  assert "| HumanEval | greedy | AR | 1 |" in md and "| decode speedup |" in md
  assert f"| {docsum.LABEL} | nucleus | SpS | 1 | 2 |" in md and "| XSum |" not in md
  # runlocal has auto K cells: their own method row, speedup against the same AR row.
  assert "| HumanEval | greedy | SpS auto | 1 | auto (" in md
  assert f"| {docsum.LABEL} | nucleus | SpS auto | 1 | auto (" in md
  assert "iteration (K in {0, 1, 2};" in md  # runlocal's auto_choices, named in the report
  auto_rows = [r for r in first["rows"] if r["K"] == "auto"]
  assert len(auto_rows) == 4 and all(r["speedup"] is not None for r in auto_rows)
  assert "ROUGE-2 0.114 (paper: XSum, another dataset)" in md
  with open(os.path.join(results_dir, "docsum.json")) as f:
    info = json.load(f)
  assert info["label"] == docsum.LABEL and info["num_items"] >= 2
  assert info["sha256"][:16] in md and first["datasets"]["xsum"]["num_items_used"] == 2
  assert f"jax {jax.__version__}" in md and "backend cpu" in md
  assert first["canonical_loglik"]["mean_loglik_per_token"] < 0
  greedy = [c for p in first["parity"] if p["sampling"] == "greedy" for c in p["checks"]]
  assert len(greedy) == 4 and all(c["passed"] for c in greedy)  # K = 2 and auto, both tasks
  # The summarization cells get the same checks: greedy identity and calibration.
  checked = {(p["task"], p["sampling"], c["check"].split(":")[0]) for p in first["parity"]
             for c in p["checks"]}
  assert ("xsum", "greedy", "greedy outputs identical") in checked
  assert ("xsum", "nucleus", "tokens drawn from the target's sampling distribution") in checked
  # Every sampled cell, AR included, is calibrated against the target. |z| < 5 fails
  # falsely with probability 6e-7 per cell (the report's own bound is Bonferroni 95%).
  calibration = [c for p in first["parity"] for c in p["checks"] if "z" in c]
  assert len(calibration) == 6 and all(abs(c["z"]) < 5 for c in calibration), calibration
  with open(os.path.join(results_dir, "table1.json")) as f:
    stored = json.load(f)
  assert stored["machines"]["M1"]["jax_version"] == jax.__version__
  assert {r["machine"] for r in stored["rows"]} == {"M1"}

  # A rerun recomputes nothing: no generate call, no cell file rewritten.
  before, calls[:] = _cell_files(workdir), []
  second = reproduce.run(config, workdir, results_dir, progress=False)
  assert second["computed"] == [] and calls == [] and _cell_files(workdir) == before
  assert second["rows"] == first["rows"]

  # A half-written record is redone, not trusted; the others stay.
  victim = "humaneval-nucleus-speculative-K2-B1-n2.json"
  path = os.path.join(workdir, "cells", victim)
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[:len(text) // 2])
  third = reproduce.run(config, workdir, results_dir, progress=False)
  assert third["computed"] == [victim[:-len(".json")]]
  assert len(calls) == 4  # 2 problems x 2 samples at batch 1, no recompilation
  assert json.load(open(path))["complete"] is True

  # A deliberate mismatch in a stored greedy output is caught by the parity check.
  ar_path = os.path.join(workdir, "cells", "humaneval-greedy-autoregressive-K0-B1-n1.json")
  record = json.load(open(ar_path))
  record["items"][0]["tokens"][-1] = (record["items"][0]["tokens"][-1] + 1) % 4096
  with open(ar_path, "w") as f:
    json.dump(record, f)
  fourth = reproduce.run(config, workdir, results_dir, progress=False)
  assert fourth["computed"] == [] and not fourth["parity_ok"]
  failed = [(p["cell"], c["check"]) for p in fourth["parity"] for c in p["checks"]
            if not c["passed"]]
  assert ("humaneval-greedy-speculative-K2-B1-n1", "greedy outputs identical") in failed
  assert ("humaneval-greedy-speculative-Kauto-B1-n1", "greedy outputs identical") in failed
  assert f"{fourth['parity_failures']} parity check(s) FAILED" in fourth["markdown"]
  assert fourth["parity_failures"] == third["parity_failures"] + 2


def test_report_renders_batched_rows_and_sweep(pair_dir):
  """build_rows / format_markdown / plots on fabricated records: no compilation."""
  config = _config(pair_dir, batch_sizes=(1, 2), k_sweep=(1, 3), tasks=("humaneval",))
  machine = {"cpu_model": "Test CPU", "cpu_count": 2, "jax_version": jax.__version__,
             "backend": "cpu", "jax_devices": ["cpu:0"], "load_average_1_5_15": [1.0, 1.0, 1.0]}
  records = {}
  for cell in grid.plan_cells(config):
    if cell.kind != "generate":
      continue
    k = 3 if cell.num_draft == grid.AUTO else cell.num_draft  # auto: drafted 3 per call
    ms = 10.0 / (1 + k / 4)
    records[cell.key] = {
        "items": [{"problem": p, "sample": s, "score": float(p == 0), "tokens": [1, 2, 3],
                   "calibration": {"u": 0.1 * (-1) ** s, "variance": 1.0, "tokens": 3,
                                   "outside": 0}}
                  for p in range(2) for s in range(cell.num_samples)],
        "timing": {"ms_per_token": ms, "compiled_calls": 0},
        "stats": {"acceptance_rate": 0.5 if cell.num_draft else None, "tokens_per_call": 2.0,
                  "new_tokens": 3 * 2 * cell.num_samples, "drafted": 4 * k, "target_calls": 4},
        "machine": machine}
  cells = grid.plan_cells(config)
  rows, parity, machines = report.build_rows(cells, records, config)
  assert list(machines) == ["M1"]
  sweep = {r["K"]: r["speedup"] for r in rows if r["role"] == "sweep" and r["sampling"] == "greedy"}
  assert sweep == {1: pytest.approx(1.25), 3: pytest.approx(1.75)}
  batched = [r for r in rows if r["batch_size"] == 2 and r["method"] == "speculative"]
  assert len(batched) == 4 and all(r["paper_value"] is None for r in batched)  # K = 2, auto
  auto = [r for r in rows if r["K"] == grid.AUTO]
  assert len(auto) == 4 and all(r["speedup"] == pytest.approx(1.75) for r in auto)
  assert all(r["paper_value"] is None and r["draft_per_call"] == 3 for r in auto)
  assert all(c["passed"] for p in parity for c in p["checks"])
  # Calibration of 8 sampled cells (AR, SpS K=2 and SpS auto at B=1, 2; sweep K=1, 3) and
  # the quality check of the 6 SpS ones: 14 checks, each at 1 - 0.05 / 14.
  assert "99.64% t interval" in parity[-1]["checks"][1]["detail"]
  assert "abs(z) <= 2.91 (99.64%)" in parity[-1]["checks"][0]["detail"]
  assert sum(p["method"] == "autoregressive" for p in parity) == 2
  results = {"config": config.to_dict(), "rows": rows, "parity": parity, "machines": machines,
             "command": "x", "finished": "now", "elapsed_s": 1.0, "computed": [], "reused": [],
             "workdir": "wd", "models": {"target": "t", "draft": "d"}, "parity_ok": True,
             "parity_failures": 0, "canonical_loglik": None, "paths": {"plots": []},
             "num_sampled_checks": sum(len(p["checks"]) for p in parity
                                       if p["sampling"] != "greedy")}
  md = markdown.format_markdown(results)
  assert "| HumanEval | nucleus | SpS | 2 | 2 |" in md           # batched row
  assert "## K sweep" in md and "| HumanEval | greedy | 3 |" in md
  assert "| HumanEval | greedy | auto (3.0) |" in md              # auto closes each sweep
  assert "| HumanEval | nucleus | SpS auto | 2 | auto (3.0) | 5.71 | 1.75x ✓ |" in md
  assert "| XSum | greedy | SpS | 1 | 4 | not run |" in md     # paper rows stay visible
  assert "M1**: Test CPU, 2 cores" in md
  assert "Code: `unknown` timed every row." in md  # fabricated records carry no version

  # A stored AR row timed by other code (a rerun reused it): its SpS rows' speedups are flagged.
  ar = next(c for c in cells if c.kind == "generate" and c.method == "autoregressive"
            and c.batch_size == 2 and c.sampling == "nucleus")
  records[ar.key] = {**records[ar.key], "code": "0123456789ab"}
  rows, parity, _ = report.build_rows(cells, records, config)
  flagged = {r["key"] for r in rows if r["speedup_across_code_versions"]}
  assert flagged == {c.key for c in cells if c.kind == "generate" and c.method == "speculative"
                     and c.batch_size == 2 and c.sampling == "nucleus"} and len(flagged) == 2
  md = markdown.format_markdown({**results, "rows": rows, "parity": parity})
  assert "| HumanEval | nucleus | SpS auto | 2 | auto (3.0) | 5.71 | 1.75x ✓ † |" in md
  assert "rows were timed at 2 versions (`0123456789ab`, `unknown`;" in md


def test_code_version_names_the_commit_or_unknown(tmp_path):
  from specsample.eval.speed import timing  # pylint: disable=g-import-not-at-top
  assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", timing.code_version())  # this checkout
  assert timing.code_version(str(tmp_path)) == "unknown"                  # not a git checkout
