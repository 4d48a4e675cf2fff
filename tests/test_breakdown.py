"""The profiler-trace breakdown (eval/speed/trace.py, eval/speed/breakdown.py): attribution by
hand, then on a real compiled loop. Nothing here asserts a speed, nor the sign of a measured duration
(a difference of two wall times goes negative under load): only that the parts are found
(thunk counts), charged to the right scope, add up, and are reported."""

import math


import jax
import jax.numpy as jnp
import pytest

from specsample.decoding import Sampling
from specsample.eval.speed import breakdown, trace
from specsample.eval.speed import report as benchmark_report
from test_decoding import GREEDY_PROMPTS

PARTS = ("a", "b")


def _event(op, ts, dur):
  return {"op": op, "ts": float(ts), "dur": float(dur)}


def test_attribute_splits_overlaps_and_counts_idle():
  part_of = {"x": "a", "y": "b", "z": "other", "w": "a"}
  events = [_event("loop", 0, 1),   # a container: its own span is not charged
            _event("x", 0, 10),     # a alone 0-4, shares 4-10 with y
            _event("y", 4, 8),      # b shares 4-10, alone 10-12
            _event("z", 15, 5),     # idle 12-15, other 15-20
            _event("w", 22, 3)]     # idle 20-22, a 22-25
  out = trace.attribute(events, part_of, {"loop"})
  assert out["a"] == pytest.approx(4 + 3 + 3)
  assert out["b"] == pytest.approx(3 + 2)
  assert out["other"] == pytest.approx(5)
  assert out["idle"] == pytest.approx(3 + 2)
  assert out["wall"] == pytest.approx(25)
  assert out["thunks"] == 4 and out["thunks:a"] == 2 and out["thunks:b"] == 1
  assert sum(v for k, v in out.items() if k in ("a", "b", "other", "idle")) == pytest.approx(25)
  # A window: only thunks that start in it (not x), cut at its end (z).
  out = trace.attribute(events, part_of, {"loop"}, window=(4, 18))
  assert out["b"] == pytest.approx(8) and out["other"] == pytest.approx(3)
  assert out["idle"] == pytest.approx(3) and "a" not in out
  assert out["wall"] == pytest.approx(14)


def test_loop_window_runs_to_the_last_nested_thunk():
  entry = {"copy.1": "copy", "while.2": "while", "fusion.9": "fusion"}
  events = [_event("copy.1", 0, 2), _event("while.2", 3, 1), _event("body.1", 4, 5),
            _event("body.2", 9, 6), _event("fusion.9", 16, 2)]
  assert trace.loop_window(events, entry) == (3, 15)
  with pytest.raises(ValueError, match="no top-level while"):
    trace.loop_window(events[:1], entry)


def test_instruction_parts_of_a_compiled_loop():
  """Named scopes survive compilation; the loop and its body are found in the trace."""
  @jax.jit
  def f(x, w):
    def body(_, x):
      with jax.named_scope("a"):
        x = jnp.tanh(x @ w)
      with jax.named_scope("b"):
        x = jax.nn.softmax(x * 3.0)
      return x
    return jax.lax.fori_loop(0, 5, body, x)

  x, w = jnp.ones((4, 64)), jnp.eye(64) * 0.5
  compiled = f.lower(x, w).compile()
  hlo = compiled.as_text()
  part_of, containers = trace.instruction_parts(hlo, PARTS)
  assert {"a", "b"} <= set(part_of.values())
  assert containers and any(op == "while" for op in trace.entry_instructions(hlo).values())
  runs = trace.thunk_events(lambda: jax.block_until_ready(compiled(x, w)))
  events = max(runs, key=len)
  window = trace.loop_window(events, trace.entry_instructions(hlo))
  out = trace.attribute(events, part_of, containers, window)
  # Thunks were found for both scopes (a count, not a duration); durations only add up.
  assert out["thunks:a"] > 0 and out["thunks:b"] > 0
  assert all(out[p] >= 0 for p in ("a", "b"))
  parts = [v for k, v in out.items() if k != "wall" and not k.startswith("thunks")]
  assert sum(parts) == pytest.approx(out["wall"])


def test_breakdown_of_the_decode_loop_adds_up_and_reports(tiny_pair):
  target, draft = tiny_pair
  out = breakdown.measure(target, draft, GREEDY_PROMPTS, Sampling(temperature=0.8, top_p=0.9),
                          (0, 2), 24, trips=4, repeats=1)
  assert out["K"] == [0, 2] and out["iterations"] == [4, 4]
  for i in range(2):
    parts = sum(out[p][i] for p in breakdown.PARTS)
    assert parts == pytest.approx(out["traced"][i], rel=1e-6)
    # Every part ran thunks (counts); a traced duration is a sum of thunk spans, >= 0 by
    # construction; `measured` is a difference of two walls: only finite, any sign.
    for part in ("target_forward", "draft_forward", "transform", "commit"):
      assert out["thunk_counts"][part][i] > 0, (part, i)
      assert out[part][i] >= 0
    assert math.isfinite(out["measured"][i])
    assert out["overhead"][i] == pytest.approx(out["traced"][i] / out["measured"][i] - 1)
  # K = 0 runs no rejection step: no thunk of it, and so no time.
  assert out["thunk_counts"]["rejection"][0] == 0 < out["thunk_counts"]["rejection"][1]
  assert out["rejection"][0] == 0
  assert out["c"][0] is None and out["v_k"][0] is None
  unit = out["target_forward"][0]
  assert out["c"][1] == pytest.approx(out["draft_forward"][1] / (2 * unit))
  assert out["v_k"][1] == pytest.approx(out["target_forward"][1] / unit)
  out["bound"], out["decode_over_bound"] = [None, 1.5], [None, 0.9]
  assert out["thunks"][1] > out["thunks"][0] > 0
  cost = benchmark_report.profiler_cost_ms({"settings": [{"breakdown": out}]})
  text = "\n".join(benchmark_report._breakdown_lines(out, cost))
  assert "| 2 | " in text and "sum - tracer" in text
  with pytest.raises(ValueError, match="ks must include 0"):
    breakdown.measure(target, draft, GREEDY_PROMPTS, Sampling(temperature=0), (1, 2), 24)
