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
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample import sharding as sh
from specsample.decoding import calibrate, common, coupling, drafts, kv_prediction
from specsample.decoding.lookup import PromptLookup
from specsample.decoding.loops import TRACE_COUNT, loop_shardings, make_auto_loop, make_loop
from specsample.decoding.sampling import Sampling
from specsample.models import feature_draft as fd
from specsample.models import transformer as tr
from specsample.models.lm import LM
from specsample.utils import is_int, is_positive_int, round_up

METHODS = ("autoregressive", "speculative")
__all__ = ["GenerateOutput", "TRACE_COUNT", "generate", "loop_shardings", "make_auto_loop",
           "make_loop", "prepare"]


@dataclasses.dataclass
class GenerateOutput:
  """Generated token ids per row (prompt excluded) and per-row statistics.

  stats keys, each an int/float numpy array [B]: target_calls, drafted,
  accepted, new_tokens, tokens_per_call, acceptance_rate (accepted / drafted),
  draft_per_call (drafted / target_calls: K, or the mean K "auto" picked).
  """
  tokens: list[list[int]]
  stats: dict[str, np.ndarray]


def _is_seed(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 <= x < coupling.SEED_LIMIT


def check_seed(seed, sampling: Sampling, num_rows: int) -> None:
  """An int, or under coupling='gumbel' one int per row; ValueError naming `seed` otherwise."""
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    if sampling.coupling == "gumbel" and not _is_seed(seed):
      raise ValueError(f"seed must be in [0, 2**32) with sampling.coupling='gumbel', got {seed}")
    return
  if not isinstance(seed, (list, tuple, np.ndarray)):
    raise ValueError(f"seed must be an int or (with sampling.coupling='gumbel') a sequence of one "
                     f"int per prompt, got {type(seed).__name__}")
  if sampling.coupling != "gumbel":
    raise ValueError(f"seed: one seed per row needs sampling.coupling='gumbel' (got "
                     f"coupling={sampling.coupling!r}, which draws a whole batch from one key)")
  if len(seed) != num_rows:
    raise ValueError(f"seed: {len(seed)} per-row seeds for {num_rows} prompts; give one per prompt")
  for i, s in enumerate(seed):
    if not _is_seed(s):
      raise ValueError(f"seed[{i}] must be an int in [0, 2**32), got {s!r}")


Draft = LM | fd.FeatureDraft | PromptLookup


def as_draft(draft):
  """'prompt_lookup' is PromptLookup(); anything else is returned as it is."""
  return PromptLookup() if isinstance(draft, str) and draft == "prompt_lookup" else draft


def check_draft(target: LM, draft, num_draft) -> None:
  """ValueError naming the setting for a draft that cannot run with these settings."""
  if isinstance(draft, str):
    raise ValueError(f"draft must be an LM, a FeatureDraft, a PromptLookup or 'prompt_lookup', "
                     f"got {draft!r}")
  if not isinstance(draft, (LM, fd.FeatureDraft, PromptLookup)):
    raise ValueError(f"draft must be an LM, a FeatureDraft (models/feature_draft.py) or a "
                     f"PromptLookup, got {type(draft).__name__}")
  if isinstance(draft, PromptLookup):
    draft.validate()
  if isinstance(draft, PromptLookup) and is_int(num_draft) and not is_positive_int(num_draft):
    raise ValueError(f"num_draft must be an int >= 1, 'auto' or a set with draft='prompt_lookup' "
                     f"(K = 0 alone drafts nothing), got {num_draft!r}")
  if isinstance(draft, fd.FeatureDraft):
    draft.config.validate(target.config)
  vocab = draft.config.vocab_size if isinstance(draft, LM) else (
      draft.config.block.vocab_size if isinstance(draft, fd.FeatureDraft) else target.config.vocab_size)
  if vocab != target.config.vocab_size:
    raise ValueError(f"draft and target vocabularies differ: draft vocab_size={vocab}, target "
                     f"vocab_size={target.config.vocab_size}")
  draft_tok = getattr(draft, "tokenizer_id", None)
  if draft_tok and target.tokenizer_id and draft_tok != target.tokenizer_id:
    raise ValueError(f"draft and target tokenizers differ: {draft_tok!r} vs {target.tokenizer_id!r}")


def draft_inputs(target: LM, draft) -> tuple[Any, Any]:
  """(static draft config, draft params pytree) of a draft, as the loops take them."""
  if isinstance(draft, LM):
    return draft.config, draft.params
  if isinstance(draft, fd.FeatureDraft):
    return draft.config, {"params": draft.params,
                          "shared": fd.shared_from(target.config, target.params, draft.head_ids)}
  return draft, None


def check_settings(target: LM, draft: Draft | None, method: str, num_draft,
                   sampling: Sampling, max_new_tokens: int, eos_id: int | None,
                   seed: int | Sequence[int] = 0, num_rows: int = 1) -> None:
  """Raises ValueError naming the offending setting. Cheap; no compilation."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  sampling.validate()
  check_seed(seed, sampling, num_rows)
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  if eos_id is not None and not 0 <= eos_id < target.config.vocab_size:
    raise ValueError(f"eos_id must be in [0, {target.config.vocab_size}), got {eos_id}")
  if method == "speculative":
    if draft is None:
      raise ValueError("method='speculative' needs a draft: a draft model (draft=LM(...)), a "
                       "feature draft or draft='prompt_lookup'")
    check_draft(target, draft, num_draft)
    calibrate.draft_choices(num_draft)


def pad_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, pad_to: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads prompts to a multiple of `pad_to`. Returns ([B, P] ids, [B] lengths)."""
  if len(prompts) == 0:
    raise ValueError("prompts is empty: pass at least one prompt")
  lengths = np.array([len(p) for p in prompts], np.int32)
  if (lengths == 0).any():
    raise ValueError(f"prompt {int(np.argmin(lengths))} is empty: every prompt needs >= 1 token "
                     "(e.g. the tokenizer's bos id)")
  width = round_up(int(lengths.max()), pad_to)
  out = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    p = np.asarray(p)
    if p.min() < 0 or p.max() >= vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size})")
    out[i, :len(p)] = p
  return out, lengths


