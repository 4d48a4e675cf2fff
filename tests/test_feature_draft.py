"""The feature draft (models/feature_draft.py): its cache, its head, saving and training data.

Lossless decoding with it (greedy identity, exact-enumeration chi-square, Gumbel
invariance, batch > 1) is tested with the loop in tests/test_drafts.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specsample.alignment import feature_curve, feature_train
from specsample.models import feature_draft as fd
from specsample.models import presets
from specsample.models import transformer as tr


@pytest.fixture(scope="module")
def setup():
  target_cfg = presets.get_preset("tiny", tie_embeddings=True, vocab_size=16)
  target_params = tr.init_params(target_cfg, jax.random.key(0))
  config = fd.config_for(target_cfg, head_size=10)
  params = fd.init_params(config, jax.random.key(1))
  head_ids = fd.frequent_tokens(np.arange(16)[::-1].astype(np.int64), 10)
  return target_cfg, target_params, config, params, fd.shared_from(target_cfg, target_params, head_ids)


def test_incremental_forward_equals_one_pass(setup):
  """Pairs fed 3 + 1 + 2 at a time through the cache give the full pass's outputs."""
  _, _, config, params, shared = setup
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 16, (2, 6)), jnp.int32)
  feats = jnp.asarray(rng.normal(size=(2, 6, config.block.d_model)), jnp.float32)
  full_logits, full_out, _ = fd.forward(config, params, shared, tokens, feats)
  cache = tr.init_cache(config.block, 2, 8)
  outs = []
  for a, b in ((0, 3), (3, 4), (4, 6)):
    logits, out, cache = fd.forward(config, params, shared, tokens[:, a:b], feats[:, a:b], cache)
    outs.append((logits, out))
  np.testing.assert_allclose(jnp.concatenate([l for l, _ in outs], 1), full_logits, atol=1e-5)
  np.testing.assert_allclose(jnp.concatenate([o for _, o in outs], 1), full_out, atol=1e-5)
  assert list(cache.lengths) == [6, 6]


def test_head_covers_only_its_tokens(setup):
  target_cfg, _, config, params, shared = setup
  logits, _, _ = fd.forward(config, params, shared, jnp.zeros((1, 1), jnp.int32),
                            jnp.ones((1, 1, config.block.d_model)))
  full = np.asarray(fd.logits_full(shared, logits, target_cfg.vocab_size))[0, 0]
  head = set(np.asarray(shared["head_ids"]).tolist())
  assert head == set(range(10)) and np.isfinite(full[list(head)]).all()
  assert np.isneginf(np.delete(full, list(head))).all()
  probs = np.asarray(jax.nn.softmax(jnp.asarray(full)))
  assert np.isclose(probs.sum(), 1) and (probs[10:] == 0).all()


def test_save_and_load_round_trip(setup, tmp_path):
  _, _, config, params, shared = setup
  fd.save(str(tmp_path / "d"), config, params, np.asarray(shared["head_ids"]), tokenizer_id="tok")
  assert fd.is_feature_draft(str(tmp_path / "d"))
  loaded = fd.load(str(tmp_path / "d"))
  assert loaded.config == config and loaded.tokenizer_id == "tok"
  np.testing.assert_array_equal(loaded.head_ids, shared["head_ids"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, params)


def test_init_from_the_target_copies_its_last_block(setup):
  target_cfg, target_params, config, _, _ = setup
  params = fd.init_params(config, jax.random.key(2), target_params)
  last = f"layer_{target_cfg.num_layers - 1}"
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["block"], target_params[last])


def test_training_windows_pair_feature_t_with_token_and_target_at_t_plus_1():
  n, D, k = 7, 3, 2
  row = {"tokens": np.arange(n, dtype=np.int32), "hidden": np.arange(n * D, dtype=np.float32).reshape(n, D),
         "topk_ids": np.arange(n * k, dtype=np.int32).reshape(n, k),
         "topk_logp": -np.ones((n, k), np.float32)}
  batch = feature_train.Windows([row], seq_len=8, batch_size=1, seed=0).batch_at(0)
  m = n - 2  # pairs t = 0 .. n-3
  np.testing.assert_array_equal(batch["weights"][0], [1] * m + [0] * 3)
  np.testing.assert_array_equal(batch["tokens"][0, :m], row["tokens"][1:m + 1])
  np.testing.assert_array_equal(batch["feats"][0, :m], row["hidden"][:m])
  np.testing.assert_array_equal(batch["next_feats"][0, :m], row["hidden"][1:m + 1])
  np.testing.assert_array_equal(batch["topk_ids"][0, :m], row["topk_ids"][1:m + 1])


