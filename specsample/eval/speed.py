"""Wall-clock speed of autoregressive and speculative sampling, and the bound.

Everything is measured in ONE process, side by side, after a warm-up run on the
same shapes, so compilation never lands in a timing.

Definitions (PAPERS.md, section 2; Leviathan et al. 2023):

* ms/token: wall time of the `generate` calls of one pass over the prompts
  (each call's fastest over the timed passes) divided by the sum over calls
  of the MEAN number of new tokens per row. At
  batch 1 this is plain ms per generated token; at batch B it is the per-row
  latency a user of one row sees (B tokens come out per "token" of it), the
  quantity whose ratio is the speedup. It includes prefill and Python
  dispatch. `generate` returns numpy arrays, so it has already waited for the
  device when it returns. Autoregressive passes are interleaved with the
  speculative ones, so load that comes and goes on a shared machine hits both
  sides of a ratio.
* decode ms/token: the same with the prefill (timed separately, below) taken
  out of the wall. The bound models the decode loop only, and on a CPU the
  prefill of a 96-token prompt costs about 20 one-token steps, a tenth of a
  64-token generation, so "decode / bound" is the ratio that tests the loop.
* c = draft 1-token forward / target 1-token forward, and v_K = target forward
  over K + 1 tokens / target forward over 1 token, both on a KV cache of the
  same length and batch as the generate calls. Each is timed inside one jitted
  `lax.fori_loop` of n forwards (`time_forward`), which leaves out Python
  dispatch (0.2 to 2 ms per call on the 2-core CPU, as long as a whole draft
  step). They time the raw model only, as the paper defines them.
* alpha = E[sum_x min(p(x), q(x))] (draft p, target q, both after the
  sampling transform), measured by definition: `measure_alpha` runs both
  models teacher-forced over the autoregressive continuations and averages
  the overlap over the generated positions. The generate statistic accepted /
  drafted is NOT alpha for K > 1: every iteration counts K drafted tokens but
  stops testing at the first rejection, so accepted / drafted = E[accepted] / K
  = alpha (1 - alpha^K) / ((1 - alpha) K) under the i.i.d. model, e.g. 0.59
  for alpha = 0.8, K = 4. It is reported too, as "acc".
* tau = tokens per target call, from the generate statistics.
* bound = E[tokens] / (K c + v_K) with E[tokens] = (1 - alpha^(K+1)) / (1 - alpha),
  the expected walltime improvement under i.i.d. acceptance.

Where the time goes (`profile` in the results). The bound prices a step at
its model forward only. The loop also pays, per draft step and per target
pass, the sampling transform (`Sampling.probs` plus one categorical draw;
nucleus sorts the whole vocabulary), and per call the prefill. So the
benchmark also times those pieces, in the same jitted-loop way (sampling on
K + 1 positions is interpolated between 1 and max K + 1: it is affine in the
number of rows), and reports
  * bound_sampled = E[tokens] / (K c_s + v_s), where c_s and v_s are c and v_K
    with each step's sampling cost added (the AR step pays one too), i.e. the
    bound for a loop whose only costs are forwards and sampling;
  * per K, the loop body ms per iteration split into draft forwards, draft
    sampling, target forward, target sampling, and the rest (rejection,
    commit, while-loop bookkeeping), the last by subtraction from the
    measured (wall - prefill) / iterations.

On a device mesh (config.mesh, one or many hosts) the models are loaded shard
by shard and every generate call, forward and alpha measurement runs on the
mesh (decoding/sharded.py) with each model's rules; only the sampling
transform is timed on one device per process. Every process runs the whole
benchmark; scripts/benchmark.py writes process 0's results.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from specsample import sharding as sh
from specsample.decoding import api, sharded
from specsample.decoding.api import LM
from specsample.decoding.sampling import Sampling, sample
from specsample.eval.humaneval import load_problems
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer


# ---------------------------------------------------------------------------
# The bound (pure maths).
# ---------------------------------------------------------------------------

def expected_tokens(alpha: float, num_draft: int) -> float:
  """E[tokens per target call] = (1 - alpha^(K+1)) / (1 - alpha); K + 1 at alpha = 1."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  if num_draft < 0:
    raise ValueError(f"num_draft (K) must be >= 0, got {num_draft}")
  if alpha == 1:
    return float(num_draft + 1)
  return (1 - alpha ** (num_draft + 1)) / (1 - alpha)


def speedup_bound(tokens_per_call: float, num_draft: int, c: float, v_k: float = 1.0) -> float:
  """Walltime improvement tokens / (K c + v_K) (Leviathan et al. 2023, with v_K).

  Args:
    tokens_per_call: E[tokens] from alpha (`expected_tokens`) or a measured tau.
    num_draft: K.
    c: draft step time / target step time.
    v_k: target time over K + 1 tokens / over 1 token (1 on accelerators).
  """
  return tokens_per_call / (num_draft * c + v_k)


