"""Speed of autoregressive vs speculative sampling for K = 1..8, and the bound (scripts/benchmark.py).

Everything is measured in ONE process, side by side, after a warm-up on the
same shapes, so compilation never lands in a timing. Definitions:

* ms/token: wall time of the generate calls of one pass over the prompts
  (each call's fastest over the timed passes) / the sum over calls of the MEAN
  new tokens per row: per-row latency, prefill and dispatch included. decode
  ms/token takes the separately timed prefill out: the bound models the loop only.
* c = draft / target 1-token forward and v_K = target (K+1)-token / 1-token
  forward, on a cache of the generate calls' length and batch (timing.time_forward).
* alpha by definition on the autoregressive continuations (bound.measure_alpha);
  tau = tokens per target call; bound = E[tokens] / (K c + v_K).
* bound_sampled adds each step's sampling cost to c and v_K.
* auto: num_draft="auto" (K picked per iteration, decoding/calibrate.py),
  against the best fixed K of the sweep (the oracle) and K = 4.
* breakdown: ms per loop iteration split into parts by a profiler trace of
  the compiled loop itself (eval/speed/breakdown.py, eval/speed/trace.py), with c, v_K and
  the bound taken from the same trace (bound_loop); optionally the ablation
  cross-check.

All loops are timed round-robin (AR, every K, auto, then again), so load that
comes and goes on a shared machine hits every side of a ratio alike. On a device
mesh (config.mesh) every generate call, forward and alpha runs on the mesh;
only the sampling transform is timed on one device per process.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
from tqdm import tqdm

from specsample import paths
from specsample import placement as placement_lib
from specsample import sharding as sh
from specsample.decoding import api
from specsample.decoding.sampling import Sampling
from specsample.eval.speed import bound as bound_lib
from specsample.eval.speed import breakdown as breakdown_lib
from specsample.eval.speed import timing
from specsample.eval.tasks.humaneval import load_problems
from specsample.models import io as model_io
from specsample.models.lm import LM
from specsample.tokenizer import Tokenizer
from specsample.utils import is_int, is_positive_int, round_up


SAMPLINGS = ("greedy", "nucleus")
GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0}


def humaneval_prompts(tokenizer: Tokenizer, num_prompts: int, prompt_tokens: int
                      ) -> tuple[list[str], list[list[int]]]:
  """The first `num_prompts` HumanEval prompts with >= `prompt_tokens` tokens, cut to their last ones.

  Equal lengths give every row and every batch size the same shapes (one
  compile per setting) and the same work. Keeping the END keeps the function
  signature and docstring the completion continues; the cut prompt starts
  mid-file, as the training windows did.

  Returns:
    (task ids, token-id prompts).
  """
  ids, prompts = [], []
  for problem in load_problems():
    tokens = tokenizer.encode(problem["prompt"], add_bos=True)
    if len(tokens) >= prompt_tokens:
      ids.append(problem["task_id"])
      prompts.append(tokens[-prompt_tokens:])
    if len(prompts) == num_prompts:
      return ids, prompts
  raise ValueError(f"only {len(prompts)} HumanEval prompts have >= prompt_tokens={prompt_tokens} "
                   f"tokens; lower prompt_tokens or num_prompts={num_prompts}")


def check_config(config) -> None:
  """Raises ValueError / FileNotFoundError naming the bad field. Before any model is loaded."""
  for name in ("num_prompts", "prompt_tokens", "max_new_tokens", "repeats", "forward_repeats",
               "pad_to", "breakdown_trips"):
    if not is_positive_int(config[name]):
      raise ValueError(f"{name} must be an int >= 1, got {config[name]!r}")
  for name in ("auto", "breakdown_ablation"):
    if not isinstance(config[name], bool):
      raise ValueError(f"{name} must be True or False, got {config[name]!r}")
  if config.eos_id is not None and (not is_int(config.eos_id) or config.eos_id < 0):
    raise ValueError(f"eos_id must be None (no stop) or a token id >= 0, got {config.eos_id!r}")
  if not config.forward_seconds > 0:
    raise ValueError(f"forward_seconds must be > 0, got {config.forward_seconds!r}")
  if not config.batch_sizes:
    raise ValueError("batch_sizes is empty: give at least one batch size, e.g. (1,)")
  for b in config.batch_sizes:
    if not is_positive_int(b) or config.num_prompts % b:
      raise ValueError(f"batch_sizes: each must be an int >= 1 dividing num_prompts="
                       f"{config.num_prompts}, got {b!r}")
  if not config.k_sweep or not all(is_positive_int(k) for k in config.k_sweep):
    raise ValueError(f"k_sweep: give one or more K, each an int >= 1, got "
                     f"{tuple(config.k_sweep or ())}")
  ks = tuple(config.breakdown_ks)
  if ks and not (0 in ks and all(is_positive_int(k) or k == 0 for k in ks) and len(ks) > 1):
    raise ValueError(f"breakdown_ks: () to skip, or K values >= 0 including 0 and one >= 1, "
                     f"got {ks!r}")
  if not config.samplings or not set(config.samplings) <= set(SAMPLINGS):
    raise ValueError(f"samplings must be a non-empty subset of {SAMPLINGS}, got "
                     f"{config.samplings!r}")
  try:
    Sampling(**config.nucleus).validate()
  except (ValueError, TypeError) as e:
    raise ValueError(f"nucleus: {e} (fields: temperature, top_k, top_p)") from e
  for name in ("target_dir", "draft_dir"):
    model_io.check_model_dir(config[name], name)
  if not paths.exists(config.tokenizer):
    raise FileNotFoundError(f"tokenizer: {config.tokenizer} does not exist")
  if paths.is_remote(config.output_dir):  # a bad bucket fails now, not after the timings
    paths.check_writable(config.output_dir, "output_dir")


def _decode_ms_per_token(result: timing.GenerateTiming, calls: int, prefill_ms: float) -> float:
  """ms/token of the best pass with the (separately timed) prefill taken out."""
  return (result.wall_ms - calls * prefill_ms) / max(result.pass_tokens, 1e-9)


class _Pieces:
  """Forward and sampling-transform timings on the generate shapes, each measured once."""

  def __init__(self, config, models: dict[str, LM], mesh, rules: dict):
    self.config, self.models, self.mesh, self.rules = config, models, mesh, rules
    self.timed: dict = {}

  def forward(self, model: str, batch: int, num_tokens: int, cache_len: int, context: int
              ) -> float:
    key = ("forward", model, batch, num_tokens, cache_len, context)
    if key not in self.timed:
      self.timed[key] = timing.time_forward(
          self.models[model], batch=batch, num_tokens=num_tokens, cache_len=cache_len,
          context_len=context, target_s=self.config.forward_seconds,
          repeats=self.config.forward_repeats, mesh=self.mesh, rules=self.rules[model])
    return self.timed[key]

  def sampling(self, sampling: Sampling, batch: int, positions: int) -> float:
    """Sampling cost on [B, X, V]: timed at X = 1 and X = max K + 1, linear between.

    The transform works row by row, so its cost is affine in X; two compiles
    instead of one per K keep the run short.
    """
    def at(x: int) -> float:
      key = ("sampling", sampling, batch, x)
      if key not in self.timed:
        self.timed[key] = timing.time_sampling(
            sampling, batch=batch, positions=x, vocab=self.models["target"].config.vocab_size,
            target_s=self.config.forward_seconds, repeats=self.config.forward_repeats)
      return self.timed[key]

    top = max(self.config.k_sweep) + 1
    if positions in (1, top):
      return at(positions)
    return at(1) + (at(top) - at(1)) * (positions - 1) / (top - 1)


def _time_loops(config, target: LM, draft: LM, batches, common: dict, bar, label: str
                ) -> tuple[timing.GenerateTiming, dict[int, timing.GenerateTiming]]:
  """AR, every K's and auto's timings: all warmed up, then `repeats` round-robin rounds.

  One round is a pass of AR, then of every K, then of auto, so drift of the
  machine's speed (seconds-long on a shared VM) hits every variant alike, and
  each call's fastest wall over the rounds is kept (timing.summarise).
  """
  traces = api.TRACE_COUNT
  variants = {"autoregressive": dict(method="autoregressive", **common)}
  for k in tuple(config.k_sweep) + (("auto",) if config.auto else ()):
    variants[k] = dict(method="speculative", draft=draft, num_draft=k, **common)
  warmup_s = {}
  for name, kwargs in variants.items():
    bar.set_postfix_str(f"{label} {'K=' if name != 'autoregressive' else ''}{name} warm-up")
    warmup_s[name] = timing.warm_up(target, batches, **kwargs)
  warm = dict(traces)
  passes = {name: [] for name in variants}
  for r in range(config.repeats):
    bar.set_postfix_str(f"{label} round {r + 1}/{config.repeats}")
    for name, kwargs in variants.items():
      passes[name].append(timing.timed_pass(target, batches, **kwargs))
  recompiled = traces != warm  # a timed call compiled: its timing is not to be trusted
  out = {name: timing.summarise(passes[name], warmup_s[name], recompiled) for name in variants}
  bar.update(len(variants))
  ar = out.pop("autoregressive")
  tqdm.write(f"{label}: AR {ar.ms_per_token:.2f} ms/token; " + ", ".join(
      f"K={k} {t.ms_per_token:.2f}" for k, t in out.items()))
  return ar, out


def _speculative_row(k: int, sp: timing.GenerateTiming, ar: timing.GenerateTiming,
                     ar_decode: float, alpha: float, sampling: Sampling, pieces: _Pieces,
                     batch_size: int, sizes: list[int], width: int, context_len: int,
                     config) -> dict:
  """One K's results: speedups, acceptance, c, v_K and the bounds."""
  calls = len(sizes)
  fwd = lambda model, tokens, context: pieces.forward(model, batch_size, tokens, cache_len, context)
  cache_len = round_up(width + config.max_new_tokens + k + 1, config.pad_to)
  target_step, draft_step = fwd("target", 1, context_len), fwd("draft", 1, context_len)
  verify = fwd("target", k + 1, context_len)
  c, v_k = draft_step / target_step, verify / target_step
  # Step costs with the sampling transform (an AR step pays one too).
  step_samp = pieces.sampling(sampling, batch_size, 1)
  verify_samp = pieces.sampling(sampling, batch_size, k + 1)
  c_s = (draft_step + step_samp) / (target_step + step_samp)
  v_s = (verify + verify_samp) / (target_step + step_samp)
  prefill = fwd("target", width, 0) + fwd("draft", width, 0)
  s = sp.stats
  tau = float(s["new_tokens"].sum() / max(s["target_calls"].sum(), 1))
  tau_iter = timing.tokens_per_iteration(sp, sizes)
  speedup = ar.ms_per_token / sp.ms_per_token
  decode = _decode_ms_per_token(sp, calls, prefill)
  decode_speedup = ar_decode / decode
  e_tokens = bound_lib.expected_tokens(alpha, k)
  bound = bound_lib.speedup_bound(e_tokens, k, c, v_k)
  bound_sampled = bound_lib.speedup_bound(e_tokens, k, c_s, v_s)
  return {
      "K": k, "ms_per_token": sp.ms_per_token, "ms_per_token_runs": sp.ms_per_token_runs,
      "decode_ms_per_token": decode, "warmup_s": sp.warmup_s,
      "mean_new_tokens": sp.mean_new_tokens,
      "speedup": speedup, "decode_speedup": decode_speedup,
      "acceptance_rate": float(s["accepted"].sum() / max(s["drafted"].sum(), 1)),
      "acceptance_rate_iid": bound_lib.acceptance_rate_iid(alpha, k),
      "tokens_per_call": tau, "tokens_per_iteration": tau_iter,
      "alpha_implied_by_tau": bound_lib.alpha_from_tokens(tau, k), "expected_tokens": e_tokens,
      "target_step_ms": target_step, "draft_step_ms": draft_step, "verify_ms": verify,
      "c": c, "v_k": v_k, "bound": bound, "measured_over_bound": speedup / bound,
      "decode_over_bound": decode_speedup / bound,
      "c_sampled": c_s, "v_sampled": v_s, "bound_sampled": bound_sampled,
      "decode_over_bound_sampled": decode_speedup / bound_sampled,
      "bound_tau": bound_lib.speedup_bound(tau_iter, k, c, v_k),
      "matches_autoregressive": (sp.tokens == ar.tokens) if sampling.greedy else None,
      "recompiled": sp.recompiled}


