"""Speculative sampling (Chen et al. 2023) as one jitted `lax.while_loop`.

Each iteration, for every row at once, with G = the iteration's K:

  1. draft G tokens x_1..x_G autoregressively from the draft model, keeping
     the draft distributions p_1..p_G;
  2. score [current, x_1..x_G] with ONE target pass at the row's own offset,
     giving q_1..q_{G+1};
  3. rejection-sample (decoding/rejection.py): accept a prefix of a tokens and
     emit one more, so 1..G+1 tokens per target call;
  4. commit them (cut at eos / max_new_tokens) and roll the caches back to the
     committed length by setting their `lengths`.

G is fixed (`spec.num_draft`), or chosen every iteration ("auto",
`spec.draft_choices`): a `lax.switch` over one body per K in the set, each
with static shapes, picks the K that maximises expected tokens per unit of
time, E(alpha, K) / cost_K, for the batch's bottleneck row (adaptive.choose), where
cost_K is the measured time of one iteration at K (decoding/calibrate.py) and
alpha_b an exponentially discounted estimate of row b's acceptance rate. K = 0 is a plain
autoregressive step (which also keeps the draft cache in step, and observes
the acceptance rate for free). After AR_AFTER consecutive K = 0 choices auto
gives up on the draft for the rest of the call (`ar_only`): draft-free target
steps, which cost what the autoregressive loop's steps cost. Every body is
lossless given the tokens so far, and the choice depends only on those, so
the output is distributed as the target's whatever K is picked. Lookup alone
asks the same rule with each row's gain capped by its match (lookup.choose_index;
K = 0 a target step that observes the copies' acceptance for free).

Shapes never change inside the loop, so it compiles once per
(batch, prompt, buffer) shape and DecodeSpec.

Proposals come from a draft model, a feature draft reading the target's
features, or prompt lookup (decoding/drafts.py: what each keeps between
iterations and how it rolls back); the rest of the iteration is the same.

The loop can stop after `max_iterations` and resume from the state it
returns (`run_loop`): "auto" measures cost_K on the first iterations of a
real call, with K forced (`force_index`; decoding/calibrate.py). Each body's
model and sampling calls come from `Parts`, under named scopes that a
profiler trace is charged by; a benchmark may substitute them (`parts`).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from specsample.decoding import common, coupling, drafts, lookup
from specsample.decoding.adaptive import ALPHA_DECAY, ALPHA_PRIOR, choose
from specsample.decoding.rejection import rejection_sample
from specsample.decoding.sampling import sample
from specsample.models import transformer as tr

# The named scopes of an iteration's parts: eval/speed/trace.py charges profiled time by them.
SCOPES = ("draft_forward", "target_forward", "transform", "rejection", "commit")
# After this many consecutive iterations at K = 0, auto stops running the
# draft: the rest of the call is plain autoregressive steps (`make_target_step`).
AR_AFTER = 4


@flax.struct.dataclass(kw_only=True)
class SpecState:
  tokens: jax.Array          # [B, L] prompt + generated
  length: jax.Array          # [B] committed tokens
  done: jax.Array            # [B] bool
  target_cache: tr.KVCache   # length - 1 valid positions
  draft_state: Any           # the draft's (drafts.py): KVCache, FeatureDraftState or None
  key: jax.Array
  target_calls: jax.Array    # [B] target passes while the row was active
  drafted: jax.Array         # [B] draft tokens proposed
  accepted: jax.Array        # [B] draft tokens accepted
  accept_ema: jax.Array      # [B] f32 discounted accepted draft tokens (auto K)
  trials_ema: jax.Array      # [B] f32 discounted acceptance trials (auto K)
  row_keys: jax.Array | None # [B] per-row keys of coupling='gumbel'; None otherwise
  zero_streak: jax.Array     # [] consecutive iterations auto chose K = 0
  ar_only: jax.Array         # [] bool: auto gave up on the draft for this call


class Parts:
  """The model and sampling calls of one iteration, each under its named scope (SCOPES).

  The loop builds one per body from `parts(target_cfg, draft_cfg, spec,
  target_params, draft_params)`; a benchmark may pass a subclass (hashable,
  e.g. the class itself) to swap a part out (eval/speed/ablation.py).
  """

  def __init__(self, target_cfg, draft_cfg, spec, target_params, draft_params):
    self.spec = spec
    self.vocab_size = target_cfg.vocab_size
    self.target_model = (target_cfg, target_params)
    self.draft_model = (draft_cfg, draft_params)
    self.features = drafts.needs_features(draft_cfg)
    self._draft_lm = (drafts.model_config(draft_cfg), draft_params) if drafts.kind(draft_cfg) in (
        "model", "model+lookup") else None

  def draft(self, tokens_BT, cache):
    """A draft model's forward: (logits [B, T, V], cache)."""
    with jax.named_scope("draft_forward"):
      return tr.forward(*self._draft_lm, tokens_BT, cache)

  def target(self, tokens_BT, cache):
    """The target's forward: (logits [B, T, V], cache, features [B, T, D] or None).
    The features are computed only when the draft reads them."""
    with jax.named_scope("target_forward"):
      if self.features:
        return tr.forward_with_hidden(*self.target_model, tokens_BT, cache)
      return (*tr.forward(*self.target_model, tokens_BT, cache), None)

  def probs(self, logits):
    """The sampling transform, logits -> float32 probabilities."""
    with jax.named_scope("transform"):
      return self.spec.sampling.probs(logits)

  @property
  def gumbel(self) -> bool:
    return self.spec.sampling.coupling == "gumbel"

  def draw(self, logits_BV, key, noise_BV):
    """(tokens [B], probs [B, V] for the rejection step, or None under gumbel)."""
    if self.gumbel:  # Gumbel-max on the position's noise (decoding/coupling.py)
      with jax.named_scope("transform"):
        return coupling.draw(self.spec.sampling, logits_BV, key, noise_BV)
    probs_BV = self.probs(logits_BV)
    with jax.named_scope("transform"):
      return sample(key, probs_BV, greedy=self.spec.sampling.greedy), probs_BV

  def verify(self, draft_tokens_BG, draft_probs_BGV, target_logits_BXV, key, noise_BXV):
    """(accepted [B], _, emitted [B, G + 1]): the rejection step (or the coupling's)."""
    with jax.named_scope("rejection"):
      if self.gumbel:
        return coupling.verify(self.spec.sampling, draft_tokens_BG, target_logits_BXV, noise_BXV)
      return rejection_sample(draft_tokens_BG, draft_probs_BGV, self.probs(target_logits_BXV),
                              key, greedy=self.spec.sampling.greedy)

  def commit(self, s, prompt_len_B, emitted_BX, num_emitted_B):
    """(tokens, length, done, committed per row): common.commit."""
    return common.commit(s.tokens, s.length, s.done, prompt_len_B, emitted_BX, num_emitted_B,
                         self.spec)


