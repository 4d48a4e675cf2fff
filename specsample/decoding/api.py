"""`generate`: the one entry point for autoregressive and speculative sampling, sharded or not.

    from specsample.decoding import Sampling, generate
    out = generate(target, prompts, draft=draft, method="speculative", num_draft=4,
                   sampling=Sampling(temperature=0.8, top_p=0.95), max_new_tokens=128,
                   eos_id=tokenizer.eos_id, seed=0)               # mesh=..., rules=... to shard
    out.tokens[0], out.stats["tokens_per_call"][0]

Every setting (and on a mesh every divisibility) is checked before anything
compiles. Prompts are padded to a multiple of `pad_to` and the buffer length is
rounded the same way, so calls with new prompts of similar length reuse the
compiled loop (`make_loop`, cached).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

import jax
import numpy as np

from specsample import sharding as sh
from specsample.decoding import calibrate, common, coupling, drafts, kv_prediction
from specsample.decoding.lookup import PromptLookup
from specsample.decoding.loops import TRACE_COUNT, loop_shardings, make_auto_loop, make_loop
from specsample.decoding.sampling import Sampling
from specsample.models import feature_draft as fd
from specsample.models.lm import LM
from specsample.decoding.settings import (METHODS, Draft, as_draft, buffer_len, check_draft,
                                         check_seed, check_settings, pad_prompts, prepare)

__all__ = ["GenerateOutput", "METHODS", "TRACE_COUNT", "buffer_len", "check_draft", "check_seed",
           "check_settings", "generate", "loop_shardings", "make_auto_loop", "make_loop",
           "pad_prompts", "precompile", "prefill_only", "prepare", "warm_up"]


@dataclasses.dataclass
class GenerateOutput:
  """Generated token ids per row (prompt excluded) and per-row statistics.

  stats keys, each an int/float numpy array [B]: target_calls, drafted,
  accepted, new_tokens, tokens_per_call, acceptance_rate (accepted / drafted),
  draft_per_call (drafted / target_calls: K, or the mean K "auto" picked).
  """
  tokens: list[list[int]]
  stats: dict[str, np.ndarray]


def draft_inputs(target: LM, draft) -> tuple[Any, Any]:
  """(static draft config, draft params pytree) of a draft, as the loops take them."""
  if isinstance(draft, LM):
    return draft.config, draft.params
  if isinstance(draft, fd.FeatureDraft):
    return draft.config, {"params": draft.params,
                          "shared": fd.shared_from(target.config, target.params, draft.head_ids)}
  return draft, None


def make_output(prompt_len: np.ndarray, tokens, length, target_calls, drafted, accepted
                ) -> GenerateOutput:
  """GenerateOutput from a loop's final [B, L] tokens and [B] counters (device or host)."""
  tokens, length, target_calls, drafted, accepted = (
      np.asarray(x) for x in jax.device_get((tokens, length, target_calls, drafted, accepted)))
  rows = [tokens[b, prompt_len[b]:length[b]].tolist() for b in range(len(prompt_len))]
  new_tokens = length - prompt_len
  stats = {
      "target_calls": target_calls, "drafted": drafted, "accepted": accepted,
      "new_tokens": new_tokens,
      "tokens_per_call": new_tokens / np.maximum(target_calls, 1),
      "acceptance_rate": accepted / np.maximum(drafted, 1),
      "draft_per_call": drafted / np.maximum(target_calls, 1),
  }
  return GenerateOutput(tokens=rows, stats=stats)


