"""Two processes on 127.0.0.1, 4 CPU devices each, one 8-device mesh: same tokens as one process.

Launches tests/multihost_worker.py twice with --distributed=manual (the flags
of specsample/distributed.py); JAX's CPU collectives between the processes
are gloo over TCP (jax_cpu_collectives_implementation defaults to 'gloo' in
jax 0.10). The coordinator binds to 127.0.0.1 only
(JAX_COORDINATOR_BIND_ADDRESS). Both processes are killed if they have not
finished after TIMEOUT_S, and the test then fails with their output.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from specsample import sharding as sh
from specsample.decoding import generate
from specsample.models import io as model_io

import sharding_case as case

TIMEOUT_S = 120
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(WORKER))


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_workers(output_dir: str, num_processes: int = 2) -> list[str]:
  """Runs the worker processes to completion; returns their outputs (stdout + stderr)."""
  port = _free_port()
  env = dict(os.environ)
  env.update({
      "JAX_PLATFORMS": "cpu",
      # 4 devices per process. LLVM -O0: these tiny programs run as fast, and the
      # compile, most of this test's time, takes a third (tokens are compared).
      "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
      "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
      "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
  })
  procs = []
  for pid in range(num_processes):
    cmd = [sys.executable, WORKER, "--distributed=manual",
           f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
           f"--process_id={pid}", f"--output_dir={output_dir}"]
    procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  deadline = time.monotonic() + TIMEOUT_S
  outputs, timed_out = [], False
  for proc in procs:
    try:
      out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      timed_out = True
      for p in procs:
        p.kill()
      out, _ = proc.communicate()
    outputs.append(out)
  if timed_out or any(p.returncode != 0 for p in procs):
    tails = "\n".join(f"--- process {i} (exit {p.returncode}):\n{o[-3000:]}"
                      for i, (p, o) in enumerate(zip(procs, outputs)))
    what = f"timed out after {TIMEOUT_S} s" if timed_out else "failed"
    pytest.fail(f"workers {what}:\n{tails}")
  return outputs


def test_two_processes_decode_like_one(tmp_path):
  outputs = _run_workers(str(tmp_path))
  result = json.loads((tmp_path / "result.json").read_text())
  assert sorted(os.listdir(tmp_path)) == ["result.json", "target"]  # no temporary folders left
  assert result["written_by"] == 0                  # process 0 alone writes
  # The collectively saved model: each process read back its own shards, and
  # the folder loads on one device as the weights both processes started from.
  assert result["reloaded_shards_equal"]
  saved = model_io.load_lm(str(tmp_path / "target"))
  assert saved.config == case.TARGET_CFG
  jax.tree_util.tree_map(np.testing.assert_array_equal, saved.params, case.target_lm().params)
  assert (result["process_count"], result["global_devices"], result["local_devices"]) == (2, 8, 4)
  assert result["mesh"] == case.MESH_SHAPES[case.MULTIHOST_MESH]
  # One mesh across both processes; fsdp crosses the process boundary.
  assert result["processes_by_fsdp"] == [[0], [1]]
  lines = [next(l for l in out.splitlines() if l.startswith(f"process {i}/2:"))
           for i, out in enumerate(outputs)]
  print("\n".join(lines))                           # shown with pytest -s
  for line in lines:                                # every process has the full output
    assert line.endswith(f"tokens {result['tokens']}")

  # One process, the same 8-device mesh and rules (conftest.py: 8 CPU devices;
  # this compiled loop is shared with tests/test_sharding.py), and unsharded.
  target, draft = case.target_lm(), case.draft_lm()
  single = generate(
      target, case.PROMPTS, draft=draft, mesh=sh.make_mesh(case.MESH_SHAPES[case.MULTIHOST_MESH]),
      rules=case.TARGET_RULES, draft_rules=case.DRAFT_RULES, method="speculative",
      **case.DECODE)
  assert result["tokens"] == single.tokens
  assert result["target_calls"] == single.stats["target_calls"].tolist()
  reference = generate(target, case.PROMPTS, method="autoregressive", **case.DECODE)
  assert result["tokens"] == reference.tokens
