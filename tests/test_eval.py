"""Tests for specsample.eval: sandboxed execution, pass@k, XSum, statistics.

Fast (no models): programs run in real worker processes, and datasets loads a
local JSONL fixture with the hub switched off.
"""

import itertools
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile

# Before anything imports `datasets`: these tests must never touch the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from specsample.eval.tasks import execution, humaneval, stats, xsum

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_PATH = os.path.join(REPO_ROOT, "tests", "fixtures", "xsum_fixture.jsonl")


@pytest.fixture(scope="module")
def problems():
  return humaneval.load_problems()


def _sandbox_dirs():
  root = tempfile.gettempdir()
  return {d for d in os.listdir(root) if d.startswith("specsample_exec_")}


# ---------------------------------------------------------------- execution


def test_load_problems_offline(problems):
  assert len(problems) == 164
  assert problems[0]["task_id"] == "HumanEval/0"
  assert [p["task_id"] for p in humaneval.load_problems(limit=3)] == [
      "HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_canonical_passes_and_wrong_fails(problems):
  chosen = [problems[i] for i in (0, 1, 2, 12, 53)]
  items = [(p, p["canonical_solution"]) for p in chosen]
  items += [(p, "    return None\n") for p in chosen]
  results = execution.check_many(items, timeout_s=3.0, workers=2)
  assert [r["passed"] for r in results] == [True] * 5 + [False] * 5
  assert all(r["result"] == "passed" for r in results[:5])
  assert all(r["result"].startswith("failed") for r in results[5:])


def test_hostile_completions_fail_only_themselves(problems):
  """Loops, escapes and crashes fail their own sample; neighbours still pass."""
  problem = problems[0]
  good = problem["canonical_solution"]
  escape_path = os.path.join(tempfile.gettempdir(),
                             f"specsample_escape_test_{secrets.token_hex(8)}")
  hostile = {
      "loop": "    while True:\n        pass\n",
      # A bare except swallows the in-process alarm; the parent must kill it.
      "swallowing_loop": ("    while True:\n        try:\n            while True: pass\n"
                          "        except BaseException:\n            pass\n"),
      "open_escape": f"    open({escape_path!r}, 'w').write('x')\n" + good,
      "os_open_escape": (f"    import os\n    os.close(os.open({escape_path!r}, "
                         "os.O_WRONLY | os.O_CREAT))\n" + good),
      "dotdot_escape": ("    open('../" + os.path.basename(escape_path)
                        + "', 'w').write('x')\n" + good),
      "sys_exit": "    import sys\n    sys.exit(0)\n",
      "os_exit": "    import os\n    os._exit(0)\n",
      "segfault": "    import faulthandler\n    faulthandler._sigsegv()\n",
      "memory_hog": "    x = bytearray(8 << 30)\n" + good,
      "network": "    import socket\n    socket.create_connection(('127.0.0.1', 9))\n" + good,
      "subprocess": "    import subprocess\n    subprocess.run(['true'])\n" + good,
  }
  before = _sandbox_dirs()
  items = [(problem, good)]
  for completion in hostile.values():
    items += [(problem, completion), (problem, good)]
  results = execution.check_many(items, timeout_s=1.0, workers=2)

  assert results[0]["passed"]
  for i, name in enumerate(hostile):
    bad, neighbour = results[1 + 2 * i], results[2 + 2 * i]
    assert not bad["passed"], (name, bad)
    assert neighbour["passed"], (name, neighbour)
  by_name = dict(zip(hostile, results[1::2]))
  assert by_name["loop"]["result"] == "timed out"
  assert by_name["swallowing_loop"]["result"] == "timed out"
  assert "PermissionError" in by_name["open_escape"]["result"]
  assert "SystemExit" in by_name["sys_exit"]["result"]
  assert "SIGSEGV" in by_name["segfault"]["result"]
  assert "MemoryError" in by_name["memory_hog"]["result"]
  assert not os.path.exists(escape_path)
  # Every worker's temporary directory was removed.
  assert _sandbox_dirs() <= before


def test_writes_inside_workdir_are_allowed(problems):
  problem = problems[0]
  completion = ("    with open('scratch.txt', 'w') as f:\n        f.write('ok')\n"
                "    import tempfile\n    tempfile.NamedTemporaryFile('w').close()\n"
                + problem["canonical_solution"])
  assert execution.check_program(problem, completion, timeout_s=3.0)["passed"]


def test_execution_and_stats_import_no_jax():
  """Worker-side modules must stay importable without JAX."""
  code = ("import importlib.util, sys\n"
          "for name in ('execution', 'stats'):\n"
          "    path = sys.argv[1] + '/specsample/eval/tasks/' + name + '.py'\n"
          "    spec = importlib.util.spec_from_file_location(name, path)\n"
          "    module = sys.modules[name] = importlib.util.module_from_spec(spec)\n"
          "    spec.loader.exec_module(module)\n"
          "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules)\n")
  subprocess.run([sys.executable, "-c", code, REPO_ROOT], check=True)


# ---------------------------------------------------------------- pass@k


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_brute_force(n):
  for c in range(n + 1):
    outcomes = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
      subsets = list(itertools.combinations(outcomes, k))
      expected = sum(any(s) for s in subsets) / len(subsets)
      assert humaneval.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_validates():
  assert humaneval.pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
  assert humaneval.pass_at_k(200, 0, 100) == 0.0
  assert humaneval.pass_at_k(200, 150, 100) == 1.0
  with pytest.raises(ValueError):
    humaneval.pass_at_k(5, 6, 1)
  with pytest.raises(ValueError):
    humaneval.pass_at_k(5, 1, 6)


def test_aggregate_pass_at_k_keeps_only_feasible_k():
  out = humaneval.aggregate_pass_at_k([10, 20], [5, 0], ks=(1, 10, 100))
  assert set(out) == {"pass@1", "pass@10"}
  assert out["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
  assert out["pass@10"] == pytest.approx((1.0 + 0.0) / 2)


def test_truncate():
  raw = "    return 1\n\ndef helper():\n    pass\n"
  assert humaneval.truncate(raw) == "    return 1\n"
  assert humaneval.truncate("    x = 1\n# note\nif x:\n") == "    x = 1"
  assert humaneval.truncate("    return 2\n") == "    return 2\n"
  # The earliest stop wins, whatever its position in the list.
  assert humaneval.truncate("a\nprint(1)\ndef f", ("\ndef", "\nprint")) == "a"


def test_evaluate_end_to_end(problems):
  chosen = problems[:3]
  canonical = {p["prompt"]: p["canonical_solution"] for p in chosen}

  def generate_fn(prompts, num_samples):
    # Sample 0 is right (with junk after a stop sequence), sample 1 wrong.
    return [[canonical[p] + "\ndef junk(:\n", "    return None\n"] for p in prompts]

  out = humaneval.evaluate(generate_fn, chosen, num_samples=2, workers=2, batch_size=2)
  assert out["pass@k"] == {"pass@1": pytest.approx(0.5)}
  assert [p["num_correct"] for p in out["problems"]] == [1, 1, 1]
  assert "junk" not in out["problems"][0]["samples"][0]["completion"]
  json.dumps(out)  # Results must be serialisable as they are.

  with pytest.raises(ValueError, match="must return"):
    humaneval.evaluate(lambda ps, n: [["x"]] * len(ps), chosen, num_samples=2)


def test_canonical_loglik():
  fake = [dict(task_id=f"T/{i}", prompt="p" * (i + 1), canonical_solution="abcd")
          for i in range(3)]

  def score_fn(prompt, continuation):
    # Log-prob -len(prompt) spread over len(continuation) tokens.
    return -float(len(prompt)), len(continuation)

  out = humaneval.canonical_loglik(score_fn, fake)
  assert out["total_tokens"] == 12
  assert out["mean_loglik_per_token"] == pytest.approx(-6 / 12)
  assert out["mean_of_problem_means"] == pytest.approx(np.mean([-1 / 4, -2 / 4, -3 / 4]))


# ---------------------------------------------------------------- XSum


def test_committed_fixture_matches_writer(tmp_path):
  path = xsum.write_fixture(tmp_path / "x.jsonl", n=10)
  with open(path) as f, open(FIXTURE_PATH) as g:
    assert f.read() == g.read()


def test_xsum_fixture_loads_offline(tmp_path):
  path = xsum.write_fixture(tmp_path / "xsum.jsonl", n=8)
  items = xsum.load_xsum(path, split="test", cache_dir=str(tmp_path / "cache"))
  assert len(items) == 8
  assert set(items[0]) == {"id", "document", "summary"}
  assert items[0]["id"] == "fixture-0"
  limited = xsum.load_xsum(FIXTURE_PATH, limit=3, cache_dir=str(tmp_path / "cache"))
  assert [it["id"] for it in limited] == ["fixture-0", "fixture-1", "fixture-2"]


def test_xsum_hub_offline_gives_clear_error():
  # A fresh interpreter, so offline mode holds whatever imported datasets first.
  code = ("from specsample.eval.tasks import xsum\n"
          "try:\n    xsum.load_xsum('no-such-user/no-such-xsum')\n"
          "except RuntimeError as e:\n    print('CLEAR' if 'local' in str(e) else e)\n")
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
             PYTHONPATH=REPO_ROOT)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=120)
  assert "CLEAR" in out.stdout, out.stdout + out.stderr


