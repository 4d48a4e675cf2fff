"""The decoder and its KV cache: every use of `forward` computes the same function.

Deterministic tests (no statistics). Tolerances are float32 round-off: the
cached and uncached paths sum attention in different orders.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specsample.models import io as model_io
from specsample.models import presets
from specsample.models import transformer as tr

ATOL = 2e-4  # logits are O(10): ~1e-5 relative
# Jitted (one compile per shape) rather than run op by op: the same function, a
# fraction of the time.
_forward = jax.jit(tr.forward, static_argnums=0)


@pytest.fixture(scope="module")
def model():
  # Grouped-query (4 heads, 2 kv heads), untied, GELU: exercises the options
  # the tiny_pair fixture does not.
  cfg = presets.get_preset("tiny", tie_embeddings=False, mlp_type="gelu")
  params = jax.tree_util.tree_map(lambda x: 2 * x, jax.jit(tr.init_params, static_argnums=0)(
      cfg, jax.random.key(3)))
  return cfg, params


def _tokens(cfg, B, T, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size, jnp.int32)


def test_shapes_and_dtypes(model):
  cfg, params = model
  tokens = _tokens(cfg, 3, 5)
  logits, no_cache = _forward(cfg, params, tokens)
  assert logits.shape == (3, 5, cfg.vocab_size) and logits.dtype == jnp.float32
  assert no_cache is None
  cache = tr.init_cache(cfg, 3, 16)
  assert cache.k[0].shape == (3, 16, cfg.num_kv_heads, cfg.head_dim)
  assert len(cache.k) == len(cache.v) == cfg.num_layers
  logits, cache = _forward(cfg, params, tokens, cache)
  assert logits.shape == (3, 5, cfg.vocab_size)
  np.testing.assert_array_equal(cache.lengths, [5, 5, 5])


def test_bfloat16_compute_keeps_float32_logits(model):
  cfg, params = model
  logits, _ = _forward(cfg.replace(dtype="bfloat16"), params, _tokens(cfg, 2, 4))
  full, _ = _forward(cfg, params, _tokens(cfg, 2, 4))
  assert logits.dtype == jnp.float32
  # bf16 round-off (8 mantissa bits through 2 layers), not a different model.
  err = np.abs(np.asarray(logits - full)).max()
  assert err < 0.1 * np.abs(np.asarray(full)).max(), err


def test_prefill_then_decode_equals_full_forward(model):
  cfg, params = model
  tokens = _tokens(cfg, 2, 12)
  full, _ = _forward(cfg, params, tokens)
  cache = tr.init_cache(cfg, 2, 16)
  logits, cache = _forward(cfg, params, tokens[:, :5], cache)  # prefill
  outs = [logits]
  step = jax.jit(lambda c, t: _forward(cfg, params, t, c))
  for t in range(5, 12):  # 1-token decode
    logits, cache = step(cache, tokens[:, t:t + 1])
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=ATOL)
  np.testing.assert_array_equal(cache.lengths, [12, 12])


def test_a_prompt_sized_cache_padded_to_the_buffer_decodes_like_a_buffer_sized_one(model):
  """decoding/common.prefill's way: prefill in a cache of the prompt's width (its
  attention spans only those keys), then pad it to the buffer's length."""
  cfg, params = model
  tokens = _tokens(cfg, 2, 12, seed=5)
  full, _ = _forward(cfg, params, tokens)
  _, small = _forward(cfg, params, tokens[:, :5], tr.init_cache(cfg, 2, 5))
  _, big = _forward(cfg, params, tokens[:, :5], tr.init_cache(cfg, 2, 16))
  padded = small.padded_to(16)
  assert padded.max_len == 16
  for a, b in zip(padded.k + padded.v, big.k + big.v):
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.asarray(a[:, 5:]).any()             # nothing beyond the prompt
  step = jax.jit(lambda c, t: _forward(cfg, params, t, c))
  cache, outs = padded, []
  for t in range(5, 12):
    logits, cache = step(cache, tokens[:, t:t + 1])
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full[:, 5:], atol=ATOL)


