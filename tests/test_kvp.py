"""KV Prediction: predictor shapes and layer map, the identity check, the exact tail,
lossless decoding with a predicted cache, and bad input. Training, folders and the
benchmark: tests/test_kvp_training.py.

The one statistical test (sampled speculative + KVP against the exact joint of
the KVP-conditioned target, with the auxiliary and with a feature draft as the
draft, and a feature draft with an exact tail) asserts p > ALPHA = 1e-4 on two
prompts per case, so a correct sampler fails it with probability at most 6e-4
(union bound); its
power check asserts that the same samples REJECT the target's exact
(full-prefill) joint, which the predicted cache changes.
"""

import dataclasses
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specsample.decoding import LM, Sampling, api, common, generate
from specsample.decoding import kv_prediction as kvpd
from specsample.decoding.lookup import PromptLookup
from specsample.models import kv_predictor as kp
from specsample.models import transformer as tr
from draft_kinds import AUTO_COSTS, AUTO_SET, PROMPTS, make_feature_draft
from test_decoding import ALPHA, GREEDY_PROMPTS, chi2_pvalue


@pytest.fixture(scope="module")
def tiny_kvp(tiny_pair):
  """(target, KVP with the 1-layer draft as auxiliary and a random predictor)."""
  target, draft = tiny_pair
  config = kp.KVPConfig(target.config, draft.config).validate()
  return target, kvpd.KVP(aux=draft, params=kp.init_params(config, jax.random.key(5)),
                          layer_map=config.layer_map)


# ----------------------------------------------------------------- shapes and layer map

def test_default_layer_map_and_shapes(tiny_kvp):
  assert kp.default_layer_map(6, 2) == (0, 0, 0, 1, 1, 1)
  assert kp.default_layer_map(6, 6) == tuple(range(6))
  assert kp.default_layer_map(4, 3) == (0, 0, 1, 2)
  target, kvp = tiny_kvp
  t, a = target.config, kvp.aux.config
  assert kvp.layer_map == (0, 0)
  I = a.num_kv_heads * a.head_dim
  assert kvp.params["layer_1_k"].shape == (I, t.num_kv_heads, t.head_dim)
  assert kvp.params["layer_1_v_bias"].shape == (t.num_kv_heads, t.head_dim)
  assert kp.logical_axes(kvpd.kvp_config(target, kvp))["layer_0_k"] == jax.sharding.PartitionSpec(
      None, "kv_heads", "head_dim")
  aux_cache = tr.init_cache(a, 3, 10).with_lengths(jnp.array([1, 4, 9]))
  pred = kp.predict_cache(kvpd.kvp_config(target, kvp), kvp.params, aux_cache)
  assert len(pred.k) == len(pred.v) == t.num_layers
  chex.assert_shape(pred.k + pred.v, (3, 10, t.num_kv_heads, t.head_dim))
  np.testing.assert_array_equal(pred.lengths, [1, 4, 9])
  # A layer-pruned copy: the kept layers' weights, in buffers of its own (training donates them).
  pruned_cfg, pruned = kp.prune_layers(t, target.params, (1,))
  assert pruned_cfg.num_layers == 1 and kp.default_layer_map(2, 1) == (0, 0)
  np.testing.assert_array_equal(pruned["layer_0"]["attn"]["q"], target.params["layer_1"]["attn"]["q"])
  assert pruned["embedding"] is not target.params["embedding"]
  with pytest.raises(ValueError, match="kvp.keep_layers must be increasing"):
    kp.prune_layers(t, target.params, (1, 1))
  # On a 2 x 4 mesh the predictor's output heads follow the target cache's layout.
  mesh = jax.make_mesh((2, 4), ("data", "tensor"))
  rules = (("batch", "data"), ("kv_heads", "tensor"), ("head_dim", None))
  shardings = kvpd.predictor_shardings(kvpd.kvp_config(target, kvp), mesh, rules)
  assert shardings["layer_0_k"].spec == jax.sharding.PartitionSpec(None, None, None)  # 2 kv heads


