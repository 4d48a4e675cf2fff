"""The Gumbel-max coupling against the standard rejection sampler: acceptance and speed.

For each batch size and sampling, on the same pair, prompts and seed, in one
process after a warm-up on the same shapes (timing.py): speculative K and
autoregressive decoding under coupling='rejection' and 'gumbel', their timed
passes interleaved (spec rejection, spec gumbel, AR rejection, AR gumbel, ...)
so load on a shared machine hits both sides alike; each call's fastest wall
is kept. Per setting:

* acceptance = accepted / drafted and tau = tokens per target call of each;
* alpha by definition on the gumbel autoregressive continuations (one target
  and one draft pass): E[sum min(p, q)] for rejection and
  E[coupling.acceptance_probability(p, q)] for gumbel, and what either
  gives under i.i.d. acceptance (bound.acceptance_rate_iid);
* ms/token of each (prefill included) and speedup = AR / speculative under
  the same coupling;
* the sampling work per draft step, alone ([B, V], jitted loop): rejection
  needs the transformed probabilities and a categorical draw; gumbel needs
  only argmax(log_weights + noise), no softmax unless top-p needs it.

Also: whether speculative == autoregressive token for token under gumbel
(it must be) on the pair's real logits.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from specsample.decoding import coupling
from specsample.decoding.sampling import Sampling, sample
from specsample.eval.speed import bound as bound_lib
from specsample.eval.speed import timing
from specsample.eval.speed.benchmark import humaneval_prompts
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.models.lm import LM
from specsample.tokenizer import Tokenizer
from specsample.utils import round_up

COUPLING_NAMES = ("rejection", "gumbel")


@functools.partial(jax.jit, static_argnames=("target_cfg", "draft_cfg", "sampling"))
def _alphas(target_cfg, draft_cfg, sampling: Sampling, target_params, draft_params, tokens_BL):
  """[B, L] per-position acceptance of each coupling: sum min(p, q) and the Gumbel-max one."""
  q_BLV = sampling.probs(tr.forward(target_cfg, target_params, tokens_BL)[0])
  p_BLV = sampling.probs(tr.forward(draft_cfg, draft_params, tokens_BL)[0])
  return jnp.minimum(p_BLV, q_BLV).sum(-1), coupling.acceptance_probability(p_BLV, q_BLV)


def measure_alphas(target: LM, draft: LM, prompts, completions, sampling: Sampling,
                   pad_to: int = 64) -> dict[str, float]:
  """Both couplings' alpha, pooled over the positions that predicted a generated token."""
  seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
  width = round_up(max(len(s) for s in seqs), pad_to)
  tokens_BL, mask_BL = np.zeros((len(seqs), width), np.int32), np.zeros((len(seqs), width), bool)
  for b, (seq, p, c) in enumerate(zip(seqs, prompts, completions)):
    tokens_BL[b, :len(seq)] = seq
    mask_BL[b, len(p) - 1:len(p) - 1 + len(c)] = True
  plain = dataclasses.replace(sampling, coupling="rejection")  # the transform only
  overlaps = _alphas(target.config, draft.config, plain, target.params, draft.params, tokens_BL)
  return {name: float((np.asarray(x) * mask_BL).sum() / mask_BL.sum())
          for name, x in zip(COUPLING_NAMES, overlaps)}


@functools.partial(jax.jit, static_argnames=("sampling",))
def _draft_step_loop(sampling: Sampling, logits_BV, row_keys_B, key, num_steps):
  """`num_steps` draft-step samplings of one coupling on [B, V] logits (chained)."""
  B, V = logits_BV.shape

  def body(i, logits_BV):
    if sampling.coupling == "gumbel":
      noise_BV = coupling.gumbel_noise(row_keys_B, jnp.full((B, 1), i), V)[:, 0]
      token_B, aux = coupling.propose(sampling, logits_BV, noise_BV), 0.0
    else:
      probs_BV = sampling.probs(logits_BV)  # kept: the rejection step needs it
      token_B = sample(jax.random.fold_in(key, i), probs_BV, greedy=sampling.greedy)
      aux = 1e-3 * probs_BV
    return logits_BV + aux + 1e-6 * token_B[:, None]  # chained: nothing hoisted or dropped

  return jax.lax.fori_loop(0, num_steps, body, logits_BV)