def test_extension_at_mixed_row_offsets_equals_full_forward(model):
  """Rows at different cache lengths extend by T tokens in one call: what
  speculative verification does after rows accepted different counts."""
  cfg, params = model
  B, T, L = 4, 5, 20
  tokens = _tokens(cfg, B, L, seed=1)
  full, _ = _forward(cfg, params, tokens)
  offsets = np.array([0, 3, 7, 11])
  cache = tr.init_cache(cfg, B, 32)
  # Fill each row to its own offset, with garbage written past it that must be
  # ignored (stale entries are masked by position, not zeroed).
  _, cache = _forward(cfg, params, _tokens(cfg, B, 15, seed=9), cache)
  rows = []
  for b in range(B):
    c = tr.init_cache(cfg, 1, 32)
    if offsets[b]:
      _, c = _forward(cfg, params, tokens[b:b + 1, :offsets[b]], c)
    rows.append(c)
  # Stitch per-row prefixes into one cache; stale garbage stays beyond offsets.
  k = tuple(_merge(cache.k[i], [r.k[i] for r in rows], offsets) for i in range(cfg.num_layers))
  v = tuple(_merge(cache.v[i], [r.v[i] for r in rows], offsets) for i in range(cfg.num_layers))
  cache = tr.KVCache(k=k, v=v, lengths=jnp.asarray(offsets, jnp.int32))
  new = jnp.stack([tokens[b, offsets[b]:offsets[b] + T] for b in range(B)])
  logits, cache = _forward(cfg, params, new, cache)
  want = jnp.stack([full[b, offsets[b]:offsets[b] + T] for b in range(B)])
  np.testing.assert_allclose(logits, want, atol=ATOL)
  np.testing.assert_array_equal(cache.lengths, offsets + T)


def _merge(garbage_BSKH, rows, offsets):
  """Row b: its true prefix below offsets[b], garbage from `garbage_BSKH` above."""
  out = []
  for b, r in enumerate(rows):
    pos = jnp.arange(garbage_BSKH.shape[1])[:, None, None]
    out.append(jnp.where(pos < offsets[b], r[0], garbage_BSKH[b]))
  return jnp.stack(out)


def test_rollback_by_lowering_lengths(model):
  """Rejected tokens are removed by lowering lengths; rewriting gives fresh logits."""
  cfg, params = model
  tokens = _tokens(cfg, 2, 10, seed=2)
  full, _ = _forward(cfg, params, tokens)
  cache = tr.init_cache(cfg, 2, 16)
  _, cache = _forward(cfg, params, tokens[:, :6], cache)
  _, cache = _forward(cfg, params, _tokens(cfg, 2, 3, seed=5), cache)  # to be rejected
  cache = cache.with_lengths(jnp.array([6, 6]))
  logits, _ = _forward(cfg, params, tokens[:, 6:10], cache)
  np.testing.assert_allclose(logits, full[:, 6:10], atol=ATOL)


def test_causality(model):
  """Changing token t changes no logit at positions < t."""
  cfg, params = model
  tokens = _tokens(cfg, 1, 10, seed=4)
  changed = tokens.at[0, 6].set((tokens[0, 6] + 1) % cfg.vocab_size)
  a, _ = _forward(cfg, params, tokens)
  b, _ = _forward(cfg, params, changed)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert np.abs(np.asarray(a[:, 6:] - b[:, 6:])).max() > 1e-3  # and it does reach t onward


def test_cache_overflow_and_bad_config_errors():
  cfg = presets.get_preset("tiny")
  with pytest.raises(ValueError, match="max_seq_len"):
    tr.init_cache(cfg, 1, cfg.max_seq_len + 1)
  bad = [
      (dict(d_model=0), "model.d_model"),
      (dict(num_kv_heads=3), "model.num_kv_heads"),
      (dict(head_dim=6), r"model.num_heads \* model.head_dim"),
      (dict(mlp_type="relu"), "model.mlp_type"),
      (dict(dtype="float64"), "model.dtype"),
      (dict(num_layers=2.0), "model.num_layers"),
  ]
  for override, field in bad:
    with pytest.raises(ValueError, match=field):
      cfg.replace(**override).validate()
  with pytest.raises(ValueError, match="tiny"):  # names the known presets
    presets.get_preset("chinchilla_7b")


@pytest.mark.parametrize("name,expected", [("chinchilla_70b", 70e9), ("draft_4b", 4e9)])
def test_paper_presets_sizes_without_allocating(name, expected):
  cfg = presets.get_preset(name)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads) == {
      "chinchilla_70b": (80, 8192, 64), "draft_4b": (8, 6144, 48)}[name]
  shapes = tr.param_shapes(cfg)  # jax.eval_shape: ShapeDtypeStructs only
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(shapes))
  n = tr.count_params(shapes)
  assert abs(n / expected - 1) < 0.05, n


def test_save_load_roundtrip(tmp_path, model):
  cfg, params = model
  model_io.save_lm(str(tmp_path / "lm"), cfg, params, tokenizer_id="abc", store_dtype="float32")
  lm = model_io.load_lm(str(tmp_path / "lm"))
  assert lm.config == cfg and lm.tokenizer_id == "abc"
  jax.tree_util.tree_map(np.testing.assert_array_equal, lm.params, params)
  # Saving over an existing model never leaves it half-written.
  model_io.save_lm(str(tmp_path / "lm"), cfg, params, tokenizer_id="def", store_dtype="float32")
  assert model_io.load_lm(str(tmp_path / "lm")).tokenizer_id == "def"
