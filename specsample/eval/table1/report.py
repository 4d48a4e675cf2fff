"""Table 1 rows (quality, parity, speedup per cell, no JAX) and their CSV (the markdown:
markdown.py)."""

from __future__ import annotations

import csv
import io as io_lib
import json
import math
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
    # Prefill excluded (records made before it was timed have none).
    decode_ms = rec["timing"].get("decode_ms_per_token")
    ref_decode = ref["timing"].get("decode_ms_per_token") if ref else None
    decode_speedup = (1.0 if cell.method == "autoregressive" and decode_ms else
                      ref_decode / decode_ms if same_machine and ref_decode and decode_ms
                      else None)
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
        "ms_per_token": ms, "speedup": speedup,
        "decode_ms_per_token": decode_ms, "decode_speedup": decode_speedup,
        "prefill_s": rec["timing"].get("prefill_s"), "code": rec.get("code", "unknown"),
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
CSV_FIELDS = ("task", "dataset", "sampling", "method", "K", "batch_size", "role", "num_samples",
              "num_sequences", "ms_per_token", "speedup", "decode_ms_per_token",
              "decode_speedup", "prefill_s", "acceptance_rate", "tokens_per_call",
              "draft_per_call", "mean_new_tokens", "metric", "metric_value", "metric_ci_low",
              "metric_ci_high", "pass_at_k", "parity_passed", "paper_metric", "paper_value",
              "paper_ms_per_token", "paper_speedup", "machine", "machine_description", "code",
              "load_average_at_start")


def method_title(row: dict) -> str:
  """AR, SpS (a fixed K) or SpS auto (num_draft="auto"): each its own row."""
  return METHOD_TITLES[row["method"]] + (" auto" if row["K"] == grid.AUTO else "")


def row_order(row: dict) -> tuple:
  """Batch, then AR, SpS at K, SpS auto; a sweep's K in order, auto last."""
  auto = row["K"] == grid.AUTO
  return (row["batch_size"], row["method"], auto, 0 if auto else row["K"] or 0)


def write_csv(rows: Sequence[dict], machines: dict, path: str) -> None:
  buf = io_lib.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
  writer.writeheader()
  for r in rows:
    writer.writerow({**r, "pass_at_k": json.dumps(r["pass_at_k"]) if r["pass_at_k"] else "",
                     "load_average_at_start": json.dumps(r["load_average_at_start"]),
                     "machine_description": describe_machine(machines[r["machine"]])})
  write_atomic({path: buf.getvalue()})
