"""The jitted decode loops `generate` runs, one per setting and shape (cached), sharded or not.

`make_loop` decodes from the prompts in one call. `make_auto_loop` is the
speculative loop in two programs, `init` (prefill) and `advance` (iterations
from a state, cut after a number of them), so that num_draft="auto" can time
its first iterations and then carry on from where they stopped
(decoding/calibrate.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from specsample import sharding as sh
from specsample.decoding import autoregressive, common, kv_prediction, speculative
from specsample.models import transformer as tr

# Number of times a decode loop was traced (= compiled) in this process. Tests
# use it to check that new prompts of the same shape do not recompile.
TRACE_COUNT = {"autoregressive": 0, "speculative": 0}


def loop_shardings(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig | None,
                   mesh, target_rules: sh.Rules, draft_rules: sh.Rules | None, batch: int,
                   prompt_width: int, buffer_len: int) -> dict[str, Any]:
  """Every sharding of one compiled loop on a mesh, validated (ValueError before compiling).

  Returns:
    dict with target_params, draft_params (None for autoregressive), prompts,
    prompt_len, target_cache, draft_cache (KVCache of NamedShardings or None)
    and replicated.
  """
  out = {
      "target_params": sh.param_shardings(target_cfg, mesh, target_rules),
      "prompts": sh.batch_sharding(mesh, target_rules, (batch, prompt_width), what="prompts [B, P]"),
      "prompt_len": sh.batch_sharding(mesh, target_rules, (batch,), what="prompt lengths [B]"),
      "target_cache": sh.cache_shardings(target_cfg, mesh, target_rules, batch, buffer_len),
      "draft_params": None, "draft_cache": None, "replicated": sh.replicated(mesh),
  }
  if draft_cfg is not None:
    out["draft_params"] = sh.param_shardings(draft_cfg, mesh, draft_rules)
    out["draft_cache"] = sh.cache_shardings(draft_cfg, mesh, draft_rules, batch, buffer_len)
  return out


def _keys(spec: common.DecodeSpec, key_data):
  """(loop key, per-row keys or None) from key_data ([2], or [B, 2] under gumbel)."""
  key = jax.random.wrap_key_data(key_data)
  if spec.sampling.coupling == "gumbel":  # noise by (row key, position): no loop key
    return jax.random.key(0), key
  return key, None


def _prompt_caches(spec: common.DecodeSpec, kvp, kvp_params, target_params, prompts_BP,
                   prompt_len_B):
  """(target cache, draft cache, target features for a feature draft) from KV Prediction,
  or (None, None, None): a full prefill."""
  if kvp is None:
    return None, None, None
  target_cache, aux_cache, hidden_BPD = kv_prediction.prefill(
      kvp, target_params, kvp_params["aux"], kvp_params["predictor"], prompts_BP, prompt_len_B,
      spec.buffer_len)
  return target_cache, aux_cache if kvp.aux_is_draft else None, hidden_BPD


def make_loop(method: str, target_cfg: tr.TransformerConfig,
              draft_cfg: tr.TransformerConfig | None, spec: common.DecodeSpec, mesh=None,
              target_rules: sh.Rules | None = None, draft_rules: sh.Rules | None = None,
              batch: int = 0, prompt_width: int = 0, parts=speculative.Parts,
              kvp: kv_prediction.KVPSpec | None = None):
  """The jitted decode loop of one setting; cached, so a setting compiles once per shape.

  Settings that differ only in temperature or top-p share it: the loop is built
  for spec.compile_key() and takes their values, spec.sampling.values(), as an
  input.

  With `kvp` (single device only), the prompt caches come from KV Prediction
  and the function takes a ninth argument, {'aux': params, 'predictor': params}.

  Returns:
    fn(target_params, draft_params, prompts [B, P], prompt_len [B], key_data [2],
    sampling_values [2], cost [C], force_index [], max_iterations []) -> (tokens [B, L], length [B],
    target_calls [B], drafted [B], accepted [B]), plus the final caches as a
    sixth element on a mesh. key_data is jax.random.key_data of the PRNG key:
    [2], or [B, 2] one key per row under coupling='gumbel' (coupling.row_key_data).
    cost, force_index and max_iterations are speculative.run_loop's (pass
    any array, -1 and 2**31 - 1 to decode). draft_params is ignored (pass
    None) for method='autoregressive', and so are cost and force_index.
    `parts` (speculative only) builds each body's calls (speculative.Parts).

    Without a mesh, shapes come from the arguments (batch and prompt_width
    are unused). On a mesh the parameters are laid out by each model's rules,
    prompts split over the 'batch' rule's axes, results replicated (every
    process of a multi-host run can read them) and the caches returned with
    shardings from the rules: that pins the while-loop carry of each cache to
    [B over batch axes, S, K over tensor, H] instead of leaving it to propagation.
  """
  return _loop(method, target_cfg, draft_cfg, spec.compile_key(), mesh, target_rules,
               draft_rules, batch, prompt_width, parts, kvp)


def clear_cache() -> None:
  """Drops every built loop (their next call traces and compiles again)."""
  _loop.cache_clear()
  _auto_loop.cache_clear()


@functools.lru_cache(maxsize=128)
def _loop(method, target_cfg, draft_cfg, spec, mesh, target_rules, draft_rules, batch,
          prompt_width, parts, kvp):
  def run(target_params, draft_params, prompts_BP, prompt_len_B, key_data, sampling_values,
          cost_C, force_index, max_iterations, kvp_params=None):
    TRACE_COUNT[method] += 1
    spec_ = spec.with_sampling_values(sampling_values)
    key, row_keys = _keys(spec, key_data)
    target_cache, draft_cache, hidden_BPD = _prompt_caches(spec, kvp, kvp_params, target_params,
                                                           prompts_BP, prompt_len_B)
    if method == "speculative":
      s = speculative.speculative_loop(
          target_cfg, draft_cfg, spec_, target_params, draft_params, prompts_BP, prompt_len_B,
          key, cost_C, force_index, max_iterations, parts, target_cache, draft_cache, row_keys,
          hidden_BPD)
      return (s.tokens, s.length, s.target_calls, s.drafted, s.accepted,
              (s.target_cache, s.draft_state))
    s = autoregressive.autoregressive_loop(target_cfg, spec_, target_params, prompts_BP,
                                           prompt_len_B, key, target_cache, row_keys,
                                           max_iterations)
    zeros = jnp.zeros_like(s.target_calls)
    return s.tokens, s.length, s.target_calls, zeros, zeros, (s.cache,)

  def decode(*args):  # without the caches
    return run(*args)[:5]

  if mesh is None:
    return jax.jit(decode)
  speculative_ = method == "speculative"
  s = loop_shardings(target_cfg, draft_cfg if speculative_ else None, mesh, target_rules,
                     draft_rules, batch, prompt_width, spec.buffer_len)
  rep = s["replicated"]
  caches = (s["target_cache"], s["draft_cache"]) if speculative_ else (s["target_cache"],)
  return jax.jit(run,
                 in_shardings=(s["target_params"], s["draft_params"], s["prompts"],
                               s["prompt_len"]) + (rep,) * 5,
                 out_shardings=(rep,) * 5 + (caches,))


def state_shardings(s: dict[str, Any], gumbel: bool) -> speculative.SpecState:
  """The SpecState of NamedShardings on a mesh (`s`: loop_shardings): caches by their
  rules, everything else replicated (small; every process can read the tokens)."""
  rep = s["replicated"]
  return speculative.SpecState(
      tokens=rep, length=rep, done=rep, target_cache=s["target_cache"],
      draft_state=s["draft_cache"], key=rep, target_calls=rep, drafted=rep, accepted=rep,
      accept_ema=rep, trials_ema=rep, row_keys=rep if gumbel else None, zero_streak=rep,
      ar_only=rep)


def make_auto_loop(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig,
                   spec: common.DecodeSpec, mesh=None, target_rules: sh.Rules | None = None,
                   draft_rules: sh.Rules | None = None, batch: int = 0, prompt_width: int = 0,
                   kvp: kv_prediction.KVPSpec | None = None):
  """The speculative loop as (init, advance), cached per setting and shape (and, as
  make_loop's, shared by settings that differ only in temperature or top-p).

  Returns:
    init(target_params, draft_params, prompts [B, P], prompt_len [B], key_data,
    sampling_values [2] [, kvp_params]) -> SpecState after the prefill, and
    advance(target_params, draft_params, state, prompt_len [B], sampling_values [2],
    cost [C], force_index [], max_iterations []) -> (SpecState, iterations run []):
    the arguments of make_loop, with the state donated. On a mesh, layouts as
    make_loop's (state_shardings).
  """
  return _auto_loop(target_cfg, draft_cfg, spec.compile_key(), mesh, target_rules, draft_rules,
                    batch, prompt_width, kvp)


@functools.lru_cache(maxsize=128)
def _auto_loop(target_cfg, draft_cfg, spec, mesh, target_rules, draft_rules, batch, prompt_width,
               kvp):
  def init(target_params, draft_params, prompts_BP, prompt_len_B, key_data, sampling_values,
           kvp_params=None):
    key, row_keys = _keys(spec, key_data)
    target_cache, draft_cache, hidden_BPD = _prompt_caches(spec, kvp, kvp_params, target_params,
                                                           prompts_BP, prompt_len_B)
    return speculative.init_state(target_cfg, draft_cfg, spec.with_sampling_values(sampling_values),
                                  target_params, draft_params, prompts_BP, prompt_len_B, key,
                                  target_cache, draft_cache, row_keys, hidden_BPD)

  def advance(target_params, draft_params, state, prompt_len_B, sampling_values, cost_C,
              force_index, max_iterations):
    TRACE_COUNT["speculative"] += 1
    return speculative.run_loop(target_cfg, draft_cfg, spec.with_sampling_values(sampling_values),
                                target_params, draft_params, state, prompt_len_B, cost_C,
                                force_index, max_iterations)

  if mesh is None:
    return jax.jit(init), jax.jit(advance, donate_argnums=2)
  s = loop_shardings(target_cfg, draft_cfg, mesh, target_rules, draft_rules, batch, prompt_width,
                     spec.buffer_len)
  rep, state = s["replicated"], state_shardings(s, spec.sampling.coupling == "gumbel")
  params = (s["target_params"], s["draft_params"])
  init_jit = jax.jit(init, in_shardings=params + (s["prompts"], s["prompt_len"], rep, rep),
                     out_shardings=state)
  advance_jit = jax.jit(advance, in_shardings=params + (state, s["prompt_len"]) + (rep,) * 4,
                        out_shardings=(state, rep), donate_argnums=2)
  return init_jit, advance_jit
