"""Where a compiled loop's time goes, read from a profiler trace of that very loop.

XLA:CPU runs a compiled program as a sequence of thunks (a fusion, a dot, a
copy, a nested while or conditional) and, under `jax.profiler`, records each
thunk's start and duration with its HLO instruction name. The compiled HLO
text maps every instruction to the `jax.named_scope` it was traced under
(metadata op_name). `attribute` joins the two:

  * leaf thunks (everything but while / conditional / call, which only
    contain other thunks) are charged to the innermost scope of `parts` in
    their op_name; an instruction XLA inserted itself (no op_name) is charged
    to "xla_copies" if it is a copy or transpose and to "other" otherwise;
  * when leaf thunks overlap in time (the executor runs independent thunks
    on several threads), each instant is split evenly between those running;
  * instants inside the execution where no leaf thunk runs are "idle": the
    executor's own work between thunks, control flow (loop condition,
    switch) and waiting.

So the parts of one execution add up to its traced wall time exactly; what
can differ from an untraced run is the profiler's own overhead per thunk,
which callers measure by timing the same executable without the profiler.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import logging
import re
import tempfile
from typing import Callable, Sequence

import jax

CONTAINERS = ("while", "conditional", "call")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
_ENTRY = re.compile(r"^ENTRY ")


def instruction_parts(hlo_text: str, parts: Sequence[str]) -> tuple[dict[str, str], set[str]]:
  """({instruction: part}, {container instructions}) of compiled HLO text.

  The part is the innermost of `parts` among the op_name's path components,
  "xla_copies" for a copy / transpose without an op_name, "other" otherwise.
  """
  part_of, containers, untagged = {}, set(), {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode = m.groups()
    if opcode in CONTAINERS:
      containers.add(name)
    op = _OP_NAME.search(line)
    if op is None:
      copy = opcode in ("copy", "transpose") or name.startswith(("copy", "transpose"))
      part_of[name] = "xla_copies" if copy else "other"
      if not copy:  # e.g. a dot XLA rewrote: its operands tell whose it is
        untagged[name] = _OPERAND.findall(line[m.end():].split("metadata=")[0])
      continue
    scopes = op.group(1).split("/")
    hits = [i for i, scope in enumerate(scopes) if scope in parts]
    part_of[name] = scopes[hits[-1]] if hits else "other"
  for _ in range(3):  # inherit through chains of untagged instructions
    for name, operands in untagged.items():
      votes = collections.Counter(part_of.get(o) for o in operands)
      votes = [(n, p) for p, n in votes.items() if p in parts]
      if votes:
        part_of[name] = max(votes)[1]
  return part_of, containers


def entry_instructions(hlo_text: str) -> dict[str, str]:
  """{instruction: opcode} of the ENTRY computation (the program's top level)."""
  out, in_entry = {}, False
  for line in hlo_text.splitlines():
    if _ENTRY.match(line):
      in_entry = True
    elif in_entry and line.startswith("}"):
      break
    elif in_entry:
      m = _INSTRUCTION.match(line)
      if m:
        out[m.group(1)] = m.group(2)
  return out


def loop_window(events: Sequence[dict], entry: dict[str, str]) -> tuple[float, float]:
  """(start, end) of the longest-running top-level while loop of one execution.

  A control-flow thunk's own event ends when it has launched its body, not
  when the loop is done, so the loop is taken to run from its while event's
  start to the end of the last non-top-level thunk before the next top-level
  thunk (the loop's body, condition and everything nested in them).
  """
  events = sorted(events, key=lambda e: e["ts"])
  best = None
  for i, e in enumerate(events):
    if entry.get(e["op"]) != "while":
      continue
    end = e["ts"] + e["dur"]
    for f in events[i + 1:]:
      if f["op"] in entry:
        break
      end = max(end, f["ts"] + f["dur"])
    if best is None or end - e["ts"] > best[1] - best[0]:
      best = (e["ts"], end)
  if best is None:
    raise ValueError("no top-level while loop ran in this execution")
  return best


def thunk_events(run: Callable[[], object], calls: int = 1) -> list[list[dict]]:
  """Profiles `calls` calls of `run` (each must block until done).

  Returns one list of thunk events per execution (XLA run_id), in time
  order; an event has "op" (HLO instruction), "ts" and "dur" (microseconds).
  """
  # jax logs every trace file it writes at INFO: quiet during the benchmark's many traces.
  logging.getLogger("jax._src.profiler").setLevel(logging.WARNING)
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0  # Python calls are not what is measured: less overhead
  options.enable_hlo_proto = False
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True, profiler_options=options)
    try:
      for _ in range(calls):
        run()
    finally:
      jax.profiler.stop_trace()
    (path,) = glob.glob(f"{logdir}/**/perfetto_trace.json.gz", recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  runs = collections.defaultdict(list)
  for e in events:
    args = e.get("args")
    if e.get("ph") == "X" and isinstance(args, dict) and "hlo_op" in args:
      runs[args.get("run_id")].append({"op": args["hlo_op"], "ts": float(e["ts"]),
                                       "dur": float(e["dur"])})
  return sorted(runs.values(), key=lambda r: min(e["ts"] for e in r))


def attribute(events: Sequence[dict], part_of: dict[str, str], containers: set[str],
              window: tuple[float, float] | None = None) -> dict[str, float]:
  """Microseconds per part of one execution (sweep over its leaf thunks); see module doc.

  Args:
    events: one execution's thunk events (`thunk_events`).
    part_of, containers: from `instruction_parts` of the same executable.
    window: (start, end) to attribute, e.g. the decode loop's (`loop_window`);
      thunks that started in it count, cut at its end. None: the whole execution.

  Returns {part: us, ..., "idle": us, "wall": us, "thunks": leaf thunks run,
  "thunks:<part>": those charged to <part>}, where wall (the window, or first
  thunk start to last thunk end) equals the sum of the parts and idle.
  """
  if not events:
    raise ValueError("no thunk events: was the executable run under the profiler?")
  start, end = window or (min(e["ts"] for e in events), max(e["ts"] + e["dur"] for e in events))
  events = [e for e in events if start <= e["ts"] < end]
  marks, counts = [], collections.Counter()  # marks: (time, +1 start / -1 end, part)
  for e in events:
    if e["op"] in containers:
      continue
    part = part_of.get(e["op"], "other")
    counts[part] += 1
    marks += [(e["ts"], 1, part), (min(e["ts"] + e["dur"], end), -1, part)]
  marks.sort(key=lambda m: (m[0], m[1]))
  totals = collections.Counter()
  running = collections.Counter()
  now = start
  for t, delta, part in marks:
    active = sum(running.values())
    if t > now:
      if active:
        for p, n in running.items():
          totals[p] += (t - now) * n / active
      else:
        totals["idle"] += t - now
      now = t
    running[part] += delta
    if not running[part]:
      del running[part]
  totals["idle"] += end - now
  out = {p: float(v) for p, v in totals.items()}
  out["wall"] = float(end - start)
  out["thunks"] = float(sum(counts.values()))
  out.update({f"thunks:{p}": float(n) for p, n in counts.items()})
  return out