def alpha_from_tokens(tokens_per_call: float, num_draft: int) -> float:
  """Inverts `expected_tokens`: the i.i.d. alpha that would give this tau (bisection)."""
  if tokens_per_call <= 1:
    return 0.0
  if tokens_per_call >= num_draft + 1:
    return 1.0
  lo, hi = 0.0, 1.0
  for _ in range(60):  # expected_tokens is increasing in alpha
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if expected_tokens(mid, num_draft) < tokens_per_call else (lo, mid)
  return (lo + hi) / 2


def acceptance_rate_iid(alpha: float, num_draft: int) -> float:
  """accepted / drafted that i.i.d. acceptance alpha would give: E[accepted] / K."""
  return (expected_tokens(alpha, num_draft) - 1) / num_draft


def best_k(speedups: dict[int, float]) -> int:
  """The K with the highest measured speedup (the smallest such K on ties)."""
  return max(sorted(speedups), key=lambda k: speedups[k])


# ---------------------------------------------------------------------------
# Timing generate.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Pass:
  """One timed pass over the prompt batches: one generate call per batch."""
  wall_ms: float
  tokens: float            # sum over calls of the mean new tokens per row
  outputs: list[api.GenerateOutput]
  call_ms: list[float]     # wall of each call

  @property
  def ms_per_token(self) -> float:
    return self.wall_ms / max(self.tokens, 1e-9)


def _generate(target: LM, batch: Sequence[Sequence[int]], **generate_kwargs: Any
              ) -> api.GenerateOutput:
  """api.generate, or sharded.sharded_generate when the kwargs hold a `mesh`
  (with target_rules and draft_rules)."""
  if "mesh" in generate_kwargs:
    return sharded.sharded_generate(target, batch, **generate_kwargs)
  return api.generate(target, batch, **generate_kwargs)


def _trace_counts(generate_kwargs: dict) -> dict[str, int]:
  """The decode-loop trace counters of the generate function the kwargs select."""
  return sharded.TRACE_COUNT if "mesh" in generate_kwargs else api.TRACE_COUNT