def buffer_len(prompt_width: int, max_new_tokens: int, num_draft: int, method: str,
               pad_to: int) -> int:
  """Token-buffer / KV-cache length of a decode loop: the padded prompt, the
  new tokens and one block of overshoot, rounded up to `pad_to`."""
  slack = (num_draft + 1) if method == "speculative" else 1
  return round_up(prompt_width + max_new_tokens + slack, pad_to)


def prepare(target: LM, draft: LM | None, prompts: Sequence[Sequence[int]], method: str,
            num_draft, sampling: Sampling, max_new_tokens: int, eos_id: int | None,
            pad_to: int, seed: int | Sequence[int] = 0
            ) -> tuple[np.ndarray, np.ndarray, common.DecodeSpec]:
  """Checks every setting and pads the prompts, before anything compiles.

  Returns:
    ([B, P] padded prompts, [B] prompt lengths, the loop's DecodeSpec).
  """
  check_settings(target, draft, method, num_draft, sampling, max_new_tokens, eos_id, seed,
                 len(prompts))
  prompts_BP, prompt_len = pad_prompts(prompts, target.config.vocab_size, pad_to)
  speculative_ = method == "speculative"
  largest_k = calibrate.max_draft(num_draft) if speculative_ else 0
  length = buffer_len(prompts_BP.shape[1], max_new_tokens, largest_k, method, pad_to)
  models = [target.config] + ([draft.config] if isinstance(draft, LM) and speculative_ else [])
  if isinstance(draft, fd.FeatureDraft) and speculative_:
    models.append(draft.config.block)
    if prompt_len.min() < 2:
      raise ValueError(f"prompt {int(np.argmin(prompt_len))} has 1 token: a feature draft reads "
                       "the target's feature before the last prompt token, so prompts need >= 2")
  for name, m in zip(("target", "draft"), models):
    if length > m.max_seq_len:
      raise ValueError(
          f"prompt length {int(prompt_len.max())} + max_new_tokens {max_new_tokens} needs a "
          f"{name} cache of {length} positions, above its max_seq_len={m.max_seq_len}; "
          "lower max_new_tokens or shorten the prompts")
  spec = common.DecodeSpec(sampling=sampling, max_new_tokens=max_new_tokens,
                           eos_id=None if eos_id is None else int(eos_id),
                           num_draft=largest_k, buffer_len=length,
                           draft_choices=calibrate.draft_choices(num_draft) if speculative_ else ())
  return prompts_BP, prompt_len, spec


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
    args = (target.params, draft_params, prompts_BP, prompt_len, key_data)
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
            put(key_data))
  cost = None if iteration_costs is None else np.asarray(iteration_costs, np.float32)
  # (kvp only when set: the loops are lru-cached by their exact arguments.)
  with_kvp = {} if kvp_spec is None else {"kvp": kvp_spec}
  if not spec.draft_choices:
    loop = make_loop(method, target.config, draft_cfg, spec, *placement, **with_kvp)
    never = (np.ones(1, np.float32), np.int32(-1), np.int32(2**31 - 1))
    return make_output(prompt_len, *loop(*args, *map(put, never), *extra)[:5])
  # num_draft="auto": prefill, then iterations from the state, the first ones
  # timing each K when its costs are not known yet (decoding/calibrate.py).
  init, advance = make_auto_loop(target.config, draft_cfg, spec, *placement, **with_kvp)
  state = init(*args, *extra)
  params, lengths = args[:2], args[3]
  run = lambda state, cost, index, trips: advance(
      *params, state, lengths, put(cost), put(np.int32(index)), put(np.int32(trips)))
  ones = np.ones(len(spec.draft_choices), np.float32)
  if cost is None:
    state, _ = run(state, ones, 0, 0)  # compiles (not timed); runs nothing
    key = (target.config, draft_cfg, spec, B, P, placement, kvp_spec,
           jax.devices()[0].device_kind)

    def forced(state, index, trips):
      state, ran = run(state, ones, index, trips)
      return state, int(np.asarray(ran))

    state, cost = calibrate.measure(key, forced, state, spec.draft_choices)
    if cost is None:  # the call ended while calibrating
      cost = ones
  state, _ = run(state, cost, -1, 2**31 - 1)
  # Results are replicated on a mesh: every process can read them; caches are dropped.
  return make_output(prompt_len, state.tokens, state.length, state.target_calls, state.drafted,
                     state.accepted)