def generate(target: LM, prompts: Sequence[Sequence[int]], *, draft: Draft | str | None = None,
             method: str = "speculative", num_draft: int | str | Sequence[int] = 4,
             sampling: Sampling = Sampling(), max_new_tokens: int = 64,
             eos_id: int | None = None, seed: int | Sequence[int] = 0, pad_to: int = 16, mesh=None,
             rules: sh.Rules | None = None, draft_rules: sh.Rules | None = None,
             iteration_costs: Sequence[float] | None = None, prefill: str = "full",
             kvp: kv_prediction.KVP | None = None,
             lookup: PromptLookup | None = None) -> GenerateOutput:
  """Samples continuations of token-id prompts.

  Args:
    target: the model whose distribution the output follows.
    prompts: B lists of token ids (lengths may differ, each >= 1).
    draft: required for method='speculative': a draft model (LM); a feature
      draft (models/feature_draft.load: a block on the target's features with
      a frequent-token head); or 'prompt_lookup' / PromptLookup(max_ngram,
      min_ngram): the tokens after the latest earlier match of the row's last
      n-gram (decoding/lookup.py). All three are lossless under every
      sampling option; the last two run on one device. Lookup alone with
      'auto' (or a set) picks K by auto's rule with each row's gain capped at
      the tokens its lookup copies (lookup.choose_index): never past the
      longest live match, and 0 (an autoregressive step) while a row with no
      match is the batch's bottleneck.
    method: 'autoregressive' or 'speculative'.
    num_draft: draft tokens per iteration (the paper's K), an int >= 1; or
      'auto': every iteration picks K in 0..8 (0 = an autoregressive step)
      maximising expected tokens per unit time (adaptive.choose); or a set
      of ints to pick from instead of 0..8.
    sampling: temperature / top-k / top-p, applied to both models.
    max_new_tokens: tokens generated per row at most.
    eos_id: a row stops after emitting this id (included in its output); None: rows
      stop at max_new_tokens only.
    seed: PRNG seed: an int, or with sampling.coupling='gumbel' one int in
      [0, 2**32) per prompt. Under 'gumbel' an int gives row b the key
      fold_in(key(seed), b), so only per-row seeds make a row's output
      independent of the rest of the batch (its size, order and content).
      The guarantee is exact for the sampling maths; the models themselves
      may round differently in the last bits when the padded prompt width,
      the buffer length (which grows with K) or the number of tokens per
      forward (K + 1 versus 1) changes, and a Gumbel-max whose top two scores
      are that close can then flip. tests/test_coupling.py asserts exact
      equality across K, batches, widths and a mesh, and sees no flip.
    pad_to: prompt and buffer lengths are rounded up to this multiple, so
      similar-length batches share one compilation.
    mesh: a jax.sharding.Mesh (sharding.make_mesh), possibly spanning hosts;
      None decodes on one device. Multi-host, every process calls this with
      the same prompts and gets the full output.
    rules: on a mesh, the logical-axis rules of the target's parameters, the
      batch and its KV cache (default sharding.TENSOR_PARALLEL). Parameters
      not yet laid out by them are placed first (sharding.shard_params).
    draft_rules: the draft's rules on the mesh; default: `rules`.
    iteration_costs: with "auto", the time of one iteration at each K of its
      set (any unit); None measures them on the first iterations of the first
      call per pair, shape and placement in this process (decoding/calibrate.py).
    prefill: 'full' (the target runs the prompt) or 'kv_prediction' (KV
      Prediction, decoding/kv_prediction.py; single device): the output then
      follows the target CONDITIONED ON THE PREDICTED PROMPT CACHE, and
      speculative decoding is lossless with respect to that, not to the
      target's exact distribution.
    kvp: the auxiliary model and predictor (kv_prediction.load_kvp), for
      prefill='kv_prediction'. With method='speculative' and draft=None (or
      draft=kvp.aux) the auxiliary is the draft and its prompt cache is reused;
      a feature draft gets the target's features of the prompt's last
      positions (kv_prediction.prefill). Prompt lookup reads only tokens: it
      works after either prefill.
    lookup: with a draft model or feature draft, combine it with prompt lookup
      (drafts.WithLookup): a row proposes the tokens its lookup copies and the
      draft's where it has none; it costs what the draft costs; any num_draft,
      one device.

  Returns:
    GenerateOutput with the new tokens of each row and per-row statistics.

  Raises:
    ValueError: a bad setting, or on a mesh a mesh/rules/shape mismatch naming
      the parameter or array and dimension, before anything compiles.
  """
  return _setup(target, prompts, draft, method, num_draft, sampling, max_new_tokens, eos_id, seed,
                pad_to, mesh, rules, draft_rules, iteration_costs, prefill, kvp, lookup).decode()