def _finish(parts: Parts, s: SpecState, prompt_len_B, key, emitted_BX, num_emitted_B,
            target_cache, draft_state, num_draft: int, accepted_B, accept_obs_B, trials_obs_B,
            target_hidden_BXD=None):
  """Commits the emitted tokens, rolls the cache and the draft back and updates the counters."""
  with jax.named_scope("commit"):
    tokens, length, done, _ = parts.commit(s, prompt_len_B, emitted_BX, num_emitted_B)
    active_B = ~s.done
    active = active_B.astype(jnp.int32)
    # Only rows with an observation update (lookup: rows that copied nothing have none;
    # decaying both counts of a row that never matches would underflow them to 0 / 0).
    observed_B = active_B & (trials_obs_B > 0)
    discount = lambda ema_B, obs_B: jnp.where(observed_B, ALPHA_DECAY * ema_B + obs_B, ema_B)
    return s.replace(
        tokens=tokens, length=length, done=done, key=key,
        # Roll back: only committed positions stay valid.
        target_cache=target_cache.with_lengths(length - 1),
        draft_state=drafts.rollback(parts.draft_model[0], draft_state, length, s.length,
                                    target_hidden_BXD),
        target_calls=s.target_calls + active,
        drafted=s.drafted + num_draft * active,
        accepted=s.accepted + accepted_B * active,
        accept_ema=discount(s.accept_ema, accept_obs_B),
        trials_ema=discount(s.trials_ema, trials_obs_B))