def test_rouge2():
  reference = "Volunteers have planted thousands of trees to slow coastal erosion."
  assert xsum.rouge2_scores([reference], [reference]) == [pytest.approx(1.0)]
  unrelated = xsum.rouge2_scores(["The quarterly bond auction raised interest rates."],
                                 [reference])[0]
  assert unrelated < 0.1


def test_prompt_format_and_truncation():
  prompt = xsum.build_prompt("Line one.\nLine  two " + "word " * 500, max_doc_chars=60)
  assert prompt.startswith("Article: Volunteers")
  assert prompt.endswith("\nOne-sentence summary:")
  last_article = prompt.split("\n\nArticle: ")[1].split("\n")[0]
  assert last_article.startswith("Line one. Line two word")
  assert len(last_article) <= 60 and not last_article.endswith(" ")
  assert prompt.count("\n") == 4  # Documents contribute no newlines.
  assert xsum.truncate_summary(" A summary.\nArticle: more") == "A summary."
  assert xsum.truncate_summary("\nlate text") == ""


def test_xsum_evaluate_end_to_end(tmp_path):
  items = xsum.load_xsum(xsum.write_fixture(tmp_path / "x.jsonl", n=4),
                         cache_dir=str(tmp_path / "cache"))
  by_doc = {xsum.truncate_document(it["document"]): it["summary"] for it in items}

  def generate_fn(prompts):
    docs = [p.split("\n\nArticle: ")[1].split("\n")[0] for p in prompts]
    return [" " + by_doc[d] + "\n\nArticle: junk" for d in docs]

  out = xsum.evaluate(generate_fn, items, batch_size=3)
  assert out["rouge2"] == pytest.approx(1.0)
  assert out["num_items"] == 4
  assert out["items"][0]["prediction"] == items[0]["summary"]