def warm_up(target: LM, batches: Sequence[Sequence[Sequence[int]]], **generate_kwargs: Any
            ) -> float:
  """Runs `generate` once per distinct (batch, padded width) shape: the compiles. Returns seconds."""
  pad_to = generate_kwargs.get("pad_to", 16)
  shapes, start = set(), time.perf_counter()
  for batch in batches:
    shape = (len(batch), -(-max(len(p) for p in batch) // pad_to))
    if shape not in shapes:
      shapes.add(shape)
      _generate(target, batch, **generate_kwargs)
  return time.perf_counter() - start


def timed_pass(target: LM, batches: Sequence[Sequence[Sequence[int]]], **generate_kwargs: Any
               ) -> Pass:
  """Times one `generate` call per batch (after `warm_up` on the same shapes)."""
  call_ms, tokens, outputs = [], 0.0, []
  for batch in batches:
    start = time.perf_counter()
    out = _generate(target, batch, **generate_kwargs)  # numpy out: already synchronous
    call_ms.append(1000 * (time.perf_counter() - start))
    tokens += float(np.mean(out.stats["new_tokens"]))
    outputs.append(out)
  return Pass(wall_ms=sum(call_ms), tokens=tokens, outputs=outputs, call_ms=call_ms)


@dataclasses.dataclass
class GenerateTiming:
  """Timed passes of one decode setting, summarised.

  Attributes:
    ms_per_token: wall_ms / pass_tokens.
    ms_per_token_runs: ms/token of every pass.
    wall_ms: the sum over calls of each call's fastest wall over the passes;
      on a shared machine other load only ever adds time, so the minimum is
      the estimate, and taking it per call drops a preempted call without
      dropping the whole pass.
    pass_tokens: the sum over calls of the mean new tokens per row (equal in
      every pass: same prompts, same seed).
    warmup_s: wall time of the warm-up call(s), compilation included.
    mean_new_tokens: new tokens per row, averaged over rows.
    loop_iterations: per call, the loop iterations it ran (max target calls
      over its rows): a batch runs until its slowest row is done.
    stats: per-row statistics of the last pass, rows of all calls in order.
    tokens: per-row completions of the last pass.
    recompiled: a timed call traced a decode loop again (the timing then
      contains compilation; should be False).
  """
  ms_per_token: float
  ms_per_token_runs: list[float]
  wall_ms: float
  pass_tokens: float
  warmup_s: float
  mean_new_tokens: float
  loop_iterations: list[int]
  stats: dict[str, np.ndarray]
  tokens: list[list[int]]
  recompiled: bool


def summarise(passes: Sequence[Pass], warmup_s: float, recompiled: bool) -> GenerateTiming:
  """GenerateTiming of passes of the same setting (same prompts, seed: same tokens)."""
  if len({p.tokens for p in passes}) != 1:
    raise ValueError(f"passes generated different token counts: {[p.tokens for p in passes]}")
  wall_ms = float(np.sum(np.min([p.call_ms for p in passes], axis=0)))
  outputs = passes[-1].outputs
  stats = {k: np.concatenate([o.stats[k] for o in outputs]) for k in outputs[0].stats}
  return GenerateTiming(
      ms_per_token=wall_ms / max(passes[0].tokens, 1e-9),
      ms_per_token_runs=[p.ms_per_token for p in passes],
      wall_ms=wall_ms, pass_tokens=passes[0].tokens, warmup_s=warmup_s,
      mean_new_tokens=float(np.mean(stats["new_tokens"])),
      loop_iterations=[int(o.stats["target_calls"].max()) for o in outputs],
      stats=stats, tokens=[row for o in outputs for row in o.tokens], recompiled=recompiled)


def time_generate(target: LM, batches: Sequence[Sequence[Sequence[int]]], *, repeats: int = 2,
                  **generate_kwargs: Any) -> GenerateTiming:
  """Warms up, then times `repeats` passes of `api.generate` over the prompt batches.

  Args:
    target: the target model.
    batches: prompt batches (each a list of token-id prompts); one generate
      call per batch. Batch 1 over N prompts is N batches of one.
    repeats: timed passes over all batches.
    **generate_kwargs: passed to `generate` (draft, method, num_draft,
      sampling, max_new_tokens, eos_id, seed, pad_to), or with mesh,
      target_rules and draft_rules to `sharded.sharded_generate`.

  Returns:
    GenerateTiming; ms/token = sum of walls / sum over batches of the mean new
    tokens per row (module docstring).
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  warmup_s = warm_up(target, batches, **generate_kwargs)
  traces = _trace_counts(generate_kwargs)
  traces_before = dict(traces)
  passes = [timed_pass(target, batches, **generate_kwargs) for _ in range(repeats)]
  return summarise(passes, warmup_s, traces != traces_before)


def tokens_per_iteration(timing: GenerateTiming, batch_sizes: Sequence[int]) -> float:
  """Mean new tokens per row / loop iterations, pooled over calls.

  At batch 1 this is tau. At batch B the loop runs until the SLOWEST row is
  done, so this batch-effective tau, not the per-row tau, sets the wall time.
  """
  new = np.split(timing.stats["new_tokens"], np.cumsum(batch_sizes)[:-1])
  return float(sum(np.mean(n) for n in new) / max(sum(timing.loop_iterations), 1))


# ---------------------------------------------------------------------------
# Timing pieces of a step in a jitted loop: forwards (c, v_K, prefill) and sampling.
# ---------------------------------------------------------------------------

def _best_ms_per_step(run: Callable[[int], float], target_s: float, repeats: int) -> float:
  """ms per step of `run(n)` (seconds for n steps in one compiled call).

  Compiles with n = 1, probes n = 4, then sizes n to last about `target_s`
  and keeps the fastest of `repeats` calls (load only ever adds time).
  """
  run(1)  # compile (n is traced: one compile per shape)
  probe = 4
  per_step = max(run(probe) / probe, 1e-6)
  n = max(probe, math.ceil(target_s / per_step))
  return 1000 * min(run(n) for _ in range(repeats)) / n


@functools.partial(jax.jit, static_argnames=("config",))
def _forward_loop(config: tr.TransformerConfig, params, cache: tr.KVCache, tokens_BT: jax.Array,
                  num_steps: jax.Array) -> jax.Array:
  """Runs `num_steps` forwards of tokens_BT at the cache's lengths (traced count)."""
  start_B = cache.lengths

  def body(_, carry):
    cache, tokens_BT = carry
    logits_BTV, cache = tr.forward(config, params, tokens_BT, cache)
    # Feeding the argmax back chains the steps, so XLA can neither hoist a
    # step out of the loop nor drop it; rolling the lengths back keeps every
    # step at the same realistic position, as speculative rollback does.
    tokens_BT = jnp.argmax(logits_BTV, axis=-1).astype(jnp.int32)
    return cache.with_lengths(start_B), tokens_BT

  return jax.lax.fori_loop(0, num_steps, body, (cache, tokens_BT))[1]


def time_forward(model: LM, *, batch: int, num_tokens: int, cache_len: int, context_len: int,
                 target_s: float = 0.25, repeats: int = 3, mesh=None,
                 rules: sh.Rules | None = None) -> float:
  """ms per forward of `num_tokens` tokens per row on a cache, dispatch excluded.

  Args:
    model: the model.
    batch: rows B.
    num_tokens: T, new tokens per row in one forward (1 for a decode step,
      K + 1 for speculative verification, the padded prompt for prefill).
    cache_len: S, KV-cache positions; attention spans all S (stale entries
      are masked, not skipped), so use the generate buffer length.
    context_len: cache positions already filled (where the T tokens go).
    target_s: each measurement runs about this long (n forwards in one call).
    repeats: measurements; the minimum is returned.
    mesh, rules: when given, the cache and tokens are laid out on the mesh by
      the model's rules (its params must already be: load_sharded_lm).

  Returns:
    Milliseconds per forward (one call of n forwards / n).
  """
  if context_len + num_tokens > cache_len:
    raise ValueError(f"context_len {context_len} + num_tokens {num_tokens} > cache_len {cache_len}")
  make_cache = lambda: tr.init_cache(model.config, batch, cache_len).with_lengths(
      jnp.full((batch,), context_len, jnp.int32))
  tokens_BT = np.ones((batch, num_tokens), np.int32)
  if mesh is None:
    cache = make_cache()
  else:
    # Created in its sharding (a large target's cache fits no single device);
    # global arrays, which every process of a multi-host run can pass to jit.
    cache = jax.jit(make_cache, out_shardings=sh.cache_shardings(
        model.config, mesh, rules, batch, cache_len))()
    tokens_BT = sh.put_global(tokens_BT, sh.batch_sharding(mesh, rules, tokens_BT.shape,
                                                           what="forward tokens [B, T]"))

  def run(n: int) -> float:
    start = time.perf_counter()
    # A numpy count: jit treats it as replicated on every process.
    _forward_loop(model.config, model.params, cache, tokens_BT, np.int32(n)).block_until_ready()
    return time.perf_counter() - start

  return _best_ms_per_step(run, target_s, repeats)


@functools.partial(jax.jit, static_argnames=("sampling",))
def _sampling_loop(sampling: Sampling, logits_BXV: jax.Array, key: jax.Array,
                   num_steps: jax.Array) -> jax.Array:
  """`num_steps` times: probs over [B, X, V] and one categorical draw per row."""

  def body(i, logits_BXV):
    probs_BXV = sampling.probs(logits_BXV)
    token_B = sample(jax.random.fold_in(key, i), probs_BXV[:, 0], greedy=sampling.greedy)
    # Chain the steps through both outputs (no hoisting, nothing dead).
    return logits_BXV + 1e-3 * probs_BXV + 1e-6 * token_B[:, None, None]

  return jax.lax.fori_loop(0, num_steps, body, logits_BXV)


def time_sampling(sampling: Sampling, *, batch: int, positions: int, vocab: int,
                  target_s: float = 0.25, repeats: int = 3) -> float:
  """ms of the sampling transform on [B, X, V] logits plus one [B, V] draw.

  That is the work a decode loop adds to a forward: a draft or AR step
  transforms and samples one position (X = 1); speculative verification
  transforms K + 1 positions and draws one residual token (X = K + 1).
  """
  logits_BXV = 3 * jax.random.normal(jax.random.key(0), (batch, positions, vocab), jnp.float32)
  key = jax.random.key(1)

  def run(n: int) -> float:
    start = time.perf_counter()
    _sampling_loop(sampling, logits_BXV, key, jnp.int32(n)).block_until_ready()
    return time.perf_counter() - start

  return _best_ms_per_step(run, target_s, repeats)


# ---------------------------------------------------------------------------
# Alpha by definition.
# ---------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("target_cfg", "draft_cfg", "sampling"))
def _overlap(target_cfg, draft_cfg, sampling: Sampling, target_params, draft_params,
             tokens_BL: jax.Array) -> jax.Array:
  """[B, L] sum_x min(p, q) of the next-token distributions at every position."""
  q_BLV = sampling.probs(tr.forward(target_cfg, target_params, tokens_BL)[0])
  p_BLV = sampling.probs(tr.forward(draft_cfg, draft_params, tokens_BL)[0])
  return jnp.minimum(p_BLV, q_BLV).sum(axis=-1)


def measure_alpha(target: LM, draft: LM, prompts: Sequence[Sequence[int]],
                  completions: Sequence[Sequence[int]], sampling: Sampling,
                  pad_to: int = 64, mesh=None) -> tuple[float, np.ndarray]:
  """alpha = mean over generated positions of sum_x min(p(x), q(x)).

  The distributions are those the generated tokens were drawn from: at the
  positions from the last prompt token to the second-to-last token of the
  continuation. Use continuations sampled from the target (autoregressive or
  speculative: both follow q).

  Args:
    target, draft: the pair.
    prompts: N token-id prompts.
    completions: N generated continuations (prompt excluded).
    sampling: the transform applied to both models before comparing.
    pad_to: rows are padded to a multiple of this (fewer compiles).
    mesh: the mesh the (sharded) params live on, if any: the tokens go there
      replicated and the overlaps come back replicated, readable by every process.

  Returns:
    (alpha pooled over all generated positions, per-row alpha [N]).
  """
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
  seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
  width = _round_up(max(len(s) for s in seqs), pad_to)
  tokens_BL = np.zeros((len(seqs), width), np.int32)
  mask_BL = np.zeros((len(seqs), width), bool)
  for b, (seq, p, c) in enumerate(zip(seqs, prompts, completions)):
    tokens_BL[b, :len(seq)] = seq
    mask_BL[b, len(p) - 1:len(p) - 1 + len(c)] = True  # positions that predicted a new token
  if mesh is not None:
    tokens_BL = sh.put_global(tokens_BL, sh.replicated(mesh))
  overlap_BL = _overlap(target.config, draft.config, sampling, target.params, draft.params,
                        tokens_BL)
  if mesh is not None:
    overlap_BL = sh.put_global(overlap_BL, sh.replicated(mesh))
  overlap_BL = np.asarray(overlap_BL)
  per_row = (overlap_BL * mask_BL).sum(1) / np.maximum(mask_BL.sum(1), 1)
  return float((overlap_BL * mask_BL).sum() / max(mask_BL.sum(), 1)), per_row


# ---------------------------------------------------------------------------
# The benchmark: autoregressive vs speculative for K = 1..8 (scripts/benchmark.py).
# ---------------------------------------------------------------------------

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


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def machine_info() -> dict:
  """What the timings were taken on (the CPU may be shared: load average included)."""
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    pass
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  info = {
      "processor": platform.processor() or platform.machine(), "cpu_model": model,
      "platform": platform.platform(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
      "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()], "niceness": os.nice(0),
      "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
      "jax_version": jax.__version__,
  }
  # One short label, repeated on every markdown row.
  info["label"] = (f"{model or info['processor']}, {usable} cores, jax {jax.__version__} "
                   f"{info['jax_backend']}")
  return info


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_benchmark_config(config) -> None:
  """Raises ValueError / FileNotFoundError naming the bad field. Before any model is loaded."""
  for name in ("num_prompts", "prompt_tokens", "max_new_tokens", "repeats", "forward_repeats",
               "pad_to"):
    if not _positive_int(config[name]):
      raise ValueError(f"{name} must be an int >= 1, got {config[name]!r}")
  if not config.forward_seconds > 0:
    raise ValueError(f"forward_seconds must be > 0, got {config.forward_seconds!r}")
  if not config.batch_sizes:
    raise ValueError("batch_sizes is empty: give at least one batch size, e.g. (1,)")
  for b in config.batch_sizes:
    if not _positive_int(b) or config.num_prompts % b:
      raise ValueError(f"batch_sizes: each must be an int >= 1 dividing num_prompts="
                       f"{config.num_prompts}, got {b!r}")
  if not config.num_draft or not all(_positive_int(k) for k in config.num_draft):
    raise ValueError(f"num_draft: give one or more K, each an int >= 1, got "
                     f"{tuple(config.num_draft or ())}")
  if not config.samplings:
    raise ValueError("samplings is empty: give at least one, e.g. greedy: {temperature: 0.0}")
  for name, fields in config.samplings.items():
    try:
      Sampling(**fields).validate()
    except (ValueError, TypeError) as e:
      raise ValueError(f"samplings.{name}: {e} (fields: temperature, top_k, top_p)") from e
  for name in ("target_dir", "draft_dir"):
    path = os.path.join(config[name], "config.json")
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{name}: no model at {config[name]} ({path} is missing); export the trained pair "
          f"(scripts/export_pair.py) or point --config.{name} at an io.save_lm folder")
  if not os.path.exists(config.tokenizer):
    raise FileNotFoundError(f"tokenizer: {config.tokenizer} does not exist")


def _profile(wall_ms: float, calls: int, iterations: int, prefill_ms: float,
             parts: dict[str, float]) -> dict:
  """Splits the measured loop body ms per iteration into `parts` and the rest."""
  body_ms = (wall_ms - calls * prefill_ms) / max(iterations, 1)
  return {"wall_ms": wall_ms, "prefill_ms_per_call": prefill_ms, "iteration_ms": body_ms,
          **parts, "other_ms": body_ms - sum(parts.values())}


def _decode_ms_per_token(timing: GenerateTiming, calls: int, prefill_ms: float) -> float:
  """ms/token of the best pass with the (separately timed) prefill taken out."""
  return (timing.wall_ms - calls * prefill_ms) / max(timing.pass_tokens, 1e-9)


def run_benchmark(config, command: str = "") -> dict:
  """Times autoregressive and speculative sampling on HumanEval prompts.

  For every batch size and sampling: autoregressive ms/token, alpha (by
  definition, on the autoregressive continuations), then for every K the
  speculative ms/token, speedup, acceptance statistics, c, v_K, the bound and
  the time profile (module docstring). See configs/benchmark.py for the fields.

  Autoregressive passes are spread over the sweep (one after the first
  speculative pass of every K) and the AR ms/token is the best over all of
  them: load that comes and goes on a shared machine then hits both sides of
  a ratio alike. Taking the best of more AR passes than speculative ones can
  only understate the speedup.

  Returns:
    The results dict (what `write_results` stores as JSON).
  """
  check_benchmark_config(config)
  started, t_start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), time.perf_counter()
  machine = machine_info()
  mesh = sharded.mesh_from_config(config, config.batch_sizes)  # None: one device
  rules = {"target": sh.get_rules(config.target_rules), "draft": sh.get_rules(config.draft_rules)}
  placement = ({} if mesh is None else
               dict(mesh=mesh, target_rules=rules["target"], draft_rules=rules["draft"]))
  traces = _trace_counts(placement)
  target = sharded.load_lm_from_config(config, "target_dir", mesh)
  draft = sharded.load_lm_from_config(config, "draft_dir", mesh)
  tokenizer = Tokenizer.load(config.tokenizer)
  if tokenizer.vocab_size != target.config.vocab_size:
    raise ValueError(f"tokenizer: vocab {tokenizer.vocab_size} != target vocab_size "
                     f"{target.config.vocab_size}")
  task_ids, prompts = humaneval_prompts(tokenizer, config.num_prompts, config.prompt_tokens)
  eos_id = tokenizer.eos_id if config.stop_at_eos else None
  width = _round_up(config.prompt_tokens, config.pad_to)
  context_len = config.prompt_tokens + config.max_new_tokens // 2  # mid-generation
  timed: dict = {}

  def fwd(model_name: str, batch: int, num_tokens: int, cache_len: int, context: int) -> float:
    key = ("forward", model_name, batch, num_tokens, cache_len, context)
    if key not in timed:
      timed[key] = time_forward({"target": target, "draft": draft}[model_name], batch=batch,
                                num_tokens=num_tokens, cache_len=cache_len, context_len=context,
                                target_s=config.forward_seconds, repeats=config.forward_repeats,
                                mesh=mesh, rules=rules[model_name])
    return timed[key]

  def samp(sampling: Sampling, batch: int, positions: int) -> float:
    """Sampling cost on [B, X, V]: timed at X = 1 and X = max K + 1, linear between.

    The transform works row by row (nucleus: one sort per row), so its cost is
    affine in X; two compiles instead of one per K keep the run short.
    """
    def at(x: int) -> float:
      key = ("sampling", sampling, batch, x)
      if key not in timed:
        timed[key] = time_sampling(sampling, batch=batch, positions=x,
                                   vocab=target.config.vocab_size,
                                   target_s=config.forward_seconds, repeats=config.forward_repeats)
      return timed[key]

    top = max(config.num_draft) + 1
    if positions in (1, top):
      return at(positions)
    return at(1) + (at(top) - at(1)) * (positions - 1) / (top - 1)

  settings = []
  total = len(config.batch_sizes) * len(config.samplings) * (1 + len(config.num_draft))
  bar = tqdm(total=total, desc="benchmark", unit="loop")
  for batch_size in config.batch_sizes:
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    sizes, calls = [len(b) for b in batches], len(batches)
    for name, sampling_fields in config.samplings.items():
      sampling = Sampling(**sampling_fields)
      common = dict(sampling=sampling, max_new_tokens=config.max_new_tokens, eos_id=eos_id,
                    seed=config.seed, pad_to=config.pad_to, **placement)
      ar_kwargs = dict(method="autoregressive", **common)
      bar.set_postfix_str(f"B={batch_size} {name} autoregressive")
      ar_warmup = warm_up(target, batches, **ar_kwargs)
      ar_traces = traces["autoregressive"]
      ar_passes = [timed_pass(target, batches, **ar_kwargs)]
      bar.update()
      ar_tokens = [row for o in ar_passes[0].outputs for row in o.tokens]
      alpha, alpha_rows = measure_alpha(target, draft, prompts, ar_tokens, sampling, mesh=mesh)

      spec_timings = {}
      for k in config.num_draft:
        bar.set_postfix_str(f"B={batch_size} {name} K={k}")
        spec_kwargs = dict(method="speculative", draft=draft, num_draft=k, **common)
        spec_warmup = warm_up(target, batches, **spec_kwargs)
        spec_traces, spec_passes = traces["speculative"], []
        for r in range(config.repeats):
          spec_passes.append(timed_pass(target, batches, **spec_kwargs))
          if r == 0:  # spec, AR, spec, ...: AR passes spread over the whole sweep
            ar_passes.append(timed_pass(target, batches, **ar_kwargs))
        spec_timings[k] = summarise(spec_passes, spec_warmup,
                                    traces["speculative"] != spec_traces)
        bar.update()
        tqdm.write(f"B={batch_size} {name} K={k}: {spec_timings[k].ms_per_token:.2f} ms/token, "
                   f"AR {min(p.ms_per_token for p in ar_passes):.2f}")
      ar = summarise(ar_passes, ar_warmup, traces["autoregressive"] != ar_traces)

      # The pieces: forwards and sampling transforms, on the generate shapes.
      ar_len = _round_up(width + config.max_new_tokens + 1, config.pad_to)  # as generate sizes it
      ar_step, ar_samp = fwd("target", batch_size, 1, ar_len, context_len), samp(sampling, batch_size, 1)
      ar_prefill = fwd("target", batch_size, width, ar_len, 0)
      ar_decode = _decode_ms_per_token(ar, calls, ar_prefill)
      setting = {
          "batch_size": batch_size, "sampling": name, **sampling_fields, "alpha": alpha,
          "alpha_per_prompt": alpha_rows.round(4).tolist(),
          "autoregressive": {
              "ms_per_token": ar.ms_per_token, "ms_per_token_runs": ar.ms_per_token_runs,
              "decode_ms_per_token": ar_decode, "warmup_s": ar.warmup_s,
              "mean_new_tokens": ar.mean_new_tokens, "target_step_ms": ar_step,
              "sampling_ms": ar_samp,
              "profile": _profile(ar.wall_ms, calls, sum(ar.loop_iterations), ar_prefill,
                                  {"target_forward_ms": ar_step, "target_sampling_ms": ar_samp}),
              "recompiled": ar.recompiled},
          "speculative": []}
      for k, sp in spec_timings.items():
        cache_len = _round_up(width + config.max_new_tokens + k + 1, config.pad_to)
        target_step = fwd("target", batch_size, 1, cache_len, context_len)
        draft_step = fwd("draft", batch_size, 1, cache_len, context_len)
        verify = fwd("target", batch_size, k + 1, cache_len, context_len)
        c, v_k = draft_step / target_step, verify / target_step
        # Step costs with the sampling transform (an AR step pays one too).
        step_samp, verify_samp = samp(sampling, batch_size, 1), samp(sampling, batch_size, k + 1)
        c_s = (draft_step + step_samp) / (target_step + step_samp)
        v_s = (verify + verify_samp) / (target_step + step_samp)
        prefill = (fwd("target", batch_size, width, cache_len, 0)
                   + fwd("draft", batch_size, width, cache_len, 0))
        s = sp.stats
        tau = float(s["new_tokens"].sum() / max(s["target_calls"].sum(), 1))
        tau_iter = tokens_per_iteration(sp, sizes)
        speedup = ar.ms_per_token / sp.ms_per_token
        decode = _decode_ms_per_token(sp, calls, prefill)
        decode_speedup = ar_decode / decode
        e_tokens = expected_tokens(alpha, k)
        bound = speedup_bound(e_tokens, k, c, v_k)
        bound_sampled = speedup_bound(e_tokens, k, c_s, v_s)
        setting["speculative"].append({
            "K": k, "ms_per_token": sp.ms_per_token, "ms_per_token_runs": sp.ms_per_token_runs,
            "decode_ms_per_token": decode, "warmup_s": sp.warmup_s,
            "mean_new_tokens": sp.mean_new_tokens,
            "speedup": speedup, "decode_speedup": decode_speedup,
            "acceptance_rate": float(s["accepted"].sum() / max(s["drafted"].sum(), 1)),
            "acceptance_rate_iid": acceptance_rate_iid(alpha, k),
            "tokens_per_call": tau, "tokens_per_iteration": tau_iter,
            "alpha_implied_by_tau": alpha_from_tokens(tau, k), "expected_tokens": e_tokens,
            "target_step_ms": target_step, "draft_step_ms": draft_step, "verify_ms": verify,
            "c": c, "v_k": v_k, "bound": bound, "measured_over_bound": speedup / bound,
            "decode_over_bound": decode_speedup / bound,
            "c_sampled": c_s, "v_sampled": v_s, "bound_sampled": bound_sampled,
            "decode_over_bound_sampled": decode_speedup / bound_sampled,
            "bound_tau": speedup_bound(tau_iter, k, c, v_k),
            "profile": _profile(sp.wall_ms, calls, sum(sp.loop_iterations), prefill, {
                "draft_forward_ms": k * draft_step, "draft_sampling_ms": k * step_samp,
                "target_forward_ms": verify, "target_sampling_ms": verify_samp}),
            "matches_autoregressive": (sp.tokens == ar.tokens) if sampling.greedy else None,
            "recompiled": sp.recompiled})
      setting["best_k"] = best_k({r["K"]: r["speedup"] for r in setting["speculative"]})
      settings.append(setting)
  bar.close()
  return {"command": command, "started": started, "elapsed_s": time.perf_counter() - t_start,
          "machine": machine, "mesh": None if mesh is None else dict(mesh.shape),
          "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
          "config": config.to_dict(), "prompts": task_ids,
          "target": dataclasses.asdict(target.config), "draft": dataclasses.asdict(draft.config),
          "settings": settings}


# ---------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------

def format_markdown(results: dict) -> str:
  """The results as markdown: set-up, a summary, then per (batch, sampling) two tables."""
  m, cfg = results["machine"], results["config"]
  label = m["label"]
  lines = [
      "# Speculative vs autoregressive sampling: speed", "",
      f"Command: `{results['command']}`  ",
      f"Started {results['started']}, took {results['elapsed_s']:.0f} s.  ",
      f"Machine: {label}; {m['platform']}; devices {m['jax_devices']}; load average "
      f"{m['load_average_1_5_15']} at start, {results['load_average_at_end']} at end; niceness "
      f"{m['niceness']}.  ",
      *([f"Mesh: {results['mesh']}, rules target {cfg['target_rules']}, draft "
         f"{cfg['draft_rules']}.  "] if results.get("mesh") else []),
      f"Pair: target `{cfg['target_dir']}` ({results['target']['num_layers']} layers, d_model "
      f"{results['target']['d_model']}), draft `{cfg['draft_dir']}` "
      f"({results['draft']['num_layers']} layers, d_model {results['draft']['d_model']}). "
      f"{len(results['prompts'])} HumanEval prompts ({results['prompts'][0]}, ...), each cut to its "
      f"last {cfg['prompt_tokens']} tokens, {cfg['max_new_tokens']} new tokens per row, "
      f"{'stopping' if cfg['stop_at_eos'] else 'not stopping'} at eos; per K a warm-up, then "
      f"{cfg['repeats']} timed pass(es), one autoregressive pass after the first; each call's "
      "fastest wall is kept (AR: over all its passes).", "",
      "ms/token = wall / mean new tokens per row, prefill included; speedup = autoregressive "
      "ms/token / speculative ms/token at the same batch and sampling. decode = the same with "
      "the separately timed prefill taken out of both walls: the part the bound models. alpha = "
      "E[sum_x min(p, q)] measured on the autoregressive continuations. acc = accepted / drafted "
      "(the generate statistic; NOT alpha for K > 1). tau = tokens per target call; tau/it = "
      "mean new tokens per row / loop iterations (a batch waits for its slowest row). c = draft "
      "/ target 1-token forward, v_K = target (K+1)-token / 1-token forward (jitted loops, no "
      "dispatch). E = (1 - alpha^(K+1)) / (1 - alpha). bound = E / (K c + v_K) (PAPERS.md "
      "section 2). bound_s = the same with each step's sampling transform added to c and v_K.",
      "", "## Summary (best K per setting, by end-to-end speedup)", "",
      "| batch | sampling | AR ms/token | best K | speedup | decode speedup | bound | "
      "speedup / bound | decode / bound | bound_s | decode / bound_s | machine |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in results["settings"]:
    r = next(r for r in s["speculative"] if r["K"] == s["best_k"])
    lines.append(
        f"| {s['batch_size']} | {s['sampling']} | {s['autoregressive']['ms_per_token']:.2f} | "
        f"{r['K']} | {r['speedup']:.2f} | {r['decode_speedup']:.2f} | {r['bound']:.2f} | "
        f"{r['measured_over_bound']:.2f} | {r['decode_over_bound']:.2f} | "
        f"{r['bound_sampled']:.2f} | {r['decode_over_bound_sampled']:.2f} | {label} |")
  lines.append("")
  for s in results["settings"]:
    ar = s["autoregressive"]
    lines += [
        f"## Batch {s['batch_size']}, {s['sampling']} (temperature {s['temperature']}, top_p "
        f"{s['top_p']}, top_k {s['top_k']})", "",
        f"Autoregressive: {ar['ms_per_token']:.2f} ms/token ({ar['decode_ms_per_token']:.2f} "
        f"decode); target 1-token forward {ar['target_step_ms']:.3f} ms, sampling transform "
        f"{ar['sampling_ms']:.3f} ms. alpha = {s['alpha']:.3f}.", "",
        "| K | ms/token | speedup | decode speedup | alpha | acc | tau | tau/it | c | v_K | E | "
        "bound | speedup / bound | decode / bound | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["speculative"]:
      flag = "" if r["matches_autoregressive"] in (None, True) else " (tokens differ from AR)"
      lines.append(
          f"| {r['K']} | {r['ms_per_token']:.2f} | {r['speedup']:.2f}{flag} | "
          f"{r['decode_speedup']:.2f} | {s['alpha']:.3f} | {r['acceptance_rate']:.3f} | "
          f"{r['tokens_per_call']:.2f} | {r['tokens_per_iteration']:.2f} | {r['c']:.3f} | "
          f"{r['v_k']:.2f} | {r['expected_tokens']:.2f} | {r['bound']:.2f} | "
          f"{r['measured_over_bound']:.2f} | {r['decode_over_bound']:.2f} | {label} |")
    p = ar["profile"]
    lines += [
        "", "Where the time goes, ms per loop iteration (prefill is per call, outside the loop; "
        "other = measured iteration - the timed parts: rejection, commit, loop bookkeeping, "
        "and noise):", "",
        "| loop | iteration | draft fwd | draft sampling | target fwd | target sampling | other "
        "| prefill/call | c_s | v_s | bound_s | decode / bound_s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| AR | {p['iteration_ms']:.2f} | - | - | {p['target_forward_ms']:.2f} | "
        f"{p['target_sampling_ms']:.2f} | {p['other_ms']:.2f} | {p['prefill_ms_per_call']:.2f} | "
        "- | - | - | - |"]
    for r in s["speculative"]:
      p = r["profile"]
      lines.append(
          f"| K={r['K']} | {p['iteration_ms']:.2f} | {p['draft_forward_ms']:.2f} | "
          f"{p['draft_sampling_ms']:.2f} | {p['target_forward_ms']:.2f} | "
          f"{p['target_sampling_ms']:.2f} | {p['other_ms']:.2f} | {p['prefill_ms_per_call']:.2f} | "
          f"{r['c_sampled']:.3f} | {r['v_sampled']:.2f} | {r['bound_sampled']:.2f} | "
          f"{r['decode_over_bound_sampled']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def write_atomic(files: dict[str, str]) -> None:
  """Writes {path: text}: every text to a temporary sibling first, then renames each.

  A crash while writing leaves the old files untouched (and no temporaries);
  only the renames, which cannot leave a file half-written, come last.
  """
  tmps = {}
  try:
    for path, text in files.items():
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      tmps[path] = f"{path}.tmp-{os.getpid()}"
      with open(tmps[path], "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    for path, tmp in tmps.items():
      os.replace(tmp, path)
  finally:
    for tmp in tmps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def write_results(results: dict, output_dir: str) -> tuple[str, str]:
  """Writes <output_dir>/benchmark.json and benchmark.md atomically; returns their paths."""
  json_path = os.path.join(output_dir, "benchmark.json")
  md_path = os.path.join(output_dir, "benchmark.md")
  # Format both before touching the disk: a formatting error writes nothing.
  write_atomic({json_path: json.dumps(results, indent=1) + "\n",
                md_path: format_markdown(results) + "\n"})
  return json_path, md_path
