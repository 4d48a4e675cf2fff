"""results/kvp.md and the quality-vs-TTFT Pareto plot, from the dict kvp/bench.run writes."""

from __future__ import annotations

from specsample import paths

# Horton et al. 2024 (PAPERS.md section 4), for the table beside ours. Their
# metric is task accuracy at a fixed TTFT budget, ours log-likelihood.
PAPER_GAINS = ("TriviaQA: +15% to +50% relative accuracy over the auxiliary-alone baseline "
               "across TTFT-FLOPs budgets; HumanEval: up to +30% relative at fixed TTFT FLOPs "
               "(OpenELM; real TTFT gains on an Apple M2 Pro CPU)")


def _ttft_table(rows, names) -> list[str]:
  names = [n for n in names if any(r["aux"] == n for r in rows)]  # phases run with other predictors
  lines = ["| prompt | full target ms | " + " | ".join(
      f"KVP ({n}) ms | aux {n} alone ms" for n in names) + " | full GFLOPs | " + " | ".join(
      f"KVP ({n}) GFLOPs | aux {n} GFLOPs" for n in names) + " | " + " | ".join(
      f"speedup KVP ({n})" for n in names) + " |"]
  lines.append("|" + "---|" * (2 + 4 * len(names) + 1 + len(names)))
  for P in sorted({r["prompt_len"] for r in rows}):
    at = {(r["method"], r["aux"]): r for r in rows if r["prompt_len"] == P}
    full = at[("full", None)]
    ms = [f"{at[(m, n)]['ttft_ms']:.1f}" for n in names for m in ("kvp", "aux")]
    gf = [f"{at[(m, n)]['flops'] / 1e9:.3f}" for n in names for m in ("kvp", "aux")]
    speed = [f"{full['ttft_ms'] / at[('kvp', n)]['ttft_ms']:.2f}x" for n in names]
    lines.append(f"| {P} | {full['ttft_ms']:.1f} | " + " | ".join(ms) +
                 f" | {full['flops'] / 1e9:.3f} | " + " | ".join(gf) + " | " + " | ".join(speed) + " |")
  return lines


def _quality_table(quality, names, tail: int) -> list[str]:
  names = [n for n in names if all(f"kvp_{n}" in row for row in quality.values())]
  tail_head = f" target, last {tail} prompt tokens only |" if tail else ""
  lines = ["| task | items / tokens | mean prompt tokens | exact cache |" + tail_head + " " + " | ".join(
      f"KVP ({n}) | aux {n} alone | gap closed ({n})" for n in names) + " |",
      "|" + "---|" * (4 + bool(tail) + 3 * len(names))]
  for task, row in quality.items():
    cells = [f"{row['tail']:.4f}"] if tail else []
    for n in names:
      cells += [f"{row[f'kvp_{n}']:.4f}", f"{row[f'aux_{n}']:.4f}",
                f"{100 * row[f'gap_closed_{n}']:.1f}%"]
    prompt = f"{row['prompt_tokens']:.0f}" if "prompt_tokens" in row else "?"
    lines.append(f"| {task} | {row['items']} / {row['tokens']} | {prompt} | {row['exact']:.4f} | "
                 + " | ".join(cells) + " |")
  return lines


def _latency_table(rows) -> list[str]:
  lines = ["| prompt | setting | total ms | new tokens | tokens / target call |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['prompt_len']} | {r['setting']} | {r['total_ms']:.0f} | {r['new_tokens']} | "
                 f"{r['tokens_per_call']:.2f} |")
  return lines

