"""The drafting benchmark (eval/speed/drafting.py) runs, reports every method, and its
speedups are made from the reported ms/token (no verdict on a measured duration)."""

import importlib.util
import json
import os

import pytest

from specsample.eval.speed import drafting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("drafting_config", os.path.join(REPO, "configs", "drafting.py"))
drafting_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(drafting_config)


def test_runlocal_reports_every_method(tmp_path):
  c = drafting_config.get_config("runlocal")
  for field in ("target_dir", "draft_dir", "tokenizer"):
    c[field] = os.path.join(REPO, c[field])
  c.output_dir, c.cache_dir = str(tmp_path / "out"), str(tmp_path / "cache")
  result = drafting.run(c, "test")
  with open(tmp_path / "out" / "drafting.json") as f:
    assert json.load(f)["cells"] == result["cells"]
  (cell,) = result["cells"]
  assert set(cell["methods"]) == {"autoregressive", "lookup", "lookup(auto)", "draft", "draft+lookup"}
  ar = cell["methods"]["autoregressive"]["ms_per_token"]
  for row in cell["methods"].values():
    assert row["speedup"] == pytest.approx(ar / row["ms_per_token"])
    assert 1 <= row["tokens_per_call"] <= c.num_draft + 1 and row["new_tokens"] == c.max_new_tokens
  assert cell["methods"]["autoregressive"]["tokens_per_call"] == 1
  md = (tmp_path / "out" / "drafting.md").read_text()
  assert md.count("| humaneval | 2 | greedy |") == 5
