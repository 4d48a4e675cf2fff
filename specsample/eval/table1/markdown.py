"""results/table1.md: the machine legend, the Table 1 grid beside the paper, parity, K sweep."""

from __future__ import annotations

import os
from typing import Sequence

from specsample.eval.table1 import grid
from specsample.eval.table1.report import (METHOD_TITLES, PAPER_CITATION, PAPER_TABLE1,
                                           TASK_TITLES, describe_machine, method_title,
                                           row_order)

PROMPT_FORMATS = {
    "raw": "raw (the paper's: HumanEval prompts as they are; summarization 1-shot "
           "\"Article: ... One-sentence summary:\")",
    "chat": "chat (the target's chat template: HumanEval with the assistant turn prefilled with "
            "\"```python\" + the problem's prompt, the completion cut at the stop sequences and "
            "\"```\"; summarization 1-shot, the shot a previous user / assistant exchange, the "
            "summary the reply's first line)"}
def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
  return "—" if x is None else f"{x:{spec}}{suffix}"


def _fmt_k(row: dict) -> str:
  """K, or for auto the mean K it drafted per target call."""
  if row["K"] == grid.AUTO:
    return f"auto ({row['draft_per_call']:.1f})"
  return _fmt(row["K"], "d")


def _fmt_quality(row: dict) -> str:
  pct = row["task"] == "humaneval"
  scale, spec = (100, ".1f") if pct else (1, ".3f")
  unit = "%" if pct else ""
  lo, hi = row["metric_ci_low"], row["metric_ci_high"]
  ci = "" if lo is None else f" [{lo * scale:{spec}}, {hi * scale:{spec}}]"
  text = f"{row['metric']} {row['metric_value'] * scale:{spec}}{unit}{ci}"
  extra = {k: v for k, v in (row["pass_at_k"] or {}).items() if k != "pass@1"}
  if extra:
    text += "; " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in extra.items())
  return text


def _paper_quality(row: dict) -> str:
  """The paper's quality; named "(paper: XSum)" beside a row on another dataset."""
  text = " ".join(filter(None, (row["paper_metric"], row["paper_value"]))) or "—"
  paper_dataset = TASK_TITLES[row["task"]]
  if row["paper_value"] and row.get("dataset", paper_dataset) != paper_dataset:
    text += f" (paper: {paper_dataset}, another dataset)"
  return text


def _auto_set(cfg: dict) -> str:
  """The K set of the auto cells, as the config (a dict here) chose it."""
  choices = cfg.get("auto_choices") or ()
  return "K in {" + ", ".join(map(str, choices)) + "}" if choices else "0-8"


def _standin_text(results: dict) -> str:
  """The main table's note on the docstring-summarization stand-in (size, hash, source)."""
  xs = results["config"]["xsum"]
  info = results.get("datasets", {}).get("xsum", {}).get("stand_in")
  if not info:
    return "not run (config.tasks has no xsum)."
  return (f"{info['label']}: the first {results['datasets']['xsum']['num_items_used']} of "
          f"{info['num_items']} functions/classes of the corpus's validation split (document = "
          f"the definition without its docstring, summary = the docstring's first sentence; "
          f"sha256 {info['sha256'][:16]}, see docsum.json), through the XSum code path: 1-shot, "
          f"nucleus (temperature {xs['temperature']}, top-p {xs['top_p']}), at most "
          f"{xs['max_new_tokens']} new tokens, ROUGE-2. Its paper columns are the paper's XSum "
          "numbers (news articles), another dataset, kept for reference; real XSum: "
          "`--config.xsum.path=...`.")


def _parity_mark(row: dict) -> str:
  mark = {None: "", True: " ✓", False: " ✗ parity"}[row["parity_passed"]]
  return mark + (" †" if row.get("speedup_across_code_versions") else "")


def _code_note(rows: Sequence[dict]) -> list[str]:
  """The code versions that timed the rows, and what † means, when they differ."""
  versions = sorted({r.get("code", "unknown") for r in rows})
  if len(versions) < 2:
    return [f"Code: `{versions[0]}` timed every row."] if versions else []
  return [f"Code: rows were timed at {len(versions)} versions ({', '.join(f'`{v}`' for v in versions)}; "
          "each row's is in table1.csv). † marks a speedup whose AR row was timed at another "
          "version than its SpS row (a stored row reused by a rerun): it includes any change in "
          "speed between the two."]