def time_draft_sampling(sampling: Sampling, batch: int, vocab: int, target_s: float = 0.25,
                        repeats: int = 3) -> float:
  """ms of one draft step's sampling work under sampling.coupling ([B, V], no model).

  Both include drawing the step's noise (the categorical draw's Gumbel noise;
  the position's noise of coupling.gumbel_noise).
  """
  logits_BV = 3 * jax.random.normal(jax.random.key(0), (batch, vocab), jnp.float32)
  row_keys_B = jax.random.wrap_key_data(jnp.asarray(coupling.row_key_data(0, batch)))
  key = jax.random.key(1)

  def run(n: int) -> float:
    start = time.perf_counter()
    _draft_step_loop(sampling, logits_BV, row_keys_B, key, jnp.int32(n)).block_until_ready()
    return time.perf_counter() - start

  return timing._best_ms_per_step(run, target_s, repeats)  # pylint: disable=protected-access


def _setting(target, draft, batches, prompts, sampling, num_draft, max_new_tokens, seed, repeats,
             pad_to) -> dict:
  """Both couplings on one (batch size, sampling): timings, acceptance, alphas."""
  runs = {}
  for name in COUPLING_NAMES:
    s = dataclasses.replace(sampling, coupling=name)
    common = dict(sampling=s, max_new_tokens=max_new_tokens, seed=seed, pad_to=pad_to)
    runs[("speculative", name)] = dict(method="speculative", draft=draft, num_draft=num_draft,
                                       **common)
    runs[("autoregressive", name)] = dict(method="autoregressive", **common)
  warmup = {k: timing.warm_up(target, batches, **kw) for k, kw in runs.items()}
  passes = {k: [] for k in runs}
  for _ in range(repeats):  # interleaved: load hits every setting alike
    for k, kw in runs.items():
      passes[k].append(timing.timed_pass(target, batches, **kw))
  done = {k: timing.summarise(p, warmup[k], False) for k, p in passes.items()}
  gumbel_ar = done[("autoregressive", "gumbel")]
  alphas = measure_alphas(target, draft, prompts, gumbel_ar.tokens, sampling)
  out = {}
  for name in COUPLING_NAMES:
    sp, ar = done[("speculative", name)], done[("autoregressive", name)]
    st = sp.stats
    out[name] = {
        "acceptance_rate": float(st["accepted"].sum() / max(st["drafted"].sum(), 1)),
        "tokens_per_call": float(st["new_tokens"].sum() / max(st["target_calls"].sum(), 1)),
        "alpha": alphas[name],
        "acceptance_rate_iid": bound_lib.acceptance_rate_iid(alphas[name], num_draft),
        "expected_tokens_iid": bound_lib.expected_tokens(alphas[name], num_draft),
        "ms_per_token": sp.ms_per_token, "ms_per_token_runs": sp.ms_per_token_runs,
        "ar_ms_per_token": ar.ms_per_token, "ar_ms_per_token_runs": ar.ms_per_token_runs,
        "speedup": ar.ms_per_token / sp.ms_per_token, "warmup_s": sp.warmup_s,
        "draft_sampling_ms": time_draft_sampling(
            dataclasses.replace(sampling, coupling=name), len(batches[0]),
            target.config.vocab_size),
    }
  out["gumbel_speculative_equals_autoregressive"] = (
      done[("speculative", "gumbel")].tokens == gumbel_ar.tokens)
  return out


def run(target_dir: str = "assets/pair/target", draft_dir: str = "assets/pair/draft",
        tokenizer: str = "assets/tokenizer/tokenizer.model", num_prompts: int = 8,
        prompt_tokens: int = 96, max_new_tokens: int = 64, num_draft: int = 4,
        batch_sizes=(1, 8), samplings: dict | None = None, seed: int = 0, repeats: int = 2,
        pad_to: int = 16) -> dict:
  """Acceptance and speed of both couplings on the same pair, prompts and seed (module docstring).

  Args:
    target_dir, draft_dir: io.save_lm folders of the pair.
    tokenizer: its vocabulary must equal the models'.
    num_prompts, prompt_tokens: HumanEval prompts cut to their last tokens, as
      benchmark.py does (equal shapes).
    max_new_tokens: per row (eos ignored: every row does the same work).
    num_draft: K.
    batch_sizes: rows per generate call; each must divide num_prompts.
    samplings: {name: Sampling fields}; default nucleus (the benchmark's:
      temperature 0.8, top_p 0.95) and temperature 1.
    seed: the generate seed (an int: rows derive theirs from it).
    repeats: timed passes of each of the four loops, interleaved.
    pad_to: prompt / buffer rounding of generate.

  Returns:
    dict: machine, load averages, settings (one per batch size and
    sampling, each with a 'rejection' and a 'gumbel' entry).
  """
  samplings = samplings or {"nucleus": {"temperature": 0.8, "top_p": 0.95},
                            "temperature_1": {"temperature": 1.0}}
  for b in batch_sizes:
    if b < 1 or num_prompts % b:
      raise ValueError(f"batch_sizes: each must divide num_prompts={num_prompts}, got {b}")
  started, t0 = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), time.perf_counter()
  machine = timing.machine_info()
  target, draft = model_io.load_lm(target_dir), model_io.load_lm(draft_dir)
  task_ids, prompts = humaneval_prompts(Tokenizer.load(tokenizer), num_prompts, prompt_tokens)
  settings = []
  for batch_size in batch_sizes:
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    for name, fields in samplings.items():
      sampling = Sampling(**fields).validate()
      result = _setting(target, draft, batches, prompts, sampling, num_draft, max_new_tokens,
                        seed, repeats, pad_to)
      settings.append({"batch_size": batch_size, "sampling": name, **fields, **result})
      print(f"batch {batch_size} {name}: " + ", ".join(
          f"{c} acc {result[c]['acceptance_rate']:.3f} tau {result[c]['tokens_per_call']:.2f} "
          f"{result[c]['ms_per_token']:.2f} ms/token" for c in COUPLING_NAMES), flush=True)
  return {"started": started, "elapsed_s": time.perf_counter() - t0, "machine": machine,
          "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
          "config": {"target_dir": target_dir, "draft_dir": draft_dir, "num_prompts": num_prompts,
                     "prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens,
                     "num_draft": num_draft, "batch_sizes": list(batch_sizes), "seed": seed,
                     "repeats": repeats, "pad_to": pad_to},
          "prompts": task_ids, "settings": settings}