@pytest.mark.parametrize("layer_map, message", [
    ((0,), r"kvp.layer_map must have one entry per target layer \(2\)"),
    ((0, 1), r"kvp.layer_map entries must be auxiliary layers in \[0, 1\)"),
    ((0, -1), r"kvp.layer_map entries must be auxiliary layers in \[0, 1\)"),
])
def test_bad_layer_map_is_named(tiny_pair, layer_map, message):
  target, draft = tiny_pair
  with pytest.raises(ValueError, match=message):
    kp.KVPConfig(target.config, draft.config, layer_map).validate()


# ------------------------------------------------------------------------ identity

# test_decoding's greedy settings: the full-prefill loop compiles once for both files.
GREEDY_AR = dict(method="autoregressive", sampling=Sampling(temperature=0), max_new_tokens=24,
                 eos_id=14)

def test_identity_predictor_with_the_target_as_auxiliary_reproduces_its_cache(tiny_pair):
  """Values are copied bit for bit; keys go through rotary's inverse and back, so they
  match to float32 rounding; the greedy tokens are then those of a full prefill."""
  target, _ = tiny_pair
  config = kp.KVPConfig(target.config, target.config).validate()
  params = kp.identity_params(config)
  prompts_BP = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7, 0, 0, 0, 0, 0]])
  prompt_len = jnp.array([8, 3])
  tokens = common.init_buffer(prompts_BP, 16)
  real = jax.jit(common.prefill, static_argnums=(0, 4))(target.config, target.params, tokens,
                                                        prompt_len, 8)
  pred = jax.jit(kp.predict_cache, static_argnums=0)(config, params, real)
  for i in range(target.config.num_layers):
    np.testing.assert_array_equal(pred.v[i], real.v[i])
    np.testing.assert_allclose(pred.k[i], real.k[i], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(pred.lengths, real.lengths)
  kvp = kvpd.KVP(aux=target, params=params, layer_map=config.layer_map)
  assert (generate(target, GREEDY_PROMPTS, prefill="kv_prediction", kvp=kvp, **GREEDY_AR).tokens
          == generate(target, GREEDY_PROMPTS, **GREEDY_AR).tokens)


@pytest.mark.parametrize("exact_tail", [0, 5])
def test_prompt_features_are_the_targets_own_at_the_tail(tiny_pair, exact_tail):
  """With an exact predicted cache (the target as its own auxiliary), a feature draft's
  prompt features equal a full prefill's at positions max(0, P-1-T) .. P-2 and are zero
  elsewhere, per row; T is the exact tail, or FEATURE_TAIL without one."""
  target, _ = tiny_pair
  config = kp.KVPConfig(target.config, target.config).validate()
  spec = kvpd.KVPSpec(config, False, feature_draft=True, exact_tail=exact_tail)
  T = exact_tail or kvpd.FEATURE_TAIL
  P = kvpd.FEATURE_TAIL + 6
  prompts_BP = jnp.array([list(range(1, P + 1)), [9, 8, 7] + [0] * (P - 3)]) % 16
  prompt_len = jnp.array([P, 3])
  tokens = common.init_buffer(prompts_BP, P + 8)
  cache, hidden = jax.jit(common.prefill, static_argnums=(0, 4, 5))(
      target.config, target.params, tokens, prompt_len, P, True)
  _, _, tail = jax.jit(kvpd.prefill, static_argnums=(0, 6))(
      spec, target.params, target.params, kp.identity_params(config), prompts_BP, prompt_len,
      P + 8)
  for b, n in enumerate([P, 3]):
    lo = max(0, n - 1 - T)
    np.testing.assert_allclose(tail[b, lo:n - 1], hidden[b, lo:n - 1], rtol=1e-4, atol=1e-5)
    assert not np.any(tail[b, :lo]) and not np.any(tail[b, n - 1:])


# The reference's one block width and cache length (every prompt + new tokens fits).
_WIDTH, _BUFFER = 16, 32


@functools.partial(jax.jit, static_argnums=0)
def _reference_step(kvp_cfg, predictor, aux_params, target_params, prompt_1L, prompt_len, start,
                    block_1W, read):
  """The target's logits at block position `read`, the block fed at `start` against
  the predicted cache of the prompt (only positions < start are read from it)."""
  aux_cache = common.prefill(kvp_cfg.aux, aux_params, prompt_1L, prompt_len, _BUFFER)
  pred = kp.predict_cache(kvp_cfg, predictor, aux_cache)
  logits, _ = tr.forward(kvp_cfg.target, target_params, block_1W, pred.with_lengths(start))
  return logits[0, read]


def _greedy_with_exact_tail(target: LM, kvp: kvpd.KVP, prompt: list[int], n: int) -> list[int]:
  """Greedy tokens of the target whose cache holds the PREDICTED keys and values of
  positions 0..P-2-T and its own from P-1-T on: each step reruns the whole tail and
  everything generated against the predicted part (no incremental cache; the block is
  right-padded to one width, which causal attention makes harmless)."""
  P, T = len(prompt), kvp.exact_tail
  start = max(P - 1 - T, 0)
  prompt_1L = common.init_buffer(jnp.array([prompt]), _BUFFER)
  args = (kvpd.kvp_config(target, kvp), kvp.params, kvp.aux.params, target.params, prompt_1L,
          jnp.array([P]), jnp.array([start]))
  out = []
  for _ in range(n):
    block = prompt[start:] + out
    padded = jnp.array([block + [0] * (_WIDTH - len(block))])
    out.append(int(jnp.argmax(_reference_step(*args, padded, len(block) - 1))))
  return out


def test_an_exact_tail_is_the_targets_own_cache_over_the_last_prompt_positions(tiny_kvp):
  """KVP.exact_tail = T: greedy AR + KVP equals a from-scratch recomputation with the
  predicted cache kept only before position P-1-T, on rows longer and shorter than T + 1;
  a row that fits in the tail is the full prefill's. Greedy SpS + KVP with a feature draft
  equals AR + KVP, and the first-token path agrees with the loop."""
  target, kvp = tiny_kvp
  tail = dataclasses.replace(kvp, exact_tail=4)
  prompts = [[1, 2, 3], [(3 * i + 1) % 16 for i in range(11)], [5, 9, 2, 2, 7, 1]]
  greedy = dict(sampling=Sampling(temperature=0), max_new_tokens=6, prefill="kv_prediction")
  ar = generate(target, prompts, method="autoregressive", kvp=tail, **greedy)
  for prompt, tokens in zip(prompts, ar.tokens):
    assert tokens == _greedy_with_exact_tail(target, tail, prompt, 6), prompt
  full = generate(target, prompts[:1], method="autoregressive", max_new_tokens=6,
                  sampling=Sampling(temperature=0))
  assert ar.tokens[0] == full.tokens[0]  # 3 <= T + 1: nothing predicted is left
  assert ar.tokens[1] != generate(target, prompts[1:2], method="autoregressive", kvp=kvp,
                                  **greedy).tokens[0]  # the tail changes what a long row says
  sps = generate(target, prompts, method="speculative", draft=make_feature_draft(target),
                 num_draft=3, kvp=tail, **greedy)
  assert sps.tokens == ar.tokens
  spec = kvpd.check(target, None, "autoregressive", "kv_prediction", tail)
  first = jax.jit(kvpd.first_token_logits, static_argnums=0)(
      spec, target.params, tail.aux.params, tail.params, jnp.array(prompts[1:2]))
  assert int(jnp.argmax(first[0])) == ar.tokens[1][0]
  with pytest.raises(ValueError, match="kvp.exact_tail must be an int >= 0, got -1"):
    generate(target, prompts, kvp=dataclasses.replace(kvp, exact_tail=-1), method="autoregressive",
             max_new_tokens=2, prefill="kv_prediction")


# ---------------------------------------------------------------- lossless decoding

def test_greedy_speculative_kvp_equals_autoregressive_kvp(tiny_kvp):
  target, kvp = tiny_kvp
  greedy = dict(sampling=Sampling(temperature=0), max_new_tokens=24, eos_id=14,
                prefill="kv_prediction", kvp=kvp)
  ar = generate(target, GREEDY_PROMPTS, method="autoregressive", **greedy)
  traces = api.TRACE_COUNT["speculative"]
  sps = generate(target, GREEDY_PROMPTS, method="speculative", num_draft=3, **greedy)  # aux = draft
  assert sps.tokens == ar.tokens
  explicit = generate(target, GREEDY_PROMPTS, draft=kvp.aux, method="speculative", num_draft=3,
                      **greedy)
  assert explicit.tokens == ar.tokens
  assert api.TRACE_COUNT["speculative"] == traces + 1  # draft=kvp.aux is the same loop
  assert len({len(t) for t in ar.tokens}) > 1  # rows stop at different times (eos)
  # The predicted cache matters: the full prefill gives other tokens here.
  assert generate(target, GREEDY_PROMPTS, **GREEDY_AR).tokens != ar.tokens


def test_greedy_feature_draft_after_a_predicted_prompt_equals_autoregressive_kvp(tiny_kvp):
  """A feature draft reads the target's features, which a predicted prompt lacks
  (kv_prediction.prefill); with fixed K, with auto and with lookup, on rows shorter
  and longer than the feature tail; lookup alone too."""
  target, kvp = tiny_kvp
  prompts = PROMPTS + [[(3 * i) % 16 for i in range(kvpd.FEATURE_TAIL + 9)]]
  greedy = dict(sampling=Sampling(temperature=0), max_new_tokens=24, eos_id=14,
                prefill="kv_prediction", kvp=kvp)
  ar = generate(target, prompts, method="autoregressive", **greedy)
  feature = make_feature_draft(target)
  lookup = PromptLookup(max_ngram=2, min_ngram=1)
  for extra in ({"num_draft": 3}, {"num_draft": AUTO_SET, "iteration_costs": AUTO_COSTS},
                {"num_draft": 3, "lookup": lookup}):
    sps = generate(target, prompts, method="speculative", draft=feature, **extra, **greedy)
    assert sps.tokens == ar.tokens, extra
    assert sps.stats["accepted"].sum() > 0
  # Prompt lookup reads only tokens: alone, it works after a predicted prompt too.
  for extra in ({"num_draft": 3}, {"num_draft": AUTO_SET, "iteration_costs": AUTO_COSTS}):
    copy = generate(target, prompts, method="speculative", draft=lookup, **extra, **greedy)
    assert copy.tokens == ar.tokens, extra


def _joint(probs_CNV: np.ndarray, conts_CN: np.ndarray) -> np.ndarray:
  """Product over n of probs[c, n, conts[c, n]]: [C]."""
  C, N = conts_CN.shape
  return probs_CNV[np.arange(C)[:, None], np.arange(N)[None], conts_CN].prod(axis=1)


def kvp_joint(target: LM, kvp: kvpd.KVP, prompt: list[int], n: int = 3) -> np.ndarray:
  """P(x1..xn | predicted cache of prompt[:-1], prompt[-1]) for every continuation: [V**n]."""
  V, P = target.config.vocab_size, len(prompt)
  conts = np.array(list(itertools.product(range(V), repeat=n)), np.int32)        # [V^n, n]
  spec = kvpd.KVPSpec(config=kvpd.kvp_config(target, kvp), aux_is_draft=False,
                      exact_tail=kvp.exact_tail)

  @jax.jit
  def probs(target_params, aux_params, predictor_params, block):
    cache, _, _ = kvpd.prefill(spec, target_params, aux_params, predictor_params,
                               jnp.array([prompt]), jnp.array([P]), P + n)
    cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, block.shape[0], axis=0), cache)
    return jax.nn.softmax(tr.forward(target.config, target_params, block, cache)[0], axis=-1)

  block = np.concatenate([np.full((len(conts), 1), prompt[-1]), conts[:, :-1]], axis=1)
  return _joint(np.asarray(probs(target.params, kvp.aux.params, kvp.params, block)), conts)