def _header(results: dict) -> list[str]:
  """Command, setting, models, the paper and the machine legend."""
  cfg, rows, models = results["config"], results["rows"], results["models"]
  fmt = cfg.get("prompt_format", "raw")
  name = models.get("target_name", os.path.basename(os.path.normpath(cfg["target_dir"])))
  draft_kind = models.get("draft_kind", "draft model")
  lines = [
      f"# Table 1 reproduction: speculative vs autoregressive sampling — {name} with a "
      f"{draft_kind}, {fmt} prompts", "",
      f"Command: `{results['command']}`  ",
      f"Setting `{cfg['setting']}`, run finished {results['finished']} "
      f"({results['elapsed_s']:.0f} s this invocation; {len(results['computed'])} cells computed, "
      f"{len(results['reused'])} reused from `{results['workdir']}`).  ",
      f"Target `{cfg['target_dir']}` ({models['target']}), {draft_kind} "
      f"`{cfg['draft_dir']}` ({models['draft']}).  ",
      f"Prompts: {PROMPT_FORMATS[fmt]}.  ",
      f"Paper: {PAPER_CITATION}.", "", "Machines (every number below names the one it was "
      "measured on; speed numbers are only comparable within one machine):", ""]
  for mid, info in results["machines"].items():
    lines.append(f"- **{mid}**: {describe_machine(info)}; platform {info.get('platform')}")
  loads = [r["load_average_at_start"][0] for r in rows if r["load_average_at_start"]]
  if loads:
    lines.append(f"- 1-minute load average at the start of the cells: {min(loads):.1f} to "
                 f"{max(loads):.1f} (other work on the CPU inflates ms/token).")
  return lines


