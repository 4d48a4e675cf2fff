"""Timing decode work after a warm-up on the same shapes, and the machine it ran on.

generate returns numpy arrays, so a call has waited for the device when it
returns. Forwards and the sampling transform are timed inside one jitted
`lax.fori_loop` of n steps, which leaves Python dispatch out (on a small CPU
model it costs as much as a whole draft step). On a shared machine load only
ever adds time, so every measurement keeps the minimum of its repeats.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import subprocess
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample import sharding as sh
from specsample.decoding import api
from specsample.decoding.sampling import Sampling, sample
from specsample.models import transformer as tr
from specsample.models.lm import LM


def timed_generate(target: LM, prompts: Sequence[Sequence[int]], **generate_kwargs: Any
                   ) -> tuple[api.GenerateOutput, float, bool]:
  """One generate call; if it compiled a loop, runs it again and times the rerun.

  Warm the setting first (`warm_up`) and no call compiles: this is the safety net.

  Returns:
    (output, seconds, whether the first call compiled).
  """
  traces = dict(api.TRACE_COUNT)
  start = time.perf_counter()
  out = api.generate(target, prompts, **generate_kwargs)  # numpy out: already synchronous
  wall = time.perf_counter() - start
  compiled = api.TRACE_COUNT != traces
  if compiled:  # same seed, same shapes: identical output, now without compilation
    start = time.perf_counter()
    out = api.generate(target, prompts, **generate_kwargs)
    wall = time.perf_counter() - start
  return out, wall, compiled


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


def warm_up(target: LM, batches: Sequence[Sequence[Sequence[int]]], **generate_kwargs: Any
            ) -> float:
  """`api.warm_up` once per distinct (batch, padded width) shape: the compiles, each loop
  body's first run and auto's cost measurement, without decoding. Returns seconds."""
  pad_to = generate_kwargs.get("pad_to", 16)
  shapes, start = set(), time.perf_counter()
  for batch in batches:
    shape = (len(batch), -(-max(len(p) for p in batch) // pad_to))
    if shape not in shapes:
      shapes.add(shape)
      api.warm_up(target, batch, **generate_kwargs)
  return time.perf_counter() - start


def timed_pass(target: LM, batches: Sequence[Sequence[Sequence[int]]], **generate_kwargs: Any
               ) -> Pass:
  """Times one `generate` call per batch (after `warm_up` on the same shapes)."""
  call_ms, tokens, outputs = [], 0.0, []
  for batch in batches:
    start = time.perf_counter()
    out = api.generate(target, batch, **generate_kwargs)  # numpy out: already synchronous
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


def tokens_per_iteration(timing: GenerateTiming, batch_sizes: Sequence[int]) -> float:
  """Mean new tokens per row / loop iterations, pooled over calls.

  At batch 1 this is tau. At batch B the loop runs until the SLOWEST row is
  done, so this batch-effective tau, not the per-row tau, sets the wall time.
  """
  new = np.split(timing.stats["new_tokens"], np.cumsum(batch_sizes)[:-1])
  return float(sum(np.mean(n) for n in new) / max(sum(timing.loop_iterations), 1))


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
  """`num_steps` times: probs over [B, X, V] and one draw (`sample`) per row."""

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


_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def code_version(repo: str = _REPO) -> str:
  """The commit of the checkout that ran ("-dirty" with uncommitted changes to tracked
  files), or "unknown" outside a git checkout. Speeds timed at two versions of the code
  are not one comparison: a stored record can outlive the code that timed it."""
  git = lambda *args: subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                                     timeout=30, check=True).stdout.strip()
  try:
    head = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return head + ("-dirty" if dirty else "")
