"""How well each draft serves the target: alpha, block efficiency, MBSU, wall-clock speedup.

On held-out prompts (validation-split prefixes and HumanEval prompts), for
greedy and nucleus sampling:
  alpha  E[sum_x min(p, q)] at the positions of the target's own continuations
  tau    block efficiency: new tokens / target calls of speculative sampling, K in k_values
  MBSU   tau / (c K + 1), c the draft/target parameter ratio (Goel et al.)
  speedup  autoregressive ms/token / speculative ms/token at K = speed_k, batch 1 and 8,
           measured side by side in this process after warm-up (eval/speed/timing.py).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from specsample import corpus as corpus_lib  # noqa: E402
from specsample import paths  # noqa: E402
from specsample import utils  # noqa: E402
from specsample.alignment import data as data_lib  # noqa: E402
from specsample.decoding import Sampling, generate  # noqa: E402
from specsample.eval.speed import bound, timing  # noqa: E402
from specsample.eval.tasks.humaneval import load_problems  # noqa: E402
from specsample.models import io as model_io  # noqa: E402
from specsample.models import transformer as tr  # noqa: E402
from specsample.tokenizer import Tokenizer  # noqa: E402

SAMPLINGS = {"greedy": Sampling(temperature=0.0),
             "nucleus": Sampling(temperature=0.8, top_p=0.95)}
# Goel et al. 2024 (PAPERS.md section 3), for reference: another model pair and task.
PAPER = {"block_efficiency": 2.3, "speedup": 2.4}


def heldout_prompts(config, tokenizer: Tokenizer) -> dict[str, list[list[int]]]:
  """{'val': validation-split prefixes, 'humaneval': HumanEval prompts}, each cut to max tokens."""
  val_files = corpus_lib.build_corpus(root=config.corpus_root or None).val
  val = data_lib.sample_prompts(val_files, tokenizer, config.num_val_prompts, config.min_prompt_tokens,
                                config.max_prompt_tokens, seed=(config.seed, 7919))
  problems = load_problems(config.num_humaneval_prompts)
  he = [tokenizer.encode(p["prompt"], add_bos=True)[-config.max_prompt_tokens:] for p in problems]
  return {"val": val, "humaneval": he}


def _tau(out) -> float:
  return float(out.stats["new_tokens"].sum() / max(out.stats["target_calls"].sum(), 1))


def _ms_per_token(target, prompts, batch: int, repeats: int, **kwargs) -> float:
  """ms/token of generate over the prompts in batches, after warm-up, fastest call of repeats."""
  batches = [prompts[i:i + batch] for i in range(0, len(prompts) - batch + 1, batch)]
  timing.warm_up(target, batches, **kwargs)
  passes = [timing.timed_pass(target, batches, **kwargs) for _ in range(repeats)]
  return timing.summarise(passes, 0.0, False).ms_per_token


def evaluate_draft(target, draft, prompts: Sequence[Sequence[int]], continuations: dict,
                   ar_ms: dict, config, eos_id: int) -> dict:
  """One draft's row: per sampling, alpha, tau(K), MBSU(K), speedups against `ar_ms`."""
  c = tr.count_params(draft.params) / tr.count_params(target.params)
  row = {"param_ratio_c": c}
  for name, sampling in SAMPLINGS.items():
    alpha, _ = bound.measure_alpha(target, draft, prompts, continuations[name], sampling)
    taus = {}
    for k in config.k_values:
      out = generate(target, prompts, draft=draft, method="speculative", num_draft=k,
                     sampling=sampling, max_new_tokens=config.max_new_tokens, eos_id=eos_id,
                     seed=config.seed, pad_to=64)
      taus[k] = _tau(out)
    speed = {}
    for batch in config.speed_batches:
      sps = _ms_per_token(target, prompts[:config.speed_prompts], batch, config.repeats,
                          draft=draft, method="speculative", num_draft=config.speed_k,
                          **_speed_kwargs(config, sampling, eos_id))
      ar = ar_ms[(name, batch)]
      speed[batch] = {"ar_ms_per_token": ar, "sps_ms_per_token": sps, "speedup": ar / sps}
    row[name] = {"alpha": alpha, "tau": taus,
                 "tau_iid": {k: bound.expected_tokens(alpha, k) for k in config.k_values},
                 "mbsu": {k: taus[k] / (c * k + 1) for k in config.k_values}, "speed": speed}
  return row


def _speed_kwargs(config, sampling: Sampling, eos_id: int) -> dict:
  return dict(sampling=sampling, max_new_tokens=config.max_new_tokens, eos_id=eos_id, seed=0,
              pad_to=64)


def parse_drafts(drafts: Sequence[str]) -> list[tuple[str, str]]:
  """[(name, folder)] from "name=folder" entries, in order.

  Raises:
    ValueError: an entry without '=' or a repeated name.
  """
  pairs = [entry.rpartition("=")[::2] for entry in drafts]
  bad = [e for e, (name, path) in zip(drafts, pairs) if not name or not path]
  names = [name for name, _ in pairs]
  if bad or len(set(names)) != len(names):
    raise ValueError(f"config.drafts must be distinct 'name=folder' entries, got {tuple(drafts)!r}")
  return pairs