def full_joint(target: LM, prompt: list[int], n: int = 3) -> np.ndarray:
  """P(x1..xn | prompt) under the target with its own (exact) cache: [V**n]."""
  V = target.config.vocab_size
  conts = np.array(list(itertools.product(range(V), repeat=n)), np.int32)
  seqs = np.concatenate([np.tile(prompt, (len(conts), 1)), conts], axis=1)
  probs = jax.jit(lambda p, t: jax.nn.softmax(tr.forward(target.config, p, t)[0][:, len(prompt) - 1:-1],
                                              axis=-1))(target.params, seqs)
  return _joint(np.asarray(probs), conts)


@pytest.mark.parametrize("draft_kind", ["aux", "feature", "feature_exact_tail"])
def test_sampled_speculative_kvp_follows_the_kvp_conditioned_target(tiny_kvp, draft_kind):
  target, kvp = tiny_kvp
  if draft_kind == "feature_exact_tail":  # the prompts' first 1 and 2 positions stay predicted
    kvp = dataclasses.replace(kvp, exact_tail=1)
  V = target.config.vocab_size
  prompts, rows = [[1, 2, 3], [7, 5, 2, 2]], 4000
  batch = [prompts[i % 2] for i in range(2 * rows)]
  draft = make_feature_draft(target) if draft_kind.startswith("feature") else None
  out = generate(target, batch, method="speculative", draft=draft, num_draft=2,
                 sampling=Sampling(temperature=1.0), max_new_tokens=3, seed=13,
                 prefill="kv_prediction", kvp=kvp)
  for j, prompt in enumerate(prompts):
    seqs = np.array([out.tokens[i] for i in range(j, len(batch), 2)])
    counts = np.bincount(seqs @ (V ** np.arange(2, -1, -1)), minlength=V ** 3)
    assert chi2_pvalue(counts, kvp_joint(target, kvp, prompt)) > ALPHA, j
    # Power: the target's exact distribution (full prefill) is rejected by the same test.
    assert chi2_pvalue(counts, full_joint(target, prompt), strict=False) < ALPHA, j