def _tasks_section(results: dict) -> list[str]:
  """Task quality with KVP against full prefill (eval/kvp/tasks.py; results['tasks'])."""
  rows, t = results.get("tasks"), results["config"].get("tasks", {})
  if not rows:
    return []
  lines = ["", f"## Task quality on long prompts: full prefill against KVP "
           f"(`{t.get('aux')}`), paired", "",
           f"Greedy autoregressive, all items in one batch, at most {t.get('max_new_tokens')} new "
           f"tokens. humaneval_long: the first {t.get('num_items')} HumanEval problems, each after "
           f"~{t.get('context_tokens')} tokens of validation-split code in the prefilled assistant "
           f"turn; summary_long: the first {t.get('num_items')} items of the docstring stand-in, "
           f"each after {t.get('shots')} solved examples (other items). Difference = KVP - full, "
           "mean over items with a 95% normal interval; identical = items whose tokens are all "
           "the same; common prefix = tokens before the first that differs.", "",
           "| variant | items | mean prompt tokens | metric | full prefill | KVP | difference "
           "| identical outputs | mean common prefix (tokens) | mean new tokens full / KVP |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    lo, hi = r["difference_ci"]
    lines.append(f"| {name} | {r['items']} | {r['prompt_tokens']:.0f} | {r['metric']} | "
                 f"{r['full']:.3f} | {r['kvp']:.3f} | {r['difference']:+.3f} [{lo:+.3f}, "
                 f"{hi:+.3f}] | {r['identical']:.0%} | {r['common_prefix']:.1f} | "
                 f"{r['new_tokens']['full']:.1f} / {r['new_tokens']['kvp']:.1f} |")
  return lines


def markdown(results: dict) -> str:
  """The report: commands, TTFT / FLOPs, quality, latency, targets met or not."""
  config = results["config"]
  names = list(config["kvp_dirs"])
  out = [f"# KV Prediction (Horton et al. 2024) on {config.get('pair_name', 'the embedded pair')}", "",
         "Produced by `scripts/eval_kvp.py` (commands in configs/kvp_eval.py); auxiliary models "
         "and predictors from `scripts/train_kvp.py` (configs/kvp.py). Output under KVP follows "
         "the target conditioned on the predicted prompt cache, not the target's exact "
         "distribution.", ""]
  for name, meta in results.get("training", {}).items():
    tail = meta.get("exact_tail", 0)
    out.append(f"- `{name}`: aux_kind={meta.get('aux_kind')}, {meta.get('steps')} training steps, "
               f"layer map {meta.get('layer_map')}, "
               + (f"exact tail {tail} (the target runs the last {tail} prompt positions before "
                  "the last itself)" if tail else "no exact tail (the paper's prefill)"))
  if "quality" in results:
    q = config["quality"]
    prefix = q.get("humaneval_prefix", 0)
    he = (f"each canonical solution after its prompt, preceded by {prefix} tokens of "
          "validation-split code (a different stretch per problem)" if prefix
          else "each canonical solution after its prompt")
    out += ["", "## Quality: the target's mean log-likelihood per token of held-out continuations",
            "", f"Validation: {q['num_windows']} windows of the corpus validation split, prompt "
            f"{q['prompt_len']} tokens, continuation {q['continuation']}. HumanEval: {he}. "
            "Gap closed = (KVP - aux) / (exact - aux).", ""]
    out += _quality_table(results["quality"], names, q.get("tail", 0))
  if "ttft" in results:
    m = results.get("machine_before", {})
    out += ["", "## Time to first token (batch 1, median of "
            f"{config['repeats']} after {config['warmup']} warm-up) and its FLOPs (XLA cost analysis)",
            "", f"Load average before: {m.get('load_average_1_5_15')}, after: "
            f"{results.get('machine_after', {}).get('load_average_1_5_15')}; CPU: "
            f"{m.get('cpu_count', '?')} cores.", ""]
    out += _ttft_table(results["ttft"], names)
  if "latency" in results:
    lat = config["latency"]
    draft = (f"`{lat['draft_dir']}`" if lat.get("draft_dir")
             else f"the `{lat['aux']}` auxiliary model")
    out += ["", f"## Total latency, prompt + {lat['new_tokens']} new tokens (greedy, K="
            f"{lat['num_draft']}, batch 1, median of {lat['repeats']}; draft = {draft}, "
            f"KVP = `{lat['aux']}`)", ""]
    out += _latency_table(results["latency"])
  out += _tasks_section(results)
  out += ["", "## The paper's reported gains (not comparable metrics)", "", PAPER_GAINS, ""]
  if "ttft" in results and "quality" in results:  # what `plot` needs
    out += [f"Plot: {config['out_dir']}/kvp_pareto.png (validation quality at the "
            f"{config['quality']['prompt_len']}-token prompts above against TTFT at 512- and "
            "1024-token prompts).", ""]
  return "\n".join(out) + "\n"


def plot(results: dict, path: str) -> None:
  """Quality (validation log-likelihood) against TTFT at the largest common prompt length."""
  if "ttft" not in results or "quality" not in results:
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  q = results["quality"]["validation"]
  names = list(results["config"]["kvp_dirs"])
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, P in zip(axes, (512, 1024)):
    at = {(r["method"], r["aux"]): r["ttft_ms"] for r in results["ttft"] if r["prompt_len"] == P}
    if not at:
      continue
    ax.scatter([at[("full", None)]], [q["exact"]], marker="*", s=160, c="k", label="target, full prefill")
    both = [n for n in names if ("kvp", n) in at and f"kvp_{n}" in q]
    for method, marker, label in (("kvp", "o", "KVP (target + predicted cache)"),
                                  ("aux", "s", "auxiliary model alone")):
      xs = [at[(method, n)] for n in both]
      ys = [q[f"{method}_{n}"] for n in both]
      ax.plot(xs, ys, marker=marker, label=label)
      for x, y, n in zip(xs, ys, both):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"TTFT ms, {P}-token prompt (CPU, batch 1)")
    ax.set_ylabel("validation log-likelihood / token (nats)")
    ax.set_title(f"Quality vs TTFT, prompt {P}")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  with paths.local_file(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)
