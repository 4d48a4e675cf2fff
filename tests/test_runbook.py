"""The runbooks (README.md, docs/tpu.md, docs/gpu.md) and their shell scripts.

Every `python scripts/X.py` command in their code blocks names a real script, flags it
defines and config fields that exist and take the given values; the TPU meshes fit a
v4-32's 16 chips (the GPU ones 8 GPUs) and divide their batches; the jax pins agree;
scripts/tpu_worker.sh and scripts/tpu_resume.sh parse, and their dry runs print the
recovery a preempted slice needs. No model, no compile, no network.
"""

import ast
import glob
import importlib.metadata
import importlib.util
import math
import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

from specsample import sharding as sh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "docs/tpu.md", "docs/gpu.md")
SHELL_SCRIPTS = ("scripts/tpu_worker.sh", "scripts/tpu_resume.sh")
# Flags every script has: specsample/distributed.py (via cli) and specsample/cli.py.
_DEFINE = re.compile(r'flags\.DEFINE_\w+\(\s*"(\w+)"')


def _read(relpath: str) -> str:
  with open(os.path.join(REPO, relpath), encoding="utf-8") as f:
    return f.read()


COMMON_FLAGS = set(_DEFINE.findall(_read("specsample/distributed.py") + _read("specsample/cli.py")))