def run(config) -> dict:
  """Evaluates every draft of `config.drafts` against `config.target_dir`."""
  tokenizer = Tokenizer.load(config.tokenizer)
  target = model_io.load_lm(config.target_dir)
  sets = heldout_prompts(config, tokenizer)
  prompts = sets["val"] + sets["humaneval"]
  continuations = {}
  for name, sampling in SAMPLINGS.items():
    out = generate(target, prompts, method="autoregressive", sampling=sampling,
                   max_new_tokens=config.max_new_tokens, eos_id=tokenizer.eos_id,
                   seed=config.seed, pad_to=64)
    continuations[name] = out.tokens
  # Autoregressive ms/token once per (sampling, batch): the denominator of every draft's speedup.
  ar_ms = {(name, batch): _ms_per_token(target, prompts[:config.speed_prompts], batch,
                                        config.repeats, method="autoregressive",
                                        **_speed_kwargs(config, sampling, tokenizer.eos_id))
           for name, sampling in SAMPLINGS.items() for batch in config.speed_batches}
  rows = {}
  for name, path in tqdm(parse_drafts(config.drafts), desc="drafts"):
    draft = model_io.load_lm(path)
    rows[name] = {"dir": path, **evaluate_draft(target, draft, prompts, continuations, ar_ms,
                                                 config, tokenizer.eos_id)}
  return {"what": "draft alignment: each draft against the embedded target on held-out prompts",
          "prompts": {k: len(v) for k, v in sets.items()},
          "max_new_tokens": config.max_new_tokens, "k_values": list(config.k_values),
          "speed_k": config.speed_k, "speed_prompts": config.speed_prompts,
          "samplings": {k: vars(v) for k, v in SAMPLINGS.items()},
          "paper_goel_2024": PAPER, "machine": timing.machine_info(), "drafts": rows}


def format_markdown(results: dict, command: str) -> str:
  """The alignment table: one row per (draft, sampling)."""
  ks = results["k_values"]
  k4 = results["speed_k"]
  batches = list(next(iter(results["drafts"].values()))["greedy"]["speed"])
  head = (["draft", "sampling", "alpha"] + [f"tau K={k}" for k in ks] + [f"MBSU K={k4}"]
          + [f"speedup b={b} K={k4}" for b in batches])
  lines = [
      "# Draft alignment (Goel et al. 2024) on the embedded pair", "",
      f"Command: `{command}`", "",
      f"Machine: {results['machine']['label']} (load average "
      f"{results['machine']['load_average_1_5_15']}).", "",
      f"Held-out prompts: {results['prompts']} (validation-split prefixes, HumanEval prompts); "
      f"{results['max_new_tokens']} new tokens; nucleus = temperature 0.8, top-p 0.95. "
      "alpha = E[sum_x min(p, q)] on the target's own continuations; tau = new tokens per "
      "target call of speculative sampling; MBSU = tau / (c K + 1) with c the parameter ratio; "
      "speedup = autoregressive / speculative ms per token, side by side after warm-up.", "",
      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, row in results["drafts"].items():
    for sampling in SAMPLINGS:
      r = row[sampling]
      cells = ([name, sampling, f"{r['alpha']:.3f}"] + [f"{r['tau'][k]:.2f}" for k in ks]
               + [f"{r['mbsu'][k4]:.2f}"] + [f"{r['speed'][b]['speedup']:.2f}x" for b in batches])
      lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"Goel et al. 2024 report up to {PAPER['block_efficiency']} block efficiency and "
            f"{PAPER['speedup']}x speedup (Llama 2 Chat 7B with a 115M draft, on GPU): another "
            "pair, task and machine, quoted for scale only."]
  return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: str, command: str) -> list[str]:
  """alignment.json, alignment.md and alignment_tau.png, each written atomically."""
  files = {os.path.join(output_dir, "alignment.json"): json.dumps(results, indent=2, default=float),
           os.path.join(output_dir, "alignment.md"): format_markdown(results, command)}
  utils.write_atomic(files)
  written = list(files)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  ks = results["k_values"]
  for ax, sampling in zip(axes, SAMPLINGS):
    for name, row in results["drafts"].items():
      ax.plot(ks, [row[sampling]["tau"][k] for k in ks], marker="o", label=name)
    ax.axhline(PAPER["block_efficiency"], color="grey", ls="--", label="Goel et al. 2024 (2.3)")
    ax.set_title(f"{sampling}"), ax.set_xlabel("K (draft tokens per iteration)")
  axes[0].set_ylabel("block efficiency tau"), axes[1].legend(fontsize=7)
  fig.suptitle(f"Draft alignment: tau against K ({results['machine']['label']})", fontsize=9)
  path = os.path.join(output_dir, "alignment_tau.png")
  with paths.local_file(path) as tmp:
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
  written.append(path)
  return written