def make_body(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig,
              spec: common.DecodeSpec, num_draft: int, target_params, draft_params,
              prompt_len_B: jax.Array, parts=Parts):
  """One iteration at K = num_draft (>= 0) as a function SpecState -> SpecState.

  K = 0 is an autoregressive step: the target emits one token from its own
  distribution, and the draft still feeds [previous, current] so its cache
  stays in step; its distribution there gives a free acceptance observation,
  sum_x min(p(x), q(x)), for the auto-K statistics.
  """
  parts = parts(target_cfg, draft_cfg, spec, target_params, draft_params)

  def body(s: SpecState) -> SpecState:
    key, draft_key, accept_key = jax.random.split(s.key, 3)
    current_B1 = common.read_rows(s.tokens, s.length - 1, 1)
    target_cache_in = s.target_cache.with_lengths(s.length - 1)
    vocab = target_cfg.vocab_size
    if num_draft == 0:
      noise_BV = coupling.noise(spec.sampling, s.row_keys, s.length, vocab)
      draft_logits_BV, draft_state = drafts.first_logits(parts, draft_cfg, draft_params, s.tokens,
                                                         s.length, s.draft_state)
      logits_B1V, target_cache, hidden_B1D = parts.target(current_B1, target_cache_in)
      token_B, target_probs_BV = parts.draw(logits_B1V[:, 0], accept_key, noise_BV)
      if parts.gumbel:  # one Bernoulli draw of this coupling's acceptance
        draft_token_B, _ = parts.draw(draft_logits_BV, accept_key, noise_BV)
        overlap_B = (draft_token_B == token_B).astype(jnp.float32)
      else:
        overlap_B = jnp.minimum(parts.probs(draft_logits_BV), target_probs_BV).sum(-1)
      zeros_B = jnp.zeros_like(s.length)
      return _finish(parts, s, prompt_len_B, key, token_B[:, None], zeros_B + 1, target_cache,
                     draft_state, 0, zeros_B, overlap_B, jnp.ones_like(overlap_B), hidden_B1D)

    # The noise of positions length .. length + G (None for coupling='rejection').
    noise_BXV = coupling.noise(spec.sampling, s.row_keys, s.length, vocab, num_draft + 1)
    draft_tokens_BG, draft_probs_BGV, draft_state = drafts.propose(
        parts, draft_cfg, draft_params, num_draft, s.tokens, s.length, s.draft_state, draft_key,
        noise_BXV, ~s.done)
    # One target pass over [current, x_1..x_G] at each row's own offset.
    block_BX = jnp.concatenate([current_B1, draft_tokens_BG], axis=1)   # [B, G + 1]
    logits_BXV, target_cache, hidden_BXD = parts.target(block_BX, target_cache_in)
    num_accepted_B, _, emitted_BX = parts.verify(draft_tokens_BG, draft_probs_BGV, logits_BXV,
                                                 accept_key, noise_BXV)
    accept_obs_B, trials_B = _observations(draft_cfg, s, num_draft, num_accepted_B)
    return _finish(parts, s, prompt_len_B, key, emitted_BX, num_accepted_B + 1, target_cache,
                   draft_state, num_draft, num_accepted_B, accept_obs_B, trials_B, hidden_BXD)

  return body


def _observations(draft_cfg, s: SpecState, num_draft: int, accepted_B):
  """(accepted, trials) [B] f32 for the acceptance statistics of an iteration at K >= 1:
  the accepted tokens, and the trials, those plus the rejection if there was one.
  Prompt lookup counts its copied positions only (the first `matched` proposals; the
  rest are fillers that auto never buys, adaptive.choose), so its alpha is a copy's."""
  if drafts.kind(draft_cfg) != "lookup":
    trials_B = accepted_B + (accepted_B < num_draft)
  else:  # the same matches the proposals came from (one computation after XLA's CSE)
    _, matched_B = lookup.propose(draft_cfg, s.tokens, s.length, num_draft)
    trials_B = jnp.minimum(accepted_B + 1, matched_B)
    accepted_B = jnp.minimum(accepted_B, matched_B)
  return accepted_B.astype(jnp.float32), trials_B.astype(jnp.float32)