# ------------------------------------------------------------------------- bad input

def test_bad_prefill_settings_raise_before_compiling(tiny_kvp):
  target, kvp = tiny_kvp
  traces = dict(api.TRACE_COUNT)
  cases = [
      (dict(prefill="predicted"), "prefill must be one of"),
      (dict(prefill="kv_prediction"), "needs kvp=KVP"),
      (dict(kvp=kvp), "kvp is set but prefill='full'"),
      (dict(prefill="kv_prediction", kvp=kvpd.KVP(LM(kvp.aux.config.replace(vocab_size=17),
                                                     kvp.aux.params), kvp.params, kvp.layer_map)),
       "kvp auxiliary and target vocabularies differ"),
      (dict(prefill="kv_prediction", kvp=kvpd.KVP(LM(kvp.aux.config, kvp.aux.params, "tokA"),
                                                  kvp.params, kvp.layer_map)),
       "tokenizers differ"),
      (dict(prefill="kv_prediction", kvp=kvpd.KVP(kvp.aux, kvp.params, (0, 3))),
       r"layer_map entries must be auxiliary layers in \[0, 1\)"),
      (dict(prefill="kv_prediction", kvp=kvpd.KVP(
          kvp.aux, {k: v for k, v in kvp.params.items() if k != "layer_1_v"}, kvp.layer_map)),
       "kvp.params do not fit"),
      # KV Prediction stays single-device: a mesh is refused by name.
      (dict(prefill="kv_prediction", kvp=kvp, mesh=jax.make_mesh((2, 4), ("data", "tensor"))),
       r"prefill='kv_prediction' runs on one device: pass mesh=None"),
  ]
  tok_target = LM(target.config, target.params, "tokB")
  for kwargs, message in cases:
    model = tok_target if "tokenizers" in message else target
    with pytest.raises(ValueError, match=message):
      generate(model, [[1, 2]], method="autoregressive", max_new_tokens=4, **kwargs)
  assert dict(api.TRACE_COUNT) == traces