def format_markdown(results: dict) -> str:
  """The results as one markdown table per measure, both couplings side by side."""
  m, cfg = results["machine"], results["config"]
  lines = [
      "# Gumbel-max coupling vs rejection sampling: acceptance and speed", "",
      f"Started {results['started']}, took {results['elapsed_s']:.0f} s. Machine: {m['label']}; "
      f"load average {m['load_average_1_5_15']} at start, {results['load_average_at_end']} at "
      "end.  ",
      f"Pair `{cfg['target_dir']}` / `{cfg['draft_dir']}`, {cfg['num_prompts']} HumanEval prompts "
      f"cut to their last {cfg['prompt_tokens']} tokens, {cfg['max_new_tokens']} new tokens, "
      f"K = {cfg['num_draft']}, seed {cfg['seed']}; after a warm-up, {cfg['repeats']} timed "
      "passes of each loop, interleaved; each call's fastest wall kept.", "",
      "acc = accepted / drafted; tau = tokens per target call; alpha = per-position acceptance "
      "by definition on the same continuations (rejection: sum min(p, q); gumbel: "
      "sum_i p_i q_i / sum_j max(p_j q_i, q_j p_i)); acc iid = what alpha gives under i.i.d. "
      "acceptance. ms/token includes prefill; speedup = autoregressive / speculative ms/token "
      "under the same coupling. draft sampling = one draft step's sampling work alone "
      "(rejection: probabilities + categorical draw; gumbel: argmax of log-weights + noise).", "",
      "| batch | sampling | coupling | alpha | acc | acc iid | tau | ms/token | AR ms/token | "
      "speedup | draft sampling ms | spec == AR |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in results["settings"]:
    for name in COUPLING_NAMES:
      r = s[name]
      same = s["gumbel_speculative_equals_autoregressive"] if name == "gumbel" else "-"
      lines.append(
          f"| {s['batch_size']} | {s['sampling']} | {name} | {r['alpha']:.3f} | "
          f"{r['acceptance_rate']:.3f} | {r['acceptance_rate_iid']:.3f} | "
          f"{r['tokens_per_call']:.2f} | {r['ms_per_token']:.2f} | {r['ar_ms_per_token']:.2f} | "
          f"{r['speedup']:.2f} | {r['draft_sampling_ms']:.3f} | {same} |")
  lines += ["", "Gumbel relative to rejection (same batch and sampling):", "",
            "| batch | sampling | acc ratio | tau ratio | spec ms/token ratio | AR ms/token ratio |",
            "|---|---|---|---|---|---|"]
  for s in results["settings"]:
    g, r = s["gumbel"], s["rejection"]
    lines.append(
        f"| {s['batch_size']} | {s['sampling']} | {g['acceptance_rate'] / r['acceptance_rate']:.3f} | "
        f"{g['tokens_per_call'] / r['tokens_per_call']:.3f} | "
        f"{g['ms_per_token'] / r['ms_per_token']:.3f} | "
        f"{g['ar_ms_per_token'] / r['ar_ms_per_token']:.3f} |")
  return "\n".join(lines) + "\n"