# ---------------------------------------------------------------- stats


def test_mean_ci_coverage():
  # 400 intervals at 95%: coverage below 0.90 has probability < 1e-4 when the
  # intervals are right (seed fixed, so the test is deterministic anyway).
  rng = np.random.default_rng(0)
  hits = [stats.mean_ci(rng.normal(1.0, 2.0, size=100)).contains(1.0) for _ in range(400)]
  assert 0.90 <= np.mean(hits) <= 0.99


def test_mean_ci_methods():
  values = np.random.default_rng(1).uniform(size=200)
  normal = stats.mean_ci(values)
  boot = stats.mean_ci(values, method="bootstrap", num_resamples=2000, seed=3)
  assert normal.low < normal.mean < normal.high
  assert boot == stats.mean_ci(values, method="bootstrap", num_resamples=2000, seed=3)
  assert boot.low == pytest.approx(normal.low, abs=0.01)
  assert boot.high == pytest.approx(normal.high, abs=0.01)
  single = stats.mean_ci([0.3])
  assert single.mean == 0.3 and single.low == -math.inf and single.high == math.inf
  with pytest.raises(ValueError):
    stats.mean_ci([])
  with pytest.raises(ValueError):
    stats.mean_ci([1.0, 2.0], method="magic")


@pytest.mark.parametrize("method", ["normal", "bootstrap"])
def test_compare_detects_parity_and_shift(method):
  rng = np.random.default_rng(2)
  base = rng.uniform(size=300)
  same = base + rng.normal(0, 0.05, size=300)
  kwargs = dict(method=method, num_resamples=2000)
  assert stats.compare(base, same, paired=True, **kwargs).agree
  assert stats.compare(base, rng.uniform(size=300), **kwargs).agree
  assert not stats.compare(base, base + 0.1, **kwargs).agree
  assert not stats.metrics_agree(base, same + 0.05, paired=True, **kwargs)
  with pytest.raises(ValueError):
    stats.compare([1.0, 2.0], [1.0], paired=True)