def make_target_step(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig,
                     spec: common.DecodeSpec, target_params, draft_params, prompt_len_B,
                     parts=Parts):
  """A plain autoregressive step, SpecState -> SpecState, that leaves the draft alone.

  What auto runs once it has given up on the draft (`ar_only`): the target
  emits one token from its own distribution; the draft cache falls behind,
  which is why the mode never ends within a call; the acceptance statistics
  stay as they were. Lookup alone's K = 0 step: a row whose lookup has a copy
  for this position observes its acceptance for free, q(copy) (greedy and
  Gumbel: whether the target's token is the copy), so auto's alpha keeps
  tracking the copies while it runs no speculative iteration.
  """
  parts = parts(target_cfg, draft_cfg, spec, target_params, draft_params)
  observe = drafts.kind(draft_cfg) == "lookup"

  def body(s: SpecState) -> SpecState:
    key, _, accept_key = jax.random.split(s.key, 3)
    current_B1 = common.read_rows(s.tokens, s.length - 1, 1)
    noise_BV = coupling.noise(spec.sampling, s.row_keys, s.length, target_cfg.vocab_size)
    logits_B1V, target_cache, _ = parts.target(current_B1, s.target_cache.with_lengths(s.length - 1))
    token_B, probs_BV = parts.draw(logits_B1V[:, 0], accept_key, noise_BV)
    zeros_B = jnp.zeros_like(s.length)
    obs_B = trials_B = jnp.zeros(s.length.shape, jnp.float32)
    if observe:
      copy_B1, matched_B = lookup.propose(draft_cfg, s.tokens, s.length, 1)
      if parts.gumbel or spec.sampling.greedy:
        obs_B = (token_B == copy_B1[:, 0]).astype(jnp.float32)
      else:
        obs_B = jnp.take_along_axis(probs_BV, copy_B1, axis=1)[:, 0]
      trials_B = (matched_B >= 1).astype(jnp.float32)  # no copy: no observation (_finish)
    out = _finish(parts, s, prompt_len_B, key, token_B[:, None], zeros_B + 1, target_cache,
                  s.draft_state, 0, zeros_B, obs_B, trials_B)
    # (No observation, trials 0: accept_ema and trials_ema keep their values.)
    return out if observe else out.replace(draft_state=s.draft_state)

  return body


def init_state(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig,
               spec: common.DecodeSpec, target_params, draft_params, prompts_BP: jax.Array,
               prompt_len_B: jax.Array, key: jax.Array, target_cache: tr.KVCache | None = None,
               draft_cache: tr.KVCache | None = None, row_keys: jax.Array | None = None,
               target_hidden: jax.Array | None = None) -> SpecState:
  """The state before the first iteration: the target cache and the draft's state
  prefilled, unless given (draft_cache: a draft model's only; target_hidden: the
  features a feature draft's prefill reads when target_cache is given)."""
  B, P = prompts_BP.shape
  tokens_BL = common.init_buffer(prompts_BP, spec.buffer_len)
  zeros_B = jnp.zeros((B,), jnp.int32)
  prior_accept, prior_trials = ALPHA_PRIOR
  hidden_BPD = target_hidden
  if target_cache is None:
    target_cache, hidden_BPD = common.prefill(target_cfg, target_params, tokens_BL, prompt_len_B, P,
                                              return_hidden=True)
  return SpecState(
      tokens=tokens_BL, length=prompt_len_B, done=jnp.zeros((B,), bool),
      target_cache=target_cache,
      draft_state=(drafts.prefill(draft_cfg, draft_params, tokens_BL, prompt_len_B, P, spec,
                                  hidden_BPD) if draft_cache is None else draft_cache),
      key=key, target_calls=zeros_B, drafted=zeros_B, accepted=zeros_B,
      accept_ema=jnp.full((B,), prior_accept, jnp.float32),
      trials_ema=jnp.full((B,), prior_trials, jnp.float32), row_keys=row_keys,
      zero_streak=jnp.int32(0), ar_only=jnp.bool_(False))


