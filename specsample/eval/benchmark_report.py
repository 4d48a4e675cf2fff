"""The benchmark's results as markdown, and both files written atomically."""

from __future__ import annotations

import json
import os

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
      f"{'stopping' if cfg['stop_at_eos'] else 'not stopping'} at eos; per K a warm-up, then "
      f"{cfg['repeats']} timed pass(es), one autoregressive pass after the first; each call's "
      "fastest wall is kept (AR: over all its passes).", "",
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
      "| batch | sampling | AR ms/token | best K | speedup | decode speedup | bound | "
      "speedup / bound | decode / bound | bound_s | decode / bound_s | machine |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in results["settings"]:
    r = next(r for r in s["speculative"] if r["K"] == s["best_k"])
    lines.append(
        f"| {s['batch_size']} | {s['sampling']} | {s['autoregressive']['ms_per_token']:.2f} | "
        f"{r['K']} | {r['speedup']:.2f} | {r['decode_speedup']:.2f} | {r['bound']:.2f} | "
        f"{r['measured_over_bound']:.2f} | {r['decode_over_bound']:.2f} | "
        f"{r['bound_sampled']:.2f} | {r['decode_over_bound_sampled']:.2f} | {label} |")
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
        "bound | speedup / bound | decode / bound | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["speculative"]:
      flag = "" if r["matches_autoregressive"] in (None, True) else " (tokens differ from AR)"
      lines.append(
          f"| {r['K']} | {r['ms_per_token']:.2f} | {r['speedup']:.2f}{flag} | "
          f"{r['decode_speedup']:.2f} | {s['alpha']:.3f} | {r['acceptance_rate']:.3f} | "
          f"{r['tokens_per_call']:.2f} | {r['tokens_per_iteration']:.2f} | {r['c']:.3f} | "
          f"{r['v_k']:.2f} | {r['expected_tokens']:.2f} | {r['bound']:.2f} | "
          f"{r['measured_over_bound']:.2f} | {r['decode_over_bound']:.2f} | {label} |")
    p = ar["profile"]
    lines += [
        "", "Where the time goes, ms per loop iteration (prefill is per call, outside the loop; "
        "other = measured iteration - the timed parts: rejection, commit, loop bookkeeping, "
        "and noise):", "",
        "| loop | iteration | draft fwd | draft sampling | target fwd | target sampling | other "
        "| prefill/call | c_s | v_s | bound_s | decode / bound_s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| AR | {p['iteration_ms']:.2f} | - | - | {p['target_forward_ms']:.2f} | "
        f"{p['target_sampling_ms']:.2f} | {p['other_ms']:.2f} | {p['prefill_ms_per_call']:.2f} | "
        "- | - | - | - |"]
    for r in s["speculative"]:
      p = r["profile"]
      lines.append(
          f"| K={r['K']} | {p['iteration_ms']:.2f} | {p['draft_forward_ms']:.2f} | "
          f"{p['draft_sampling_ms']:.2f} | {p['target_forward_ms']:.2f} | "
          f"{p['target_sampling_ms']:.2f} | {p['other_ms']:.2f} | {p['prefill_ms_per_call']:.2f} | "
          f"{r['c_sampled']:.3f} | {r['v_sampled']:.2f} | {r['bound_sampled']:.2f} | "
          f"{r['decode_over_bound_sampled']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def write_results(results: dict, output_dir: str) -> tuple[str, str]:
  """Writes <output_dir>/benchmark.json and benchmark.md atomically; returns their paths."""
  json_path = os.path.join(output_dir, "benchmark.json")
  md_path = os.path.join(output_dir, "benchmark.md")
  # Format both before touching the disk: a formatting error writes nothing.
  write_atomic({json_path: json.dumps(results, indent=1) + "\n",
                md_path: format_markdown(results) + "\n"})
  return json_path, md_path
