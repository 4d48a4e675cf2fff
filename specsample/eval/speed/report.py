"""The benchmark's results as markdown, and both files written atomically."""

from __future__ import annotations

import json
import os

from specsample.eval.speed import auto_overhead
from specsample.utils import write_atomic


def format_markdown(results: dict) -> str:
  """The results as markdown: set-up, a summary, then per (batch, sampling) two tables."""
  m, cfg = results["machine"], results["config"]
  label = m["label"]
  lines = [
      "# Speculative vs autoregressive sampling: speed", "",
      f"Command: `{results['command']}`  ",
      f"Started {results['started']}, took {results['elapsed_s']:.0f} s.  ",
      f"Machine: {label}; {m['platform']}; devices {m['jax_devices']}; load average "
      f"{m['load_average_1_5_15']} at start, {results['load_average_at_end']} at end; niceness "
      f"{m['niceness']}.  ",
      *([f"Mesh: {results['mesh']}, rules target {cfg['target_rules']}, draft "
         f"{cfg['draft_rules']}.  "] if results.get("mesh") else []),
      f"Pair: target `{cfg['target_dir']}` ({results['target']['num_layers']} layers, d_model "
      f"{results['target']['d_model']}), draft `{cfg['draft_dir']}` "
      f"({results['draft']['num_layers']} layers, d_model {results['draft']['d_model']}). "
      f"{len(results['prompts'])} HumanEval prompts ({results['prompts'][0]}, ...), each cut to its "
      f"last {cfg['prompt_tokens']} tokens, {cfg['max_new_tokens']} new tokens per row, "
      f"{'stopping' if cfg.get('eos_id') is not None else 'not stopping'} at eos; every loop warmed up, "
      f"then {cfg['repeats']} round(s) of one timed pass of each (AR, every K, auto: "
      "round-robin); each call's fastest wall over the rounds is kept.", "",
      "ms/token = wall / mean new tokens per row, prefill included; speedup = autoregressive "
      "ms/token / speculative ms/token at the same batch and sampling. decode = the same with "
      "the separately timed prefill taken out of both walls: the part the bound models. alpha = "
      "E[sum_x min(p, q)] measured on the autoregressive continuations. acc = accepted / drafted "
      "(the generate statistic; NOT alpha for K > 1). tau = tokens per target call; tau/it = "
      "mean new tokens per row / loop iterations (a batch waits for its slowest row). c = draft "
      "/ target 1-token forward, v_K = target (K+1)-token / 1-token forward (jitted loops, no "
      "dispatch). E = (1 - alpha^(K+1)) / (1 - alpha). bound = E / (K c + v_K) (PAPERS.md "
      "section 2). bound_s = the same with each step's sampling transform added to c and v_K.",
      "", "## Summary (best K per setting, by end-to-end speedup)", "",
      "auto = num_draft='auto', K picked every iteration inside the loop (mean K shown); "
      "oracle = the best fixed K of the sweep, found by timing them all. bound_loop = the bound "
      "with c and v_K from the profiler trace of the loop (breakdown below).", "",
      "| batch | sampling | AR ms/token | best K | speedup | decode speedup | bound | "
      "decode / bound | bound_loop | decode / bound_loop | auto speedup | auto mean K | "
      "auto / oracle | auto / K=4 | machine |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in results["settings"]:
    r = next(r for r in s["speculative"] if r["K"] == s["best_k"])
    loop = _at_k(s.get("breakdown"), r["K"])
    a = s.get("auto") or {}
    lines.append(
        f"| {s['batch_size']} | {s['sampling']} | {s['autoregressive']['ms_per_token']:.2f} | "
        f"{r['K']} | {r['speedup']:.2f} | {r['decode_speedup']:.2f} | {r['bound']:.2f} | "
        f"{r['decode_over_bound']:.2f} | {_f(loop.get('bound'))} | "
        f"{_f(loop.get('decode_over_bound'))} | {_f(a.get('speedup'))} | {_f(a.get('mean_k'))} | "
        f"{_f(a.get('over_oracle'))} | {_f(a.get('over_k4'))} | {label} |")
  lines.append("")
  for s in results["settings"]:
    ar = s["autoregressive"]
    lines += [
        f"## Batch {s['batch_size']}, {s['sampling']} (temperature {s['temperature']}, top_p "
        f"{s['top_p']}, top_k {s['top_k']})", "",
        f"Autoregressive: {ar['ms_per_token']:.2f} ms/token ({ar['decode_ms_per_token']:.2f} "
        f"decode); target 1-token forward {ar['target_step_ms']:.3f} ms, sampling transform "
        f"{ar['sampling_ms']:.3f} ms. alpha = {s['alpha']:.3f}.", "",
        "| K | ms/token | speedup | decode speedup | alpha | acc | tau | tau/it | c | v_K | E | "
        "bound | speedup / bound | decode / bound | compile s | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["speculative"]:
      flag = "" if r["matches_autoregressive"] in (None, True) else " (tokens differ from AR)"
      lines.append(
          f"| {r['K']} | {r['ms_per_token']:.2f} | {r['speedup']:.2f}{flag} | "
          f"{r['decode_speedup']:.2f} | {s['alpha']:.3f} | {r['acceptance_rate']:.3f} | "
          f"{r['tokens_per_call']:.2f} | {r['tokens_per_iteration']:.2f} | {r['c']:.3f} | "
          f"{r['v_k']:.2f} | {r['expected_tokens']:.2f} | {r['bound']:.2f} | "
          f"{r['measured_over_bound']:.2f} | {r['decode_over_bound']:.2f} | "
          f"{r['warmup_s']:.1f} | {label} |")
    if s.get("auto"):
      a = s["auto"]
      flag = "" if a["matches_autoregressive"] in (None, True) else " (tokens differ from AR)"
      lines.append(
          f"| auto (mean K {a['mean_k']:.2f}) | {a['ms_per_token']:.2f} | {a['speedup']:.2f}{flag} "
          f"| {a['decode_speedup']:.2f} | {s['alpha']:.3f} | {a['acceptance_rate']:.3f} | "
          f"{a['tokens_per_call']:.2f} | - | - | - | - | - | - | - | {a['warmup_s']:.1f} | {label} |")
      lines += ["", f"auto: {a['over_oracle']:.2f} of the oracle K={a['oracle_k']}'s speedup"
                + (f", {a['over_k4']:.2f} of K=4's." if a["over_k4"] else ".")
                + " Its compile s includes the one-off cost calibration (decoding/calibrate.py)."]
    if s.get("breakdown"):
      lines += _breakdown_lines(s["breakdown"], profiler_cost_ms(results))
    lines.append("")
  if results.get("auto_first_call"):  # scripts/auto_overhead.py adds it
    lines += auto_overhead.markdown(results["auto_first_call"]) + [""]
  return "\n".join(lines)


def _f(x, digits: int = 2) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


def _at_k(breakdown: dict | None, k: int) -> dict:
  """The breakdown's values at K (an empty dict when it was not measured there)."""
  if not breakdown or k not in breakdown["K"]:
    return {}
  i = breakdown["K"].index(k)
  return {name: values[i] for name, values in breakdown.items() if isinstance(values, list)}


TRACED_PARTS = ("draft_forward", "target_forward", "transform", "rejection", "commit",
                "xla_copies", "other", "idle")
ABLATED_PARTS = ("draft_forward", "target_forward", "transform", "rejection", "commit", "rest")


def profiler_cost_ms(results: dict) -> float | None:
  """The tracer's cost per thunk (ms), fitted over every breakdown row of a run.

  traced - measured = cost x thunks, least squares through the origin: one
  number for all rows of all settings, so how well the rows then agree is
  still a check, not a fit.
  """
  rows = [(t, m, n) for s in results["settings"] if s.get("breakdown")
          for t, m, n in zip(s["breakdown"]["traced"], s["breakdown"]["measured"],
                             s["breakdown"]["thunks"])]
  if not rows:
    return None
  return sum((t - m) * n for t, m, n in rows) / sum(n * n for _, _, n in rows)


def _breakdown_lines(b: dict, cost_ms: float) -> list[str]:
  lines = [
      "", "Where an iteration's time goes, ms, from a profiler trace of the compiled loop "
      "itself (eval/speed/breakdown.py): every thunk XLA ran in the loop is charged to the named "
      "scope it was traced under; xla copies = copies XLA inserted (loop carry, layouts); "
      "other = unscoped ops (current token, block, K choice); idle = no thunk running (the "
      "executor between thunks, loop condition, switch). sum = the traced iteration, which the "
      "parts add up to exactly. measured = the same loop untraced, interleaved with the traces; "
      "overhead = sum / measured - 1: the tracer's own cost, which grows with the thunks run, "
      f"plus drift. sum - tracer = sum - thunks x {1e3 * cost_ms:.2f} us, the tracer's cost per "
      "thunk fitted once over every row of this run (benchmark_report.profiler_cost_ms); "
      "residual = (sum - tracer) / measured - 1. K = 0 is an autoregressive step that keeps the "
      "draft cache in step; its target forward is the unit of c and v_K.", "",
      "| K | measured | draft fwd | target fwd | transforms | rejection | commit | xla copies | "
      "other | idle | sum | overhead | thunks | sum - tracer | residual | c | v_K | bound_loop | "
      "decode / bound_loop |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for k in b["K"]:
    r = _at_k(b, k)
    parts = " | ".join(_f(r[p]) for p in TRACED_PARTS)
    net = r["traced"] - cost_ms * r["thunks"]
    lines.append(f"| {k} | {r['measured']:.2f} | {parts} | {r['traced']:.2f} | "
                 f"{100 * r['overhead']:+.1f}% | {r['thunks']:.0f} | {net:.2f} | "
                 f"{100 * (net / r['measured'] - 1):+.1f}% | {_f(r['c'], 3)} | "
                 f"{_f(r['v_k'])} | {_f(r['bound'])} | {_f(r['decode_over_bound'])} |")
  lines += ["", f"Compile s of the loop: {b['compile_s']:.1f} (near 0 when the persistent "
            "compilation cache already held it: it is auto's loop)."]
  a = b.get("ablation")
  if a:
    lines += [
        "", "Cross-check by ablation (eval/speed/breakdown.py): each part = full iteration - the "
        "iteration with that part replaced by a stand-in of the same shapes, rest = every part "
        "replaced; residual = (full - sum) / full. It does not add up: removing a part changes "
        "how XLA compiles the rest.", "",
        "| K | full | draft fwd | target fwd | transforms | rejection | commit | rest | sum | "
        "residual |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in a["K"]:
      r = _at_k(a, k)
      parts = " | ".join(_f(r[p]) for p in ABLATED_PARTS)
      lines.append(f"| {k} | {r['full']:.2f} | {parts} | {r['sum']:.2f} | "
                   f"{100 * r['residual']:.1f}% |")
    compile_s = ", ".join(f"{name} {sec:.0f}" for name, sec in a["compile_s"].items())
    lines += ["", f"Compile s of the ablation variants: {compile_s}."]
  return lines


def write_results(results: dict, output_dir: str) -> tuple[str, str]:
  """Writes <output_dir>/benchmark.json and benchmark.md atomically; returns their paths."""
  json_path = os.path.join(output_dir, "benchmark.json")
  md_path = os.path.join(output_dir, "benchmark.md")
  # Format both before touching the disk: a formatting error writes nothing.
  write_atomic({json_path: json.dumps(results, indent=1) + "\n",
                md_path: format_markdown(results) + "\n"})
  return json_path, md_path