def warm_up(target: LM, prompts: Sequence[Sequence[int]], **kwargs: Any) -> None:
  """Pays, without decoding, what the first `generate` call of a setting and shape pays once.

  That is: the compile of its loop; the first run of each loop body (on
  XLA:CPU a body's first run is slower: 200-400 ms more for SmolLM2-135M at
  batch 1); and with num_draft="auto" and no iteration_costs, the measurement
  of its costs (decoding/calibrate.py, cached per pair, shape and placement).
  It prefills and runs a few iterations, whose tokens are dropped. A later
  `generate` with the same arguments and prompt shapes (batch, padded width)
  then runs at steady state; eval/speed/timing.py times such calls.

  Args:
    target, prompts, kwargs: as `generate` takes them (the same checks, the
      same ValueError before anything compiles).
  """
  _call(target, prompts, kwargs).warm()


def precompile(target: LM, prompts: Sequence[Sequence[int]], **kwargs: Any) -> None:
  """Compiles the loops of `generate(target, prompts, **kwargs)`, running nothing.

  XLA compiles without the GIL and mostly on one core, so several threads can
  precompile different settings at once (Table 1 compiles its loops two at a
  time: eval/table1/cells.py). Do not precompile one setting from two threads
  at once: each would build its own loop. warm_up still pays the rest (the
  bodies' first runs, auto's costs).

  Args:
    target, prompts, kwargs: as `generate` takes them (the same checks).
  """
  _call(target, prompts, kwargs).compile()


def prefill_only(target: LM, prompts: Sequence[Sequence[int]], **kwargs: Any) -> None:
  """Runs the prefill of `generate(target, prompts, **kwargs)` alone and waits for it.

  The same compiled program as generate's (its loop cut at zero iterations; for
  num_draft="auto" its init program): the prompts' caches and each row's first
  token, no decoding. Timed after a warm-up, it splits a call's wall time into
  prefill and decoding (Table 1's decode ms/token: eval/table1/cells.py).

  Args:
    target, prompts, kwargs: as `generate` takes them (the same checks).
  """
  _call(target, prompts, kwargs).prefill()


_GENERATE = inspect.signature(generate)  # (tests may replace api.generate: not read from it)


def _call(target: LM, prompts: Sequence[Sequence[int]], kwargs: dict) -> "_Call":
  """The _Call of `generate(target, prompts, **kwargs)`: its checks, nothing run."""
  bound = _GENERATE.bind(target, prompts, **kwargs)
  bound.apply_defaults()
  return _setup(**bound.arguments)


