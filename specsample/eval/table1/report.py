"""Table 1 rows (quality, parity, speedup per cell, no JAX) and their markdown and CSV."""

from __future__ import annotations

import csv
import io as io_lib
import json
import math
import os
from typing import Sequence

from specsample.eval.tasks import parity as parity_lib
from specsample.eval.table1 import grid
from specsample.eval.table1.grid import Cell
from specsample.utils import write_atomic

# Chen et al. 2023, Table 1 (PAPERS.md section 1): Chinchilla 70B target, 4B
# draft, 16 TPU v4, batch 1, K = 4. XSum nucleus p = 0.8 (temperature not
# stated), HumanEval nucleus p = 0.95, temperature 0.8, 100 samples/problem.
PAPER_CITATION = ("Chen et al. 2023, arXiv 2302.01318, Table 1 (Chinchilla 70B target / 4B "
                  "draft, 16 TPU v4, batch 1, K = 4)")
PAPER_TABLE1 = {
    ("xsum", "nucleus", "autoregressive"): ("ROUGE-2", "0.112", 14.1, 1.0),
    ("xsum", "nucleus", "speculative"): ("ROUGE-2", "0.114", 7.52, 1.92),
    ("xsum", "greedy", "autoregressive"): ("ROUGE-2", "0.157", 14.1, 1.0),
    ("xsum", "greedy", "speculative"): ("ROUGE-2", "0.156", 7.00, 2.01),
    ("humaneval", "nucleus", "autoregressive"): ("pass@100", "45.1%", 14.1, 1.0),
    ("humaneval", "nucleus", "speculative"): ("pass@100", "47.0%", 5.73, 2.46),
}
PAPER_K, PAPER_BATCH = 4, 1


def machine_identity(info: dict) -> dict:
  keys = ("cpu_model", "processor", "cpu_count", "cpus_usable", "platform", "jax_version",
          "jax_devices", "backend")
  return {k: info.get(k) for k in keys}


def describe_machine(info: dict) -> str:
  """One line: CPU model, cores, backend, devices, jax version."""
  devices = info.get("jax_devices") or []
  return (f"{info.get('cpu_model') or info.get('processor')}, {info.get('cpu_count')} cores "
          f"({info.get('cpus_usable')} usable), backend {info.get('backend')} "
          f"({len(devices)} device{'s' * (len(devices) != 1)}), jax {info.get('jax_version')}")


def build_rows(cells: Sequence[Cell], records: dict[str, dict], config,
               titles: dict[str, str] | None = None) -> tuple[list[dict], list[dict], dict]:
  """Table rows (one per generate cell), parity checks and machine legend.

  titles: task -> the dataset's name in tables and plots (default TASK_TITLES;
  the docstring stand-in for XSum has its own). Each row and parity entry
  carries it as "dataset".

  Returns:
    (rows, parity, machines): machines maps an id ('M1', ...) to machine info.
  """
  machines: dict[str, dict] = {}
  titles = {**TASK_TITLES, **(titles or {})}

  def machine_id(info: dict) -> str:
    ident = machine_identity(info)
    for mid, known in machines.items():
      if machine_identity(known) == ident:
        return mid
    mid = f"M{len(machines) + 1}"
    machines[mid] = info
    return mid

  def ar_ref(cell: Cell) -> tuple[Cell, dict] | tuple[None, None]:
    n = 1 if cell.sampling == "greedy" else config[cell.task].num_samples
    ref = Cell("generate", cell.task, cell.sampling, "autoregressive", 0, cell.batch_size, n)
    return (ref, records[ref.key]) if ref.key in records else (None, None)

  # Sampled checks: calibration of every sampled cell, plus the quality
  # comparison of every sampled speculative cell that has its AR reference.
  # Bonferroni keeps the chance that an exact implementation fails ANY of them
  # at 1 - confidence.
  def sampled(cell: Cell) -> bool:
    return cell.kind == "generate" and cell.sampling != "greedy" and cell.key in records

  num_sampled = sum(sampled(c) * (1 + (c.method == "speculative" and ar_ref(c)[1] is not None))
                    for c in cells)
  per_check = 1 - (1 - config.confidence) / max(num_sampled, 1)
  rows, parity = [], []
  for cell in cells:
    if cell.kind != "generate" or cell.key not in records:
      continue
    rec = records[cell.key]
    auto = cell.num_draft == grid.AUTO
    q = parity_lib.quality(cell.task, rec, config.confidence, config.humaneval.pass_ks)
    ref_cell, ref = ar_ref(cell) if cell.method == "speculative" else (None, None)
    ms = rec["timing"]["ms_per_token"]
    # A speedup across two machines would mean nothing (a resumed run may move).
    same_machine = ref and machine_identity(ref["machine"]) == machine_identity(rec["machine"])
    speedup = (1.0 if cell.method == "autoregressive" else
               ref["timing"]["ms_per_token"] / ms if same_machine else None)
    # A rerun reuses stored AR rows whose fingerprint (data, models, settings) still
    # matches, whatever code timed them: such a speedup is flagged, not hidden.
    other_code = bool(ref) and ref.get("code", "unknown") != rec.get("code", "unknown")
    checks = []
    if sampled(cell):
      checks.append(parity_lib.check_calibration(rec, per_check))
    if ref is not None:
      checks += parity_lib.check_parity(ref, rec, greedy=cell.sampling == "greedy", task=cell.task,
                             confidence=per_check)
    if checks:
      parity.append({"cell": cell.key, "reference": ref_cell.key if ref_cell else None,
                     "task": cell.task, "dataset": titles[cell.task], "sampling": cell.sampling,
                     "method": cell.method,
                     "K": cell.num_draft, "batch_size": cell.batch_size, "checks": checks})
    checks = checks or None
    paper = PAPER_TABLE1.get((cell.task, cell.sampling, cell.method))
    at_paper_setting = cell.batch_size == PAPER_BATCH and cell.role == "main" and not auto
    stats = rec["stats"]
    rows.append({
        "key": cell.key, "task": cell.task, "dataset": titles[cell.task],
        "sampling": cell.sampling, "method": cell.method,
        "K": cell.num_draft or None, "batch_size": cell.batch_size, "role": cell.role,
        "num_samples": cell.num_samples, "num_sequences": len(rec["items"]),
        "ms_per_token": ms, "speedup": speedup, "code": rec.get("code", "unknown"),
        "speedup_across_code_versions": other_code,
        "acceptance_rate": stats["acceptance_rate"],
        "tokens_per_call": stats["tokens_per_call"],
        # The mean K drafted per target call: what "auto" picked (K itself for a fixed K).
        "draft_per_call": (stats["drafted"] / max(stats["target_calls"], 1)
                           if cell.method == "speculative" else None),
        "mean_new_tokens": stats["new_tokens"] / max(len(rec["items"]), 1),
        "metric": q["metric"], "metric_value": q["value"],
        # One problem has no interval (stats gives +-inf): stored as None, valid JSON.
        "metric_ci_low": q["ci"][0] if math.isfinite(q["ci"][0]) else None,
        "metric_ci_high": q["ci"][1] if math.isfinite(q["ci"][1]) else None,
        "pass_at_k": q.get("pass@k"),
        "parity_passed": None if checks is None else all(c["passed"] for c in checks),
        "paper_metric": paper[0] if paper and at_paper_setting else None,
        "paper_value": paper[1] if paper and at_paper_setting else None,
        "paper_ms_per_token": paper[2] if paper and at_paper_setting else None,
        "paper_speedup": paper[3] if paper and at_paper_setting else None,
        "machine": machine_id(rec["machine"]),
        "load_average_at_start": rec["machine"].get("load_average_1_5_15"),
        "compiled_calls_retimed": rec["timing"]["compiled_calls"],
    })
  return rows, parity, machines