def _main_table(results: dict) -> list[str]:
  """The Table 1 grid (main K, every batch size) beside the paper's rows."""
  cfg, rows = results["config"], results["rows"]
  he, xs = cfg["humaneval"], cfg["xsum"]
  lines = [
      "", "## Table 1 (main K, every batch size)", "",
      f"HumanEval: first {he['num_problems']} problems, greedy 1 sample and nucleus (temperature "
      f"{he['temperature']}, top-p {he['top_p']}) {he['num_samples']} samples per problem, at "
      f"most {he['max_new_tokens']} new tokens, stop at EOS, truncated at "
      f"{list(grid.code_stops(cfg.get('prompt_format', 'raw')))} (the same for every method), "
      f"executed with a "
      f"{he['timeout_s']} s limit. Summarization: " + (
          f"XSum `{xs['path']}` ({xs['split']}, {xs['num_items']} articles at most), 1-shot, nucleus "
          f"(temperature {xs['temperature']}, top-p {xs['top_p']}), at most "
          f"{xs['max_new_tokens']} new tokens." if xs["path"] else _standin_text(results)),
      f"Quality: mean over problems/articles with a {cfg['confidence']:.0%} confidence interval; "
      "pass@k unbiased. Paper columns (its batch 1, K = 4, 70B/4B pair on TPU v4) stand beside "
      "our batch-1 rows at our K. SpS auto: num_draft=\"auto\", K picked by the loop at every "
      f"iteration ({_auto_set(cfg)}; its K column is the mean drafted per target call), its "
      "speedup against the same AR row.", "",
      "| task | sampling | method | batch | K | ms/token | speedup | decode ms/token "
      "| decode speedup | acceptance | tokens/call "
      "| quality (ours) | paper quality | paper ms/token | paper speedup | machine |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  main = [r for r in rows if r["role"] == "main"]
  shown = set()
  for task in grid.TASKS:
    for sampling in grid.SAMPLINGS:
      group = [r for r in main if r["task"] == task and r["sampling"] == sampling]
      for r in sorted(group, key=row_order):
        shown.add((task, sampling, r["method"]))
        lines.append(
            f"| {r.get('dataset', TASK_TITLES[task])} | {sampling} | {method_title(r)} | "
            f"{r['batch_size']} | {_fmt_k(r)} | {r['ms_per_token']:.2f} | "
            f"{_fmt(r['speedup'], '.2f', 'x')}{_parity_mark(r)} | "
            f"{_fmt(r.get('decode_ms_per_token'))} | {_fmt(r.get('decode_speedup'), '.2f', 'x')} | "
            f"{_fmt(r['acceptance_rate'], '.3f')} | {r['tokens_per_call']:.2f} | "
            f"{_fmt_quality(r)} | "
            f"{_paper_quality(r)} | "
            f"{_fmt(r['paper_ms_per_token'])} | {_fmt(r['paper_speedup'], '.2f', 'x')} | "
            f"{r['machine']} |")
      for method in grid.METHODS:
        paper = PAPER_TABLE1.get((task, sampling, method))
        if paper and (task, sampling, method) not in shown:
          lines.append(f"| {TASK_TITLES[task]} | {sampling} | {METHOD_TITLES[method]} | 1 | "
                       f"{'4' if method == 'speculative' else '—'} | not run | | | | | | | "
                       f"{paper[0]} {paper[1]} | {paper[2]:.2f} | {paper[3]:.2f}x | |")
  canon = results.get("canonical_loglik")
  if canon:
    lines += ["", f"HumanEval canonical solutions under the target: mean log-likelihood "
              f"{canon['mean_loglik_per_token']:.3f} nats/token ({canon['total_tokens']} tokens, "
              f"{len(canon['per_problem'])} problems; mean of per-problem means "
              f"{canon['mean_of_problem_means']:.3f}), machine {canon['machine']}."]
  return lines


def _parity_section(results: dict) -> list[str]:
  """Every parity check with its result, and the verdict."""
  cfg = results["config"]
  lines = ["", "## Parity (quality is checked, not assumed)", "",
            "Greedy: speculative must reproduce autoregressive token for token. Sampled, every "
            "cell (AR too): each generated token x, drawn where the target's sampling "
            "distribution (temperature, top-p) is s, must look like a draw from s: the sum over "
            "all tokens of log s(x) + H(s), which has mean 0 at every prefix, divided by its "
            "standard deviation, is z ~ N(0, 1) for an exact sampler. Sampled SpS cells also "
            "compare the quality metric with AR (paired per problem, Student t interval). "
            f"The {results['num_sampled_checks']} sampled checks are Bonferroni-corrected, so "
            f"an exact implementation fails any of them at most {1 - cfg['confidence']:.0%} of "
            "the time.", "",
            "| task | sampling | method | batch | K | check | result | pass |",
            "|---|---|---|---|---|---|---|---|"]
  for p in results["parity"]:
    for c in p["checks"]:
      lines.append(f"| {p.get('dataset', TASK_TITLES[p['task']])} | {p['sampling']} | "
                   f"{method_title(p)} | {p['batch_size']} | {p['K'] or '—'} | "
                   f"{c['check']} | {c['detail']} | {'✓' if c['passed'] else '✗ FAILED'} |")
  verdict = ("all parity checks passed" if results["parity_ok"] else
             f"{results['parity_failures']} parity check(s) FAILED")
  lines += ["", f"**{verdict}.**"]
  return lines


def _sweep_section(rows: Sequence[dict]) -> list[str]:
  """The K sweep at batch 1 (empty without one)."""
  lines = []
  sweep = [r for r in rows if r["batch_size"] == 1 and r["method"] == "speculative"
           and (r["role"] == "sweep" or any(s["role"] == "sweep" and s["task"] == r["task"]
                                            and s["sampling"] == r["sampling"] for s in rows))]
  if sweep:
    lines += ["", "## K sweep (batch 1; speedup against the batch-1 AR row above)", "",
              "| task | sampling | K | sequences | ms/token | speedup | acceptance | tokens/call | "
              "quality | machine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(sweep, key=lambda r: (r["task"], r["sampling"], row_order(r))):
      lines.append(f"| {r.get('dataset', TASK_TITLES[r['task']])} | {r['sampling']} | "
                   f"{_fmt_k(r)} | {r['num_sequences']} | {r['ms_per_token']:.2f} | "
                   f"{_fmt(r['speedup'], '.2f', 'x')}{_parity_mark(r)} "
                   f"| {_fmt(r['acceptance_rate'], '.3f')} | {r['tokens_per_call']:.2f} | "
                   f"{_fmt_quality(r)} | {r['machine']} |")
  return lines


def format_markdown(results: dict) -> str:
  """results/table1.md: machine legend, the Table 1 grid beside the paper, parity, sweep."""
  lines = (_header(results) + _main_table(results) + [""] + _code_note(results["rows"])
           + _parity_section(results) + _sweep_section(results["rows"]))
  lines += ["", "Definitions: ms/token = wall time of the generate calls / mean new tokens per row "
            "(per-row latency at batch > 1), timed after a warm-up on the same shapes. speedup = "
            "AR ms/token / SpS ms/token at the same task, sampling and batch. decode ms/token: "
            "the same less the calls' prefills (the prompts' caches and first tokens, each "
            "shape's prefill timed alone, warm, with the same method: a draft prefills too); "
            "decode speedup its ratio. acceptance = "
            "accepted / drafted draft tokens (not alpha for K > 1). tokens/call = new tokens per "
            "target forward. Plots: " + ", ".join(f"`{os.path.basename(p)}`"
                                                  for p in results["paths"]["plots"]) + "."]
  return "\n".join(lines) + "\n"