def _auto_row(sp: timing.GenerateTiming, ar: timing.GenerateTiming, ar_decode: float,
              setting: dict, calls: int, width: int, pieces: _Pieces, batch_size: int) -> dict:
  """num_draft="auto" against the oracle (best fixed K of the sweep) and K = 4."""
  by_k = {r["K"]: r for r in setting["speculative"]}
  oracle = by_k[setting["best_k"]]
  cache_len = round_up(width + pieces.config.max_new_tokens + 9, pieces.config.pad_to)
  prefill = (pieces.forward("target", batch_size, width, cache_len, 0)
             + pieces.forward("draft", batch_size, width, cache_len, 0))
  s = sp.stats
  speedup = ar.ms_per_token / sp.ms_per_token
  return {
      "ms_per_token": sp.ms_per_token, "ms_per_token_runs": sp.ms_per_token_runs,
      "speedup": speedup, "decode_speedup": ar_decode / _decode_ms_per_token(sp, calls, prefill),
      "warmup_s": sp.warmup_s, "mean_k": float(s["drafted"].sum() / max(s["target_calls"].sum(), 1)),
      "tokens_per_call": float(s["new_tokens"].sum() / max(s["target_calls"].sum(), 1)),
      "acceptance_rate": float(s["accepted"].sum() / max(s["drafted"].sum(), 1)),
      "oracle_k": oracle["K"], "over_oracle": speedup / oracle["speedup"],
      "over_k4": speedup / by_k[4]["speedup"] if 4 in by_k else None,
      "matches_autoregressive": (sp.tokens == ar.tokens) if setting["sampling"] == "greedy" else None,
      "recompiled": sp.recompiled}