TASK_TITLES = {"humaneval": "HumanEval", "xsum": "XSum"}
METHOD_TITLES = {"autoregressive": "AR", "speculative": "SpS"}
PROMPT_FORMATS = {
    "raw": "raw (the paper's: HumanEval prompts as they are; summarization 1-shot "
           "\"Article: ... One-sentence summary:\")",
    "chat": "chat (the target's chat template: HumanEval with the assistant turn prefilled with "
            "\"```python\" + the problem's prompt, the completion cut at the stop sequences and "
            "\"```\"; summarization 1-shot, the shot a previous user / assistant exchange, the "
            "summary the reply's first line)"}
CSV_FIELDS = ("task", "dataset", "sampling", "method", "K", "batch_size", "role", "num_samples",
              "num_sequences", "ms_per_token", "speedup", "acceptance_rate", "tokens_per_call",
              "draft_per_call", "mean_new_tokens", "metric", "metric_value", "metric_ci_low",
              "metric_ci_high", "pass_at_k", "parity_passed", "paper_metric", "paper_value",
              "paper_ms_per_token", "paper_speedup", "machine", "machine_description", "code",
              "load_average_at_start")


def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
  return "—" if x is None else f"{x:{spec}}{suffix}"


def method_title(row: dict) -> str:
  """AR, SpS (a fixed K) or SpS auto (num_draft="auto"): each its own row."""
  return METHOD_TITLES[row["method"]] + (" auto" if row["K"] == grid.AUTO else "")


def _fmt_k(row: dict) -> str:
  """K, or for auto the mean K it drafted per target call."""
  if row["K"] == grid.AUTO:
    return f"auto ({row['draft_per_call']:.1f})"
  return _fmt(row["K"], "d")


def row_order(row: dict) -> tuple:
  """Batch, then AR, SpS at K, SpS auto; a sweep's K in order, auto last."""
  auto = row["K"] == grid.AUTO
  return (row["batch_size"], row["method"], auto, 0 if auto else row["K"] or 0)


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
      "| task | sampling | method | batch | K | ms/token | speedup | acceptance | tokens/call "
      "| quality (ours) | paper quality | paper ms/token | paper speedup | machine |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
            f"{_fmt(r['acceptance_rate'], '.3f')} | {r['tokens_per_call']:.2f} | "
            f"{_fmt_quality(r)} | "
            f"{_paper_quality(r)} | "
            f"{_fmt(r['paper_ms_per_token'])} | {_fmt(r['paper_speedup'], '.2f', 'x')} | "
            f"{r['machine']} |")
      for method in grid.METHODS:
        paper = PAPER_TABLE1.get((task, sampling, method))
        if paper and (task, sampling, method) not in shown:
          lines.append(f"| {TASK_TITLES[task]} | {sampling} | {METHOD_TITLES[method]} | 1 | "
                       f"{'4' if method == 'speculative' else '—'} | not run | | | | | "
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
            "AR ms/token / SpS ms/token at the same task, sampling and batch. acceptance = "
            "accepted / drafted draft tokens (not alpha for K > 1). tokens/call = new tokens per "
            "target forward. Plots: " + ", ".join(f"`{os.path.basename(p)}`"
                                                  for p in results["paths"]["plots"]) + "."]
  return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict], machines: dict, path: str) -> None:
  buf = io_lib.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
  writer.writeheader()
  for r in rows:
    writer.writerow({**r, "pass_at_k": json.dumps(r["pass_at_k"]) if r["pass_at_k"] else "",
                     "load_average_at_start": json.dumps(r["load_average_at_start"]),
                     "machine_description": describe_machine(machines[r["machine"]])})
  write_atomic({path: buf.getvalue()})