def test_loss_is_lower_for_a_draft_that_agrees_with_the_target(setup):
  """The classification term ranks a draft that puts the target's mass on its top
  token below one that puts it elsewhere (the loss can tell them apart)."""
  _, _, config, params, shared = setup
  shared = {**shared, "where": jnp.asarray(feature_train.head_mask(np.asarray(shared["head_ids"]), 16))}
  rng = np.random.default_rng(1)
  D = config.block.d_model
  batch = {"tokens": rng.integers(0, 16, (2, 5)).astype(np.int32),
           "feats": rng.normal(size=(2, 5, D)).astype(np.float32),
           "next_feats": rng.normal(size=(2, 5, D)).astype(np.float32),
           "weights": np.ones((2, 5), np.float32)}
  logits, _, _ = fd.forward(config, params, shared, batch["tokens"],
                            fd.normalize(shared, batch["feats"], config.block.norm_eps))
  top = np.asarray(shared["head_ids"])[np.asarray(jnp.argmax(logits, -1))]
  worst = np.asarray(shared["head_ids"])[np.asarray(jnp.argmin(logits, -1))]
  losses = []
  for ids in (top, worst):
    b = dict(batch, topk_ids=ids[..., None].astype(np.int32), topk_logp=np.zeros((2, 5, 1), np.float32))
    _, metrics = feature_train.loss_and_metrics(config, params, shared, b, jax.random.key(0), 0.0, 0.0, 1.0)
    losses.append(float(metrics["classify"]))
    assert float(metrics["top1"]) == (1.0 if ids is top else 0.0)
  assert losses[0] < losses[1]


def test_unrolled_steps_see_what_drafting_sees(setup):
  """Step k of the unrolled training pass, at position c + k, equals the (k+1)-th
  drafting step from committed pair c run through the cache as the loop runs it
  (true pairs 0..c, then the draft's own outputs), for every c."""
  _, _, config, params, shared = setup
  rng = np.random.default_rng(2)
  B, T, steps = 2, 7, 3
  tokens = jnp.asarray(rng.integers(0, 16, (B, T)), jnp.int32)
  feats = jnp.asarray(rng.normal(size=(B, T, config.block.d_model)), jnp.float32)
  unrolled = fd.unrolled_forward(config, params, shared, tokens, feats, steps)
  for c in range(T - steps + 1):
    cache = tr.init_cache(config.block, B, T)
    logits, out, cache = fd.forward(config, params, shared, tokens[:, :c + 1], feats[:, :c + 1], cache)
    logits, out = logits[:, -1], out[:, -1]
    for k in range(steps):
      np.testing.assert_allclose(logits, unrolled[k][0][:, c + k], atol=2e-5, err_msg=f"c={c} k={k}")
      np.testing.assert_allclose(out, unrolled[k][1][:, c + k], atol=2e-5, err_msg=f"c={c} k={k}")
      if k + 1 < steps:
        logits, out, cache = fd.forward(config, params, shared, tokens[:, c + k + 1:c + k + 2],
                                        out[:, None], cache)
        logits, out = logits[:, 0], out[:, 0]


def test_accepted_counts_each_chain_up_to_its_first_miss(setup):
  """`accepted` is the mean over whole chains of the hits before the first miss:
  with the target's top token set to the draft's own argmax everywhere except
  one position, the chains that reach that position stop there."""
  _, _, config, params, shared = setup
  shared = {**shared, "where": jnp.asarray(feature_train.head_mask(np.asarray(shared["head_ids"]), 16))}
  rng = np.random.default_rng(3)
  D, T, steps = config.block.d_model, 6, 2
  batch = {"tokens": rng.integers(0, 16, (1, T)).astype(np.int32),
           "feats": rng.normal(size=(1, T, D)).astype(np.float32),
           "next_feats": rng.normal(size=(1, T, D)).astype(np.float32),
           "weights": np.ones((1, T), np.float32)}
  outs = fd.unrolled_forward(config, params, shared, batch["tokens"],
                             fd.normalize(shared, batch["feats"], config.block.norm_eps), steps)
  head = np.asarray(shared["head_ids"])
  argmax = [head[np.asarray(jnp.argmax(logits, -1))][0] for logits, _ in outs]
  # Step 0 is right everywhere but position 3; step 1 is right everywhere (its own argmax).
  top = argmax[0].copy()
  top[3] = (top[3] + 1) % 16
  hits1 = argmax[1] == top
  b = dict(batch, topk_ids=top[None, :, None].astype(np.int32), topk_logp=np.zeros((1, T, 1), np.float32))
  _, metrics = feature_train.loss_and_metrics(config, params, shared, b, jax.random.key(0),
                                              0.0, 1.0, 1.0, unroll=steps)
  chains = [(1 + hits1[t + 1]) if t != 3 else 0 for t in range(T - 1)]  # chain t: steps at t, t + 1
  assert float(metrics["accepted"]) == pytest.approx(np.mean(chains))
  assert float(metrics["top1"]) == pytest.approx(5 / 6)


def test_curve_keeps_held_out_lines_and_the_last_of_a_repeated_step(tmp_path):
  lines = [{"step": 10, "loss": 1.0},
           {"step": 20, "val_top1": 0.1, "val_overlap": 0.2, "train_tokens_seen": 2000},
           {"step": 20, "val_top1": 0.3, "val_top1_2": 0.2, "val_overlap": 0.25, "val_accepted": 0.5,
            "train_tokens_seen": 2000}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
  rows = feature_curve.read(str(tmp_path))
  assert [r["val_top1"] for r in rows] == [0.3]
  table = feature_curve.markdown(rows, "t")
  assert "| 20 | 2k | 0.300 | 0.200 | 0.250 | 1.50 |" in table
