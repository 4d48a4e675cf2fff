"""User errors in scripts/: one clear line on stderr and exit status 2; --traceback shows it all.

Each case runs a script in a subprocess from a folder outside the repository,
so the default asset paths (tokenizer, models) must resolve from the repository.
Every case fails before any model is compiled.
"""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_ERROR_STATUS = 2


def _run(script: str, args: list[str], cwd) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device is enough; conftest's 8 are for the sharding tests
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, script: str, message: str):
  assert proc.returncode == USER_ERROR_STATUS, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if f"{script}: error:" in l]
  assert len(errors) == 1 and message in errors[0], proc.stderr
  assert "\n" not in errors[0]


@pytest.fixture
def prompts(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("def add(a, b):\n")
  return str(path)


def _sample_args(prompts, tmp_path, *extra):
  return [f"--config={REPO}/configs/sample.py:runlocal", f"--config.input={prompts}",
          f"--config.output={tmp_path / 'out.jsonl'}", *extra]


def test_bad_config_value(prompts, tmp_path):
  proc = _run("sample.py", _sample_args(prompts, tmp_path, "--config.method=beam"), tmp_path)
  _assert_one_line_error(proc, "sample.py", "method must be one of")


def test_bad_config_argument(prompts, tmp_path):
  proc = _run("sample.py", [f"--config={REPO}/configs/sample.py:fast",
                            f"--config.input={prompts}"], tmp_path)
  _assert_one_line_error(proc, "sample.py", "unknown argument 'fast'")
  proc = _run("sample.py", _sample_args(prompts, tmp_path, "--config.bogus=1"), tmp_path)
  _assert_one_line_error(proc, "sample.py", "--config.bogus: the config has no such field")


def test_bad_input_file(tmp_path):
  bad = tmp_path / "prompts.jsonl"
  bad.write_text('{"prompt": "ok"}\nnot json\n')
  proc = _run("sample.py", _sample_args(str(bad), tmp_path), tmp_path)
  _assert_one_line_error(proc, "sample.py", "prompts.jsonl:2: not valid JSON")


def test_missing_model(prompts, tmp_path):
  proc = _run("sample.py", _sample_args(prompts, tmp_path, "--config.target_dir=/nonexistent/m"),
              tmp_path)
  _assert_one_line_error(proc, "sample.py", "config.target_dir: no model at /nonexistent/m")
  proc = _run("reproduce.py", [f"--config={REPO}/configs/reproduce.py:runlocal",
                               "--config.draft_dir=/nonexistent/d", f"--workdir={tmp_path}/wd",
                               f"--results_dir={tmp_path}/res"], tmp_path)
  _assert_one_line_error(proc, "reproduce.py", "config.draft_dir: no model at /nonexistent/d")


def test_corrupt_model(prompts, tmp_path):
  """config.json is fine, the params are not: the TensorStore details stay out of the line."""
  corrupt = tmp_path / "corrupt"
  (corrupt / "params").mkdir(parents=True)
  shutil.copy(os.path.join(REPO, "assets", "pair", "target", "config.json"), corrupt)
  (corrupt / "params" / "garbage").write_text("not a checkpoint")
  proc = _run("sample.py", _sample_args(prompts, tmp_path, "--config.method=autoregressive",
                                        f"--config.target_dir={corrupt}"), tmp_path)
  _assert_one_line_error(proc, "sample.py", f"model params in {corrupt} are unreadable")
  assert not os.path.exists(tmp_path / "out.jsonl")


def test_traceback_flag_shows_the_traceback(prompts, tmp_path):
  proc = _run("sample.py", _sample_args(prompts, tmp_path, "--config.target_dir=/nonexistent/m",
                                        "--traceback"), tmp_path)
  assert proc.returncode not in (0, USER_ERROR_STATUS)
  assert "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_benchmark_bad_config(tmp_path):
  proc = _run("benchmark.py", [f"--config={REPO}/configs/benchmark.py:runlocal",
                               "--config.repeats=0"], tmp_path)
  _assert_one_line_error(proc, "benchmark.py", "repeats must be an int >= 1")


def test_a_corrupt_gguf_target_is_one_line(tmp_path):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"GGUF\x03\x00")
  proc = _run("record_target.py", [f"--config.target_dir={bad}", f"--config.data_dir={tmp_path / 'r'}"],
              tmp_path)
  _assert_one_line_error(proc, "record_target.py", f"{bad}: truncated or corrupt GGUF file")