@dataclasses.dataclass(frozen=True)
class _Call:
  """One generate call, checked and placed, nothing run: `decode` or `warm` it."""
  spec: common.DecodeSpec
  prompt_len: np.ndarray
  args: tuple              # the loops' (target params, draft params, prompts, lengths, key data,
                           # sampling values)
  extra: tuple             # the kvp parameters, with prefill='kv_prediction'
  put: Callable[[Any], Any]  # host value -> the loops' placement
  build: tuple             # make_loop / make_auto_loop's arguments after the method
  cost: np.ndarray | None  # iteration_costs of "auto"; None measures them
  calibration_key: tuple   # calibrate.measure's cache key

  def _fixed_loop(self, max_iterations: int, lower: bool = False):
    loop = make_loop(*self.build[:-1], **self.build[-1])
    flags = (np.ones(1, np.float32), np.int32(-1), np.int32(max_iterations))
    return (loop.lower if lower else loop)(*self.args, *map(self.put, flags), *self.extra)

  def compile(self) -> None:
    if not self.spec.draft_choices:
      self._fixed_loop(1, lower=True).compile()
      return
    init, advance = self._auto_programs()
    shardings = init.lower(*self.args, *self.extra).compile().output_shardings
    # The state as advance will get it, else advance compiles again: placed where init
    # leaves it, committed there only if one of init's inputs was (jax's rule for outputs).
    committed = any(getattr(x, "committed", False)
                    for x in jax.tree.leaves((self.args, self.extra)))
    state = jax.tree.map(
        lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                              sharding=where if committed else None),
        jax.eval_shape(init, *self.args, *self.extra), shardings)
    flags = (np.ones(len(self.spec.draft_choices), np.float32), np.int32(-1), np.int32(1))
    advance.lower(*self.args[:2], state, self.args[3], self.args[5],
                  *map(self.put, flags)).compile()

  def prefill(self) -> None:
    if not self.spec.draft_choices:
      jax.block_until_ready(self._fixed_loop(0))
      return
    init, _ = self._auto_programs()
    jax.block_until_ready(init(*self.args, *self.extra))

  def _auto_programs(self):
    """num_draft="auto"'s (init, advance) for this call (loops.make_auto_loop, cached)."""
    return make_auto_loop(*self.build[1:-1], **self.build[-1])

  def _auto_loop(self):
    """(the state after the prefill, run(state, cost, index, trips) -> (state, iterations))."""
    init, advance = self._auto_programs()
    params, lengths, values = self.args[:2], self.args[3], self.args[5]

    def run(state, cost, index, trips):
      state, ran = advance(*params, state, lengths, values, self.put(cost),
                           self.put(np.int32(index)), self.put(np.int32(trips)))
      return state, int(np.asarray(ran))
    return init(*self.args, *self.extra), run

  def _calibrated(self, state, run):
    """(state, costs): the given costs, or measured on this call's first iterations."""
    if self.cost is not None:
      return state, self.cost
    ones = np.ones(len(self.spec.draft_choices), np.float32)
    state, _ = run(state, ones, 0, 0)  # compiles (not timed); runs nothing
    state, cost = calibrate.measure(self.calibration_key,
                                    lambda state, index, trips: run(state, ones, index, trips),
                                    state, self.spec.draft_choices)
    return state, ones if cost is None else cost  # None: the call ended while calibrating

  def decode(self) -> GenerateOutput:
    if not self.spec.draft_choices:
      return make_output(self.prompt_len, *self._fixed_loop(2**31 - 1)[:5])
    # num_draft="auto": prefill, then iterations from the state, the first ones
    # timing each K when its costs are not known yet (decoding/calibrate.py).
    state, run = self._auto_loop()
    state, cost = self._calibrated(state, run)
    state, _ = run(state, cost, -1, 2**31 - 1)
    # Results are replicated on a mesh: every process can read them; caches are dropped.
    return make_output(self.prompt_len, state.tokens, state.length, state.target_calls,
                       state.drafted, state.accepted)

  def warm(self) -> None:
    if not self.spec.draft_choices:
      jax.block_until_ready(self._fixed_loop(1))  # compile, prefill, one iteration
      return
    state, run = self._auto_loop()
    if self.cost is None:
      # Timed on a fresh decode, as a first call's. A short decode can end before every
      # anchor K was timed; calibrate keeps those it timed, and each further decode times
      # more.
      for attempt, _ in enumerate(calibrate.anchors(self.spec.draft_choices)):
        if attempt:
          state, _ = self._auto_loop()
        state, _ = self._calibrated(state, run)
        if calibrate.is_measured(self.calibration_key):
          break
    ones = np.ones(len(self.spec.draft_choices), np.float32)
    # Each body once, forced, on what is left of that decode (a fresh one once it ends);
    # the last index is auto's draft-free body (ar_only), or for lookup (no such body)
    # the last K again: lax.switch clamps the index.
    for index in range(len(self.spec.draft_choices) + 1):
      state, ran = run(state, ones, index, 1)
      if ran == 0:
        state, _ = self._auto_loop()
        state, _ = run(state, ones, index, 1)


