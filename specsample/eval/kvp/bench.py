"""KV Prediction measured: time to first token, its FLOPs, quality, SpS + KVP latency, and
task quality on long prompts (eval/kvp/tasks.py).

`run(config)` writes results/kvp.json, results/kvp.md and the Pareto plot. TTFT
is the median wall time (after warm-up) of one jitted call from prompt ids to
the first greedy token, at batch 1:
  full:  the target prefills tokens 0..P-2, then runs token P-1;
  kvp:   the auxiliary runs tokens 0..P-2, the predictor fills the target's
         cache, the target runs its exact tail if any and token P-1
         (kv_prediction.first_token_logits);
  aux:   the auxiliary model alone, as `full`.
All three compute logits for the last token only (XLA drops the unused
prefill logits). FLOPs are XLA's cost analysis of the same compiled calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from specsample import corpus as corpus_lib
from specsample import paths, utils
from specsample.decoding import api
from specsample.decoding import kv_prediction as kvpd
from specsample.decoding.lookup import PromptLookup
from specsample.decoding.sampling import Sampling
from specsample.eval.tasks import humaneval
from specsample.eval.kvp import quality
from specsample.eval.kvp import report as kvp_report
from specsample.eval.kvp import tasks as kvp_tasks
from specsample.eval.speed import timing
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer
from specsample.training import data as corpus_data


def _full_first_token(config: tr.TransformerConfig):
  """Prefill of tokens 0..P-2, then one step on token P-1: the same shape of work as
  the KVP path, so XLA drops the unused prefill logits in both (fair FLOPs and ms)."""
  def fn(params, prompt_BP):
    B, P = prompt_BP.shape
    _, cache = tr.forward(config, params, prompt_BP[:, :P - 1], tr.init_cache(config, B, P))
    logits_B1V, _ = tr.forward(config, params, prompt_BP[:, P - 1:], cache)
    return jnp.argmax(logits_B1V[:, 0], axis=-1)
  return jax.jit(fn)


def _kvp_first_token(spec: kvpd.KVPSpec):
  return jax.jit(lambda t, a, p, prompt_BP: jnp.argmax(
      kvpd.first_token_logits(spec, t, a, p, prompt_BP), axis=-1))


def _flops(fn, *args) -> float:
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _median_ms(fn, *args, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1000 * (time.perf_counter() - start))
  return statistics.median(times)


def measure_ttft(config, target, kvps: dict, prompt_ids: np.ndarray) -> list[dict]:
  """Rows {prompt_len, method, aux, ttft_ms, flops} for every prompt length."""
  full = _full_first_token(target.config)
  rows = []
  for P in config.ttft_prompt_lens:
    prompt = jnp.asarray(prompt_ids[None, :P])
    reps = dict(warmup=config.warmup, repeats=config.repeats)
    rows.append(dict(prompt_len=P, method="full", aux=None, flops=_flops(full, target.params, prompt),
                     ttft_ms=_median_ms(full, target.params, prompt, **reps)))
    for name, kvp in kvps.items():
      spec = kvpd.KVPSpec(kvpd.kvp_config(target, kvp), False, exact_tail=kvp.exact_tail)
      fn, args = _kvp_first_token(spec), (target.params, kvp.aux.params, kvp.params, prompt)
      rows.append(dict(prompt_len=P, method="kvp", aux=name, flops=_flops(fn, *args),
                       ttft_ms=_median_ms(fn, *args, **reps)))
      alone = _full_first_token(kvp.aux.config)
      rows.append(dict(prompt_len=P, method="aux", aux=name,
                       flops=_flops(alone, kvp.aux.params, prompt),
                       ttft_ms=_median_ms(alone, kvp.aux.params, prompt, **reps)))
    print(json.dumps(rows[-1 - 2 * len(kvps):]), flush=True)
  return rows


def _tail(prompts, n: int):
  return [p[-n:] for p in prompts]


def measure_quality(config, target, kvps: dict, val_stream: np.ndarray, tokenizer) -> dict:
  """Mean log-likelihood per token on validation windows and HumanEval canonical solutions.

  With config.quality.humaneval_prefix = N > 0 each HumanEval prompt follows N tokens
  of validation-split code (a different stretch per problem): the long-prompt variant.
  With config.quality.tail > 0 the target seeing only the last `tail` prompt tokens
  is scored too: the baseline a prefill that costs nothing must beat.
  """
  q = config.quality
  P, C, n = q.prompt_len, q.continuation, q.num_windows
  stride = len(val_stream) // n
  windows = [val_stream[i * stride:i * stride + P + C].tolist() for i in range(n)]
  problems = humaneval.load_problems(q.humaneval_limit or None)
  he_prompts = tokenizer.encode_batch([p["prompt"] for p in problems], add_bos=True)
  prefix = q.get("humaneval_prefix", 0)
  if prefix:
    step = (len(val_stream) - prefix) // len(problems)
    he_prompts = [val_stream[i * step:i * step + prefix].tolist() + p
                  for i, p in enumerate(he_prompts)]
  tasks = {
      "validation": ([w[:P] for w in windows], [w[P:] for w in windows]),
      "humaneval": (he_prompts, tokenizer.encode_batch([p["canonical_solution"] for p in problems])),
  }
  rows = q.get("rows", 8)
  out = {}
  for task, (prompts, conts) in tasks.items():
    score = lambda scorer, prompts_, **kw: quality.mean_loglik(
        quality.continuation_logprobs(scorer, target, prompts_, conts, rows=rows, **kw))
    row = {"items": len(prompts), "tokens": sum(len(c) for c in conts),
           "prompt_tokens": sum(len(p) for p in prompts) / len(prompts),
           "exact": score("exact", prompts)}
    if q.get("tail", 0):
      row["tail"] = score("exact", _tail(prompts, q.tail))
    for name, kvp in kvps.items():
      row[f"kvp_{name}"] = score("kvp", prompts, kvp=kvp)
      row[f"aux_{name}"] = score("aux", prompts, aux=kvp.aux)
      row[f"gap_closed_{name}"] = quality.gap_closed(row["exact"], row[f"kvp_{name}"],
                                                     row[f"aux_{name}"])
    out[task] = row
    print(json.dumps({task: row}), flush=True)
  return out


def measure_latency(config, target, kvp: kvpd.KVP, prompt_ids: np.ndarray) -> list[dict]:
  """Total generate() wall time for prompt + max_new_tokens: SpS (+KVP), AR (+KVP), and
  with config.latency.lookup SpS with the draft beside prompt lookup (+KVP) and with
  lookup alone over the K set config.latency.lookup_choices (K from its matches; +KVP)
  The draft is config.latency.draft_dir's, or '' the KVP's auxiliary model."""
  greedy = dict(sampling=Sampling(temperature=0), max_new_tokens=config.latency.new_tokens,
                num_draft=config.latency.num_draft)
  draft_dir = config.latency.get("draft_dir", "")
  draft = model_io.load_draft(draft_dir, target, "latency.draft_dir") if draft_dir else kvp.aux
  settings = {
      "sps": dict(method="speculative", draft=draft),
      "sps_kvp": dict(method="speculative", draft=draft, prefill="kv_prediction", kvp=kvp),
      "ar_kvp": dict(method="autoregressive", prefill="kv_prediction", kvp=kvp),
      "ar": dict(method="autoregressive"),
  }
  if config.latency.get("lookup", False):  # the draft beside prompt lookup (drafts.WithLookup)
    lookup = dict(lookup=PromptLookup(min_draft_prob=0.2))
    settings["sps_lookup"] = {**settings["sps"], **lookup}
    settings["sps_lookup_kvp"] = {**settings["sps_kvp"], **lookup}
    alone = dict(method="speculative", draft="prompt_lookup",
                 num_draft=tuple(config.latency.get("lookup_choices", range(9))))
    settings["lookup_auto"] = alone
    settings["lookup_auto_kvp"] = {**alone, "prefill": "kv_prediction", "kvp": kvp}
  rows = []
  for P in config.latency.prompt_lens:
    prompt = [prompt_ids[:P].tolist()]
    for name, kwargs in settings.items():
      kwargs = {**greedy, **kwargs}
      api.generate(target, prompt, **kwargs)  # warm-up (compiles)
      walls, out = [], None
      for _ in range(config.latency.repeats):
        out, wall, _ = timing.timed_generate(target, prompt, **kwargs)
        walls.append(1000 * wall)
      rows.append(dict(prompt_len=P, setting=name, total_ms=statistics.median(walls),
                       new_tokens=int(out.stats["new_tokens"][0]),
                       tokens_per_call=float(out.stats["tokens_per_call"][0])))
    print(json.dumps(rows[-len(settings):]), flush=True)
  return rows


def run(config) -> dict:
  """Loads the target and every KVP folder, measures, writes results/kvp.{json,md} and the plot."""
  if "tasks" in config.phases:
    kvp_tasks.check_config(config)
  tokenizer = Tokenizer.load(config.tokenizer or config.target_dir)  # '' = the target's own
  target = model_io.load_lm(config.target_dir, max_seq_len=config.max_seq_len)
  kvps = {name: kvpd.load_kvp(path, target, max_seq_len=config.max_seq_len)
          for name, path in config.kvp_dirs.items()}
  for name, tail in config.get("exact_tail", {}).items():  # the folder's own tail overridden
    kvps[name] = dataclasses.replace(kvps[name], exact_tail=tail)
  corpus = corpus_lib.build_corpus(root=config.corpus_root or None)
  val = corpus_data.tokenize_corpus(corpus, tokenizer, config.cache_dir)["val"]
  # One long validation stretch is every timed prompt (content does not change the cost).
  prompt_ids = np.asarray(val[:max(max(config.ttft_prompt_lens), max(config.latency.prompt_lens))])
  new = {"config": config.to_dict(),
         "training": {name: {**kvpd.read_meta(path), "exact_tail": kvps[name].exact_tail}
                      for name, path in config.kvp_dirs.items()}}
  # Saved after every phase: a later phase that fails does not lose a finished one.
  if "quality" in config.phases:
    new["quality"] = measure_quality(config, target, kvps, val, tokenizer)
    results = _save(config, new)
  if "timing" in config.phases:
    new["machine_before"] = timing.machine_info()
    new["ttft"] = measure_ttft(config, target, kvps, prompt_ids)
    results = _save(config, new)
  if "tasks" in config.phases:
    new["tasks"] = kvp_tasks.measure_tasks(config, target, kvps[config.tasks.aux], tokenizer, val)
    results = _save(config, new)
  if "timing" in config.phases or "latency" in config.phases:
    new["latency"] = measure_latency(config, target, kvps[config.latency.aux], prompt_ids)
    new["machine_after" if "timing" in config.phases else "machine_latency"] = timing.machine_info()
    results = _save(config, new)
  return results


def _save(config, new: dict) -> dict:
  """Merges `new` into <out_dir>/kvp.json and rewrites the report and plot from it."""
  # Phases run separately (timing under a lock, quality niced) update one file:
  # read it only now, so a phase that finished meanwhile is kept.
  json_path = os.path.join(config.out_dir, "kvp.json")
  results = {}
  if paths.exists(json_path):
    results = json.loads(paths.read_text(json_path))
  if "latency" in new:  # rows of other prompt lengths (an earlier latency-only run) stay
    lengths = {r["prompt_len"] for r in new["latency"]}
    new["latency"] = sorted([r for r in results.get("latency", []) if r["prompt_len"] not in lengths]
                            + new["latency"], key=lambda r: r["prompt_len"])
  results.update(new)
  paths.makedirs(config.out_dir)
  md_path = os.path.join(config.out_dir, "kvp.md")
  utils.write_atomic({json_path: json.dumps(results, indent=2, default=str),
                      md_path: kvp_report.markdown(results)})
  kvp_report.plot(results, os.path.join(config.out_dir, "kvp_pareto.png"))
  return results