def _load_config(relpath: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(
      "runbook_" + os.path.basename(relpath)[:-3], os.path.join(REPO, relpath))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def python_commands(text: str) -> list[tuple[str, list[str]]]:
  """(script, args) of every `python scripts/X.py ...` in the text's code blocks, with
  backslash continuations joined and the shell around it (quotes, redirections,
  comments, `&&`) cut off."""
  commands = []
  for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
    joined = block.replace("\\\n", " ")
    for m in re.finditer(r'(?<![\w/.-])python (scripts/\w+\.py)([^\n"]*)', joined):
      args = []
      for token in shlex.split(m.group(2).split(" #")[0]):
        if token in (">", ">>", "&&", "||", ";", "|", "&") or token.startswith((">", "2>")):
          break
        args.append(token)
      commands.append((m.group(1), args))
  return commands


def check_command(script: str, args: list[str], devices: int | None = None):
  """Asserts the script exists, defines each flag, and its config has each --config.field
  (of the value's type); with `devices`, the mesh has that many and divides the batches.
  Returns the config (None if the script takes none)."""
  where = f"{script} {' '.join(args)}"
  assert os.path.isfile(os.path.join(REPO, script)), f"no such script: {where}"
  known = set(_DEFINE.findall(_read(script))) | COMMON_FLAGS
  config = None
  for a in args:
    if a.startswith("--config="):
      path, _, arg = a[len("--config="):].partition(":")
      config = _load_config(path, arg or None)
  for a in args:
    assert a.startswith("--"), f"positional argument {a!r}: {where}"
    name, _, text = a[2:].partition("=")
    if not name.startswith("config."):
      assert name in known or (name.startswith("no") and name[2:] in known), (
          f"{script} defines no flag --{name}: {where}")
      continue
    assert config is not None, f"--{name} without --config=: {where}"
    *parents, leaf = name[len("config."):].split(".")
    node = config
    for parent in parents:
      assert parent in node, f"{script}: its config has no field {name[7:]}"
      node = node[parent]
    assert leaf in node, f"{script}: its config has no field {name[7:]}"
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # a path or a name
    node[leaf] = value  # ConfigDict raises TypeError on a wrong type
  if devices and config is not None and "mesh" in config and any(
      a.startswith("--config.mesh.") for a in args):
    sizes = config.mesh.to_dict()
    known_size = math.prod(v for v in sizes.values() if v != -1)
    mesh = sh.abstract_mesh({k: devices // known_size if v == -1 else v
                             for k, v in sizes.items()})
    assert math.prod(mesh.shape.values()) == devices, where
    base = os.path.basename(script)
    batches = {"train.py": [config.get("data", {}).get("batch_size")],
               "sample.py": [config.get("batch_size")],
               "benchmark.py": list(config.get("batch_sizes", ()))}.get(base, [])
    rules = config.get("target_rules") or config.get("sharding_rules")
    for batch in batches:  # raises if data x fsdp does not divide the batch
      sh.batch_sharding(mesh, sh.get_rules(rules), (batch,))
    if base == "benchmark.py":
      assert all(config.num_prompts % b == 0 for b in config.batch_sizes), where
  return config


@pytest.mark.parametrize("doc,devices,on_mesh", [
    ("README.md", 16, "--distributed=auto"), ("docs/tpu.md", 16, "--distributed=auto"),
    ("docs/gpu.md", 8, "--config.mesh.")])
def test_every_documented_command_uses_real_flags_and_fields(doc, devices, on_mesh):
  """Meshes: the slice commands (--distributed=auto) on a v4-32's 16 chips, the GPU
  doc's mesh commands on 8 GPUs; the dry run sizes its own slices."""
  commands = python_commands(_read(doc))
  assert len(commands) >= 3, doc
  for script, args in commands:
    mesh = any(a.startswith(on_mesh) for a in args) and not script.endswith("dry_run.py")
    check_command(script, args, devices=devices if mesh else None)


def test_python_commands_parser_sees_the_tpu_steps():
  """The parser finds docs/tpu.md's launch commands in order (the check above is not
  vacuous), the README's TPU command is tpu.md's word for word, the export writes the
  folders sampling and the benchmark read, and the resume relaunches the same run."""
  tpu = [(s, a) for s, a in python_commands(_read("docs/tpu.md")) if "--distributed=auto" in a]
  assert [s for s, _ in tpu] == ["scripts/train.py", "scripts/export_pair.py", "scripts/sample.py",
                                 "scripts/benchmark.py", "scripts/train.py"]
  train, export, sample, bench, resumed = (args for _, args in tpu)
  assert resumed == train  # step 8 resumes exactly the run of step 5
  assert any(a.startswith("--workdir=$BUCKET/") for a in train)
  out = next(a for a in export if a.startswith("--out="))[len("--out="):]
  for args in (sample, bench):
    assert f"--config.target_dir={out}/target" in args
    assert f"--config.draft_dir={out}/draft" in args
  readme = [(s, a) for s, a in python_commands(_read("README.md")) if "--distributed=auto" in a]
  assert readme and all(c in tpu for c in readme)


def test_jax_pins_agree_with_setup_and_the_worker_script():
  """One jax version in every `jax[...]==` of the docs, the one tpu_worker.sh installs;
  it satisfies setup.py's range and its extras exist."""
  from packaging.requirements import Requirement
  from packaging.specifiers import SpecifierSet
  pins = re.findall(r"jax\[(\w+)\]==([\d.]+)", "".join(_read(d) for d in DOCS))
  assert {extra for extra, _ in pins} >= {"tpu", "cuda12"}
  worker = re.search(r'JAX_VERSION="\$\{JAX_VERSION:-([\d.]+)\}"', _read("scripts/tpu_worker.sh"))
  assert {version for _, version in pins} == {worker.group(1)}
  setup = _read("setup.py")
  jax_req = Requirement(re.search(r'"(jax[><=][^"]*)"', setup).group(1))
  assert worker.group(1) in jax_req.specifier
  assert SpecifierSet(re.search(r'python_requires="([^"]+)"', setup).group(1)) == SpecifierSet(">=3.11")
  extras = importlib.metadata.metadata("jax").get_all("Provides-Extra")
  assert {"tpu", "cuda12"} <= set(extras)


def test_python_floor_matches_the_pinned_dependencies():
  """setup.py admits no Python that jax, flax or orbax-checkpoint refuse (3.10 is out)."""
  from packaging.specifiers import SpecifierSet
  ours = SpecifierSet(re.search(r'python_requires="([^"]+)"', _read("setup.py")).group(1))
  assert "3.10" not in ours
  for dist in ("jax", "flax", "orbax-checkpoint"):
    theirs = SpecifierSet(importlib.metadata.metadata(dist).get("Requires-Python") or "")
    for version in ("3.9", "3.10", "3.11", "3.12", "3.13"):
      assert version not in ours or version in theirs, (dist, version)


def _python_3_10() -> str | None:
  """A Python 3.10 with pip and setuptools (PATH, then pyenv), or None."""
  candidates = [shutil.which("python3.10")] + sorted(
      glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
  for exe in filter(None, candidates):
    ok = subprocess.run([exe, "-c", "import setuptools, pip"], capture_output=True, timeout=60)
    if ok.returncode == 0:
      return exe
  return None


def test_pip_on_python_3_10_refuses_the_package(tmp_path):
  """The real refusal, offline: pip on 3.10 reads setup.py's metadata and stops."""
  python_3_10 = _python_3_10()
  if python_3_10 is None:
    pytest.skip("no Python 3.10 with pip and setuptools here")
  shutil.copy(os.path.join(REPO, "setup.py"), tmp_path)
  (tmp_path / "specsample").mkdir()
  (tmp_path / "specsample" / "__init__.py").write_text("")
  proc = subprocess.run([python_3_10, "-m", "pip", "install", "--no-deps", "--no-index",
                         "--no-build-isolation", "--dry-run", str(tmp_path)],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "requires a different Python" in proc.stderr and "not in '>=3.11'" in proc.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_parse(script):
  subprocess.run(["bash", "-n", os.path.join(REPO, script)], check=True)


def test_documented_shell_commands_exist():
  """Every scripts/*.sh and tpu_worker.sh subcommand the docs use exists."""
  text = "".join(_read(d) for d in DOCS)
  for script in set(re.findall(r"scripts/\w+\.sh", text)):
    assert os.path.isfile(os.path.join(REPO, script)), script
  used = set(re.findall(r"tpu_worker\.sh (\w+)", text))
  assert used and used <= {"setup", "start", "stop", "status"}, used


_ENV = {"TPU": "specsample", "ZONE": "us-central2-b", "ACCELERATOR": "v4-32",
        "VERSION": "tpu-ubuntu2204-base", "SOURCE": "https://example.com/specsample.git",
        "DRY_RUN": "1"}
_TRAIN = ["python", "scripts/train.py", "--distributed=auto",
          "--config=configs/train.py:model=draft_4b", "--config.model.vocab_size=4096",
          "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.mesh.tensor=1",
          "--config.data.batch_size=64", "--workdir=gs://bucket/workdirs/draft_4b"]


def _resume(tmp_path, **env):
  proc = subprocess.run(["bash", os.path.join(REPO, "scripts/tpu_resume.sh"), *_TRAIN],
                        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **_ENV, **env},
                        capture_output=True, text=True, timeout=60)
  return proc


@pytest.mark.parametrize("state,qr", [("PREEMPTED", ""), ("SUSPENDED", "specsample-qr"),
                                      ("READY", "")])
def test_resume_dry_run_recreates_reinstalls_and_restarts(tmp_path, state, qr):
  proc = _resume(tmp_path, STATE=state, QR=qr)
  assert proc.returncode == 0, proc.stderr
  lines = [l[2:] for l in proc.stdout.splitlines() if l.startswith("+ ")]
  gone = state != "READY"
  if qr:
    assert lines[0] == "gcloud compute tpus queued-resources delete specsample-qr " \
                       "--zone=us-central2-b --force --quiet"
    assert lines[1].startswith("gcloud compute tpus queued-resources create specsample-qr ")
    assert "--node-id=specsample --runtime-version=tpu-ubuntu2204-base" in lines[1]
  elif gone:
    assert lines[0] == "gcloud compute tpus tpu-vm delete specsample --zone=us-central2-b --quiet"
    assert lines[1].startswith("gcloud compute tpus tpu-vm create specsample ")
    assert "--version=tpu-ubuntu2204-base --accelerator-type=v4-32" in lines[1]
  if gone:
    assert "--spot" in lines[1].split()
    lines = lines[2:]
  assert not any(" delete " in l or " create " in l for l in lines)  # READY: left alone
  assert lines[0].startswith("gcloud compute tpus tpu-vm scp ") and "tpu_worker.sh" in lines[0]
  assert lines[1].endswith("--command=bash ~/tpu_worker.sh setup "
                           "https://example.com/specsample.git main")
  stop, _, start = lines[2].partition("; ")
  assert stop.endswith("--command=bash ~/tpu_worker.sh stop train")
  assert start.startswith("bash ~/tpu_worker.sh start train -- python scripts/train.py ")
  (script, args), = python_commands(f"```\n{start}\n```")
  assert args == _TRAIN[2:]
  check_command(script, args, devices=16)


def test_resume_refuses_missing_settings(tmp_path):
  proc = _resume(tmp_path, ZONE="")
  assert proc.returncode != 0 and "ZONE" in proc.stderr
  proc = subprocess.run(["bash", os.path.join(REPO, "scripts/tpu_resume.sh")],
                        env={"PATH": os.environ["PATH"], **_ENV}, capture_output=True, text=True)
  assert proc.returncode == 2 and "usage" in proc.stderr


def _worker(tmp_path, *args, dry=True):
  env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LOGS": str(tmp_path / "logs"),
         "REPO_DIR": str(tmp_path / "specsample")}
  if dry:
    env["DRY_RUN"] = "1"
  return subprocess.run(["bash", os.path.join(REPO, "scripts/tpu_worker.sh"), *args], env=env,
                        capture_output=True, text=True, timeout=60)


def test_worker_setup_is_idempotent(tmp_path):
  """First run clones; with the repository there it fetches and checks out instead.
  Both end with the venv's pip installing the pinned jax[tpu] and the gcs extra."""
  first = _worker(tmp_path, "setup", "https://example.com/specsample.git", "v1").stdout
  assert f"+ git clone https://example.com/specsample.git {tmp_path}/specsample" in first
  assert f"uv venv --seed --python 3.11 {tmp_path}/venv" in first
  (tmp_path / "specsample" / ".git").mkdir(parents=True)
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  (tmp_path / "venv" / "bin" / "python").write_text("")
  (tmp_path / "venv" / "bin" / "python").chmod(0o755)
  again = _worker(tmp_path, "setup", "https://example.com/specsample.git", "v1").stdout
  assert "git clone" not in again and "uv venv" not in again
  assert f"+ git -C {tmp_path}/specsample checkout --force v1" in again
  for out in (first, again):
    assert (f"{tmp_path}/venv/bin/python -m pip install --quiet -e {tmp_path}/specsample[gcs] "
            "jax[tpu]==") in out


def test_worker_jobs_start_in_background_refuse_duplicates_and_stop(tmp_path):
  """A real job (sleep) under start / status / stop: detached, logged, one per name."""
  (tmp_path / "specsample").mkdir()
  dry = _worker(tmp_path, "start", "train", "--", "python", "scripts/train.py").stdout
  assert f"setsid nohup {tmp_path}/venv/bin/python scripts/train.py" in dry  # the venv's python
  started = _worker(tmp_path, "start", "nap", "--", "sleep", "60", dry=False)
  assert started.returncode == 0, started.stderr
  pid = int((tmp_path / "logs" / "nap.pid").read_text())
  try:
    os.kill(pid, 0)  # alive after the starting shell exited
    again = _worker(tmp_path, "start", "nap", "--", "sleep", "60", dry=False)
    assert again.returncode == 1 and "still running" in again.stderr
    assert "nap: running" in _worker(tmp_path, "status", dry=False).stdout
    stopped = _worker(tmp_path, "stop", "nap", dry=False)
    assert stopped.returncode == 0, stopped.stderr
    for _ in range(50):
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        break
      try:  # reap it if it became our child's orphan in this process's group
        os.waitpid(pid, os.WNOHANG)
      except ChildProcessError:
        pass
      time.sleep(0.1)
    else:
      pytest.fail("the job survived stop")
    assert not (tmp_path / "logs" / "nap.pid").exists()
  finally:
    try:
      os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
      pass
