"""A feature draft's agreement with the target against training tokens, as a markdown table.

Reads <workdir>/metrics.jsonl (alignment/feature_train.py). Every column is a
held-out number: top-1 agreement of draft step k (step 1 reads the target's
feature, steps 2.. the draft's own outputs), sum min(p, q) of step 1 at the
sampling temperature 1 (a lower bound on its acceptance rate there), and the
greedy tokens per target call at K = unroll (1 + `accepted`, teacher-forced
tokens, so the loop's own number is measured separately).
"""

from __future__ import annotations

import json
import os

from specsample import paths


def read(workdir: str) -> list[dict]:
  """The logged lines that carry held-out metrics, in step order (a resumed run's
  repeated steps: the last line wins)."""
  lines = paths.read_text(os.path.join(workdir, "metrics.jsonl")).splitlines()
  by_step = {}
  for line in lines:
    row = json.loads(line)
    if "val_top1" in row:
      by_step[int(row["step"])] = row
  return [by_step[s] for s in sorted(by_step)]


def markdown(rows: list[dict], title: str) -> str:
  steps = sorted({int(k.split("_")[-1]) for r in rows for k in r if k.startswith("val_top1_")})
  head = ["step", "training tokens", "top-1 step 1"] + [f"top-1 step {k}" for k in steps]
  head += ["sum min(p, q), step 1", "greedy tokens/call (teacher-forced)"]
  out = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [str(int(r["step"])), f"{r['train_tokens_seen'] / 1e3:.0f}k", f"{r['val_top1']:.3f}"]
    cells += [f"{r[f'val_top1_{k}']:.3f}" if f"val_top1_{k}" in r else "" for k in steps]
    cells += [f"{r['val_overlap']:.3f}",
              f"{1 + r['val_accepted']:.2f}" if "val_accepted" in r else ""]
    out.append("| " + " | ".join(cells) + " |")
  return "\n".join(out) + "\n"
