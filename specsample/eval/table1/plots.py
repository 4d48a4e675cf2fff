"""Table 1 plots: speedup and acceptance against K (batch 1; num_draft="auto" as a dashed
level beside each curve), ms/token per method."""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

import matplotlib
matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specsample import paths as paths_lib  # noqa: E402
from specsample.eval.table1 import grid, report  # noqa: E402


def write_plots(rows: Sequence[dict], machines: dict, results_dir: str) -> list[str]:
  """speedup vs K, acceptance vs K (batch 1) and ms/token per method (main K)."""
  machine_note = "; ".join(f"{m}: {report.describe_machine(i)}" for m, i in machines.items())
  paths = []
  curves: dict[tuple, list[dict]] = {}
  autos: dict[tuple, dict] = {}  # the auto row of a curve: a level, not a point at some K
  for r in rows:
    if r["method"] == "speculative" and r["batch_size"] == 1:
      if r["K"] == grid.AUTO:
        autos[(r["task"], r["sampling"])] = r
      else:
        curves.setdefault((r["task"], r["sampling"]), []).append(r)
  for name, fields in (("speedup_vs_k", ("speedup",)),
                       ("acceptance_vs_k", ("acceptance_rate", "tokens_per_call"))):
    fig, axes = plt.subplots(1, len(fields), figsize=(6 * len(fields), 4.2), squeeze=False)
    for ax, field in zip(axes[0], fields):
      for (task, sampling), group in sorted(curves.items()):
        group = sorted(group, key=lambda r: r["K"])
        label = f"{group[0].get('dataset', report.TASK_TITLES[task])} {sampling}"
        ax.plot([r["K"] for r in group], [r[field] for r in group], "o-", label=label)
        auto = autos.get((task, sampling))
        if auto and auto[field] is not None:
          ax.axhline(auto[field], color=ax.lines[-1].get_color(), lw=1, ls=":",
                     label=f"{label}, auto K (mean {auto['draft_per_call']:.1f})")
        paper = report.PAPER_TABLE1.get((task, sampling, "speculative"))
        if field == "speedup" and paper:
          ax.plot([report.PAPER_K], [paper[3]], "*", ms=12, color=ax.lines[-1].get_color(),
                  label=f"paper {report.TASK_TITLES[task]} {sampling} (TPU v4, 70B)")
      if field == "speedup":
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
      ax.set_xlabel("K (draft tokens per iteration)")
      ax.set_ylabel({"speedup": "speedup over autoregressive (x)",
                     "acceptance_rate": "accepted / drafted",
                     "tokens_per_call": "tokens per target call"}[field])
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    fig.suptitle(f"batch 1 — {machine_note}", fontsize=7)
    fig.tight_layout()
    path = os.path.join(results_dir, f"table1_{name}.png")
    with paths_lib.local_file(path) as tmp:
      fig.savefig(tmp, dpi=110)
    plt.close(fig)
    paths.append(path)

  main = [r for r in rows if r["role"] == "main"]
  groups = sorted({(r["task"], r["sampling"], r["batch_size"]) for r in main})
  methods = list(dict.fromkeys(report.method_title(r) for r in sorted(main, key=report.row_order)))
  width = 0.8 / max(len(methods), 1)
  fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.2))
  for i, method in enumerate(methods):
    values = [next((r["ms_per_token"] for r in main if (r["task"], r["sampling"], r["batch_size"])
                    == g and report.method_title(r) == method), np.nan) for g in groups]
    ax.bar(np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width, values, width,
           label=method)
  ax.set_xticks(np.arange(len(groups)))
  titles = {r["task"]: r.get("dataset", report.TASK_TITLES[r["task"]]) for r in main}
  ax.set_xticklabels([f"{textwrap.fill(titles[t], 18)}\n{s}, B={b}" for t, s, b in groups],
                     fontsize=7)  # wrapped: the stand-in's label is long
  ax.set_ylabel("ms / token (per row)")
  ax.legend()
  ax.set_title(machine_note, fontsize=7)
  fig.tight_layout()
  path = os.path.join(results_dir, "table1_ms_per_token.png")
  with paths_lib.local_file(path) as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)
  return paths + [path]