def run_loop(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig,
             spec: common.DecodeSpec, target_params, draft_params, state: SpecState,
             prompt_len_B: jax.Array, cost_C: jax.Array | None = None,
             force_index: jax.Array | int = -1, max_iterations: jax.Array | int = 2**31 - 1,
             parts=Parts) -> tuple[SpecState, jax.Array]:
  """Runs iterations from `state` until every row is done. Jit with configs, `spec` static.

  Args:
    target_cfg, draft_cfg: model configs (same vocabulary).
    spec: static decode settings; spec.num_draft is the paper's K, or with
      spec.draft_choices set, the largest K "auto" may pick.
    target_params, draft_params: parameter pytrees.
    state: from `init_state`, or from an earlier run_loop cut by max_iterations.
    prompt_len_B: [B] true prompt lengths, each >= 1.
    cost_C: [len(spec.draft_choices)] float32, the time of one iteration at
      each K of spec.draft_choices (any unit); needed only for "auto".
    force_index: "auto" only; >= 0 runs spec.draft_choices[force_index]
      every iteration instead of choosing (calibration, decoding/calibrate.py).
    max_iterations: stop after this many iterations even if rows are left
      (the loop resumes from the returned state); the default never binds.
    parts: static; builds each body's model and sampling calls (`Parts`).

  Returns:
    (the final SpecState, iterations run []); generated tokens of row b are
    tokens[b, prompt_len[b] : length[b]].
  """
  body_of = lambda k: make_body(target_cfg, draft_cfg, spec, k, target_params, draft_params,
                                prompt_len_B, parts)
  remaining = lambda s: spec.max_new_tokens - (s.length - prompt_len_B)
  if spec.draft_choices and drafts.kind(draft_cfg) == "lookup":  # K capped by the matches
    choices = spec.draft_choices
    bodies = [make_target_step(target_cfg, draft_cfg, spec, target_params, draft_params,
                               prompt_len_B, parts) if k == 0 else body_of(k) for k in choices]

    def body(s):
      index = jnp.where(force_index >= 0, force_index, lookup.choose_index(
          draft_cfg, choices, s, cost_C, remaining(s)))
      return jax.lax.switch(index, bodies, s)
  elif spec.draft_choices:
    choices = spec.draft_choices
    bodies = [body_of(k) for k in choices]
    if 0 in choices:  # the draft-free step of ar_only (make_target_step)
      bodies.append(make_target_step(target_cfg, draft_cfg, spec, target_params, draft_params,
                                     prompt_len_B, parts))

    def body(s):
      index = jnp.where(force_index >= 0, force_index,
                        choose(s, choices, cost_C, remaining(s)))
      if 0 not in choices:
        return jax.lax.switch(index, bodies, s)
      s = jax.lax.switch(jnp.where(s.ar_only, len(choices), index), bodies, s)
      # Auto (never a forced K) gives up on the draft after AR_AFTER K = 0 in a row.
      streak = jnp.where((index == choices.index(0)) & (force_index < 0), s.zero_streak + 1, 0)
      return s.replace(zero_streak=streak, ar_only=s.ar_only | (streak >= AR_AFTER))
  else:
    body = body_of(spec.num_draft)

  def step(carry):
    s, iterations = carry
    return body(s), iterations + 1

  def go_on(carry):
    s, iterations = carry
    return ~jnp.all(s.done) & (iterations < max_iterations)

  return jax.lax.while_loop(go_on, step, (state, jnp.int32(0)))


def speculative_loop(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig,
                     spec: common.DecodeSpec, target_params, draft_params,
                     prompts_BP: jax.Array, prompt_len_B: jax.Array, key: jax.Array,
                     cost_C: jax.Array | None = None, force_index: jax.Array | int = -1,
                     max_iterations: jax.Array | int = 2**31 - 1, parts=Parts,
                     target_cache: tr.KVCache | None = None,
                     draft_cache: tr.KVCache | None = None,
                     row_keys: jax.Array | None = None,
                     target_hidden: jax.Array | None = None) -> SpecState:
  """Generates until every row is done: `init_state`, then `run_loop` (see both).

  prompts_BP: [B, P] right-padded prompts; key: PRNG key; target_cache,
  draft_cache: precomputed prompt caches in the loop's convention (length - 1
  valid positions, [B, spec.buffer_len]), e.g. from KV Prediction
  (decoding/kv_prediction.py), None runs a full prefill; row_keys: [B] per-row
  PRNG keys, for coupling='gumbel' only; target_hidden: a feature draft's
  prompt features when target_cache is given (kv_prediction.prefill).
  Returns the final SpecState.
  """
  state = init_state(target_cfg, draft_cfg, spec, target_params, draft_params, prompts_BP,
                     prompt_len_B, key, target_cache, draft_cache, row_keys, target_hidden)
  return run_loop(target_cfg, draft_cfg, spec, target_params, draft_params, state, prompt_len_B,
                  cost_C, force_index, max_iterations, parts)[0]