def _setup(target: LM, prompts: Sequence[Sequence[int]], draft, method: str, num_draft,
           sampling: Sampling, max_new_tokens: int, eos_id: int | None, seed, pad_to: int, mesh,
           rules, draft_rules, iteration_costs, prefill: str, kvp, lookup) -> _Call:
  """Every check of `generate` (raises before anything compiles), then its _Call."""
  draft = as_draft(draft)
  if lookup is not None:
    if method != "speculative" or not isinstance(draft, (LM, fd.FeatureDraft)):
      raise ValueError("lookup= combines prompt lookup with a draft model or feature draft: pass "
                       "method='speculative' and draft=LM(...) or a FeatureDraft (for lookup "
                       "alone, draft='prompt_lookup')")
    lookup.validate()
  if method == "speculative" and (lookup is not None or (draft is not None and not isinstance(draft, LM))):
    if mesh is not None:
      raise ValueError("lookup and feature drafts run on one device: pass mesh=None")
  kvp_spec = kv_prediction.check(target, draft, method, prefill, kvp)
  if kvp_spec is not None:
    if mesh is not None:
      raise ValueError("prefill='kv_prediction' runs on one device: pass mesh=None")
    if kvp_spec.aux_is_draft:
      draft = kvp.aux
  prompts_BP, prompt_len, spec = prepare(target, draft, prompts, method, num_draft, sampling,
                                         max_new_tokens, eos_id, pad_to, seed)
  calibrate.check_costs(iteration_costs, spec.draft_choices)
  if kvp_spec is not None and spec.buffer_len > kvp.aux.config.max_seq_len:
    raise ValueError(f"the prompts need a kvp auxiliary cache of {spec.buffer_len} positions, "
                     f"above its max_seq_len={kvp.aux.config.max_seq_len}")
  speculative_ = method == "speculative"
  draft_cfg, draft_params = draft_inputs(target, draft) if speculative_ else (None, None)
  if lookup is not None:
    draft_cfg = drafts.WithLookup(draft_cfg, lookup)
  if sampling.coupling == "gumbel":
    key_data = coupling.row_key_data(seed, len(prompt_len))       # [B, 2]
  else:
    key_data = np.asarray(jax.random.key_data(jax.random.key(seed)))
  B, P = prompts_BP.shape
  placement, extra = (), ()
  if mesh is None:
    args = (target.params, draft_params, prompts_BP, prompt_len, key_data,
            spec.sampling.values())
    put = lambda x: x
    if kvp_spec is not None:
      extra = ({"aux": kvp.aux.params, "predictor": kvp.params},)
  else:
    rules = sh.canonical_rules(sh.TENSOR_PARALLEL if rules is None else rules)
    draft_rules = rules if draft_rules is None else sh.canonical_rules(draft_rules)
    # Validates every sharding (raises before any compilation).
    s = loop_shardings(target.config, draft_cfg, mesh, rules, draft_rules, B, P, spec.buffer_len)
    placement = (mesh, rules, draft_rules if speculative_ else None, B, P)
    if speculative_:
      draft_params = sh.shard_params(draft.params, draft.config, mesh, draft_rules)
    put = lambda x: sh.put_global(x, s["replicated"])
    args = (sh.shard_params(target.params, target.config, mesh, rules), draft_params,
            sh.put_global(prompts_BP, s["prompts"]), sh.put_global(prompt_len, s["prompt_len"]),
            put(key_data), put(spec.sampling.values()))
  cost = None if iteration_costs is None else np.asarray(iteration_costs, np.float32)
  # (kvp only when set: the loops are lru-cached by their exact arguments.)
  with_kvp = {} if kvp_spec is None else {"kvp": kvp_spec}
  return _Call(spec=spec, prompt_len=prompt_len, args=args, extra=extra, put=put,
               build=(method, target.config, draft_cfg, spec, *placement, with_kvp), cost=cost,
               calibration_key=(target.config, draft_cfg, spec.compile_key(), B, P, placement,
                                kvp_spec, jax.devices()[0].device_kind))