def _breakdown(config, target: LM, draft: LM, prompts, sampling: Sampling, alpha: float,
               setting: dict) -> dict:
  """eval/speed/breakdown.py on the setting's first batch, with the bound from in-loop c and v_K."""
  args = (target, draft, prompts, sampling, config.breakdown_ks, config.max_new_tokens,
          config.pad_to, config.breakdown_trips, config.forward_repeats)
  out = breakdown_lib.measure(*args)
  if config.breakdown_ablation:
    out["ablation"] = breakdown_lib.ablation(*args)
  decode = {r["K"]: r["decode_speedup"] for r in setting["speculative"]}
  out["bound"], out["decode_over_bound"] = [], []
  for k, c, v_k in zip(out["K"], out["c"], out["v_k"]):
    bound = None if k == 0 else bound_lib.speedup_bound(bound_lib.expected_tokens(alpha, k), k,
                                                        c, v_k)
    out["bound"].append(bound)
    out["decode_over_bound"].append(decode[k] / bound if bound and k in decode else None)
  return out


def run(config, command: str = "", start: Callable[[], None] = lambda: None) -> dict:
  """Times autoregressive and speculative sampling on HumanEval prompts.

  For every batch size and sampling: autoregressive ms/token, alpha (by
  definition, on the autoregressive continuations), then for every K the
  speculative ms/token, speedup, acceptance statistics, c, v_K, the bound and
  "auto" and the breakdown (module docstring). See configs/benchmark.py for the fields.

  Every loop is warmed up first, then timed in `repeats` round-robin rounds
  (AR, every K, auto), so load that comes and goes on a shared machine hits
  all sides of a ratio alike.

  `start` runs once the config is checked, before any JAX work (scripts
  start jax.distributed there: cli.start_jax).

  Returns:
    The results dict (what benchmark_report.write_results stores as JSON).
  """
  check_config(config)
  start()
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
  started, t_start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), time.perf_counter()
  machine = timing.machine_info()
  mesh = placement_lib.mesh_from_config(config, config.batch_sizes)  # None: one device
  rules = {"target": sh.get_rules(config.target_rules), "draft": sh.get_rules(config.draft_rules)}
  placement = placement_lib.rules_from_config(config, mesh)
  target = placement_lib.load_lm_from_config(config, "target_dir", mesh)
  draft = placement_lib.load_lm_from_config(config, "draft_dir", mesh)
  tokenizer = Tokenizer.load(config.tokenizer)
  if tokenizer.vocab_size != target.config.vocab_size:
    raise ValueError(f"tokenizer: vocab {tokenizer.vocab_size} != target vocab_size "
                     f"{target.config.vocab_size}")
  task_ids, prompts = humaneval_prompts(tokenizer, config.num_prompts, config.prompt_tokens)
  eos_id = config.eos_id
  width = round_up(config.prompt_tokens, config.pad_to)
  context_len = config.prompt_tokens + config.max_new_tokens // 2  # mid-generation
  pieces = _Pieces(config, {"target": target, "draft": draft}, mesh, rules)
  settings = []
  total = len(config.batch_sizes) * len(config.samplings) * (1 + len(config.k_sweep) + config.auto)
  bar = tqdm(total=total, desc="benchmark", unit="loop")
  for batch_size in config.batch_sizes:
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    sizes, calls = [len(b) for b in batches], len(batches)
    for name in config.samplings:
      sampling_fields = GREEDY if name == "greedy" else config.nucleus.to_dict()
      sampling = Sampling(**sampling_fields)
      common = dict(sampling=sampling, max_new_tokens=config.max_new_tokens, eos_id=eos_id,
                    seed=config.seed, pad_to=config.pad_to, **placement)
      ar, spec_timings = _time_loops(config, target, draft, batches, common, bar,
                                     f"B={batch_size} {name}")
      # Every AR pass has the same tokens (same prompts and seeds).
      alpha, alpha_rows = bound_lib.measure_alpha(target, draft, prompts, ar.tokens, sampling,
                                                  mesh=mesh)
      # The pieces: forwards and sampling transforms, on the generate shapes.
      ar_len = round_up(width + config.max_new_tokens + 1, config.pad_to)  # as generate sizes it
      ar_step = pieces.forward("target", batch_size, 1, ar_len, context_len)
      ar_samp = pieces.sampling(sampling, batch_size, 1)
      ar_prefill = pieces.forward("target", batch_size, width, ar_len, 0)
      ar_decode = _decode_ms_per_token(ar, calls, ar_prefill)
      setting = {
          "batch_size": batch_size, "sampling": name, **sampling_fields, "alpha": alpha,
          "alpha_per_prompt": alpha_rows.round(4).tolist(),
          "autoregressive": {
              "ms_per_token": ar.ms_per_token, "ms_per_token_runs": ar.ms_per_token_runs,
              "decode_ms_per_token": ar_decode, "warmup_s": ar.warmup_s,
              "mean_new_tokens": ar.mean_new_tokens, "target_step_ms": ar_step,
              "sampling_ms": ar_samp,
              "recompiled": ar.recompiled},
          "speculative": [_speculative_row(k, sp, ar, ar_decode, alpha, sampling, pieces,
                                           batch_size, sizes, width, context_len, config)
                          for k, sp in spec_timings.items() if k != "auto"]}
      setting["best_k"] = bound_lib.best_k({r["K"]: r["speedup"] for r in setting["speculative"]})
      if config.auto:
        setting["auto"] = _auto_row(spec_timings["auto"], ar, ar_decode, setting, calls, width,
                                    pieces, batch_size)
      if config.breakdown_ks:
        bar.set_postfix_str(f"B={batch_size} {name} breakdown")
        setting["breakdown"] = _breakdown(config, target, draft, batches[0], sampling, alpha,
                                          setting)
      settings.append(setting)
  bar.close()
  return {"command": command, "started": started, "elapsed_s": time.perf_counter() - t_start,
          "machine": machine, "mesh": None if mesh is None else dict(mesh.shape),
          "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
          "config": config.to_dict(), "prompts": task_ids,
          "target": dataclasses.asdict(target.config), "draft": dataclasses.asdict(draft.config),
          "settings": settings}
