"""Draft alignment: the losses against float64 references, the distillation set, fine-tuning."""

import importlib.util
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specsample.alignment import data as data_lib
from specsample.alignment import distill
from specsample.alignment import evaluate
from specsample.alignment import losses
from specsample.alignment import teacher
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer
from conftest import TOKENIZER, tiny_config, write_tiny_setup

_spec = importlib.util.spec_from_file_location("distill_config", "configs/distill.py")
distill_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(distill_config)


def _softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference(name, z, target_z):
  """(loss, d loss / d z) in float64 for one position's draft logits z."""
  p, q = _softmax64(z), _softmax64(target_z)
  if name == "fkl":
    return (q * np.log(q / p)).sum(), p - q
  if name == "rkl":
    l = np.log(p / q)
    return (p * l).sum(), p * (l - (p * l).sum())
  s = (p > q).astype(np.float64)  # tvd
  return np.maximum(p - q, 0).sum(), s * p - p * (s * p).sum()


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd"])
def test_exact_losses_and_gradients_match_float64(name):
  rng = np.random.default_rng(0)
  draft_BTV = rng.normal(size=(2, 3, 7)) * 2
  target_BTV = rng.normal(size=(2, 3, 7)) * 2
  mask_BT = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
  fn = losses.get_loss(name)
  value, grads = jax.value_and_grad(lambda z: fn(z, jnp.asarray(target_BTV, jnp.float32),
                                                 mask_BT)[0])(jnp.asarray(draft_BTV, jnp.float32))
  ref_value, ref_grads = 0.0, np.zeros_like(draft_BTV)
  count = mask_BT.sum()
  for b, t in zip(*np.nonzero(mask_BT)):
    v, g = _reference(name, draft_BTV[b, t], target_BTV[b, t])
    ref_value += v / count
    ref_grads[b, t] = g / count
  np.testing.assert_allclose(float(value), ref_value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grads), ref_grads, atol=1e-6)


def test_tvdpp_expected_gradient_points_along_exact_tvd_gradient():
  """Cosine(TVD++ gradient, exact TVD gradient) > 0.9 with 4096 draws per position.

  The estimator averages 16 x 4096 per-draw terms of norm O(1), so its noise
  is ~0.01 of the signal here: a cosine under 0.9 would need a ~10x larger
  deviation, probability < 1e-12 for any key (the key is fixed: deterministic).
  A reward with the wrong sign gives cosine < -0.9, so the test can fail.
  """
  rng = np.random.default_rng(1)
  draft = jnp.asarray(rng.normal(size=(4, 4, 6)) * 1.5, jnp.float32)
  target = jnp.asarray(rng.normal(size=(4, 4, 6)) * 1.5, jnp.float32)
  mask = jnp.ones((4, 4))
  key = jax.random.key(0)
  pg = jax.grad(lambda z: losses.tvdpp(z, target, mask, key, num_samples=4096)[0])(draft)
  exact = jax.grad(lambda z: losses.tvd(z, target, mask)[0])(draft)
  cosine = float((pg * exact).sum() / jnp.linalg.norm(pg) / jnp.linalg.norm(exact))
  assert cosine > 0.9, cosine
  wrong = jax.grad(lambda z: losses.tvdpp(z, target, mask, key, num_samples=4096)[0])(-draft)
  exact_wrong = jax.grad(lambda z: losses.tvd(z, target, mask)[0])(-draft)
  assert float((wrong * exact_wrong).sum()) > 0  # sanity: same sign on another point
  assert float((-pg * exact).sum() / jnp.linalg.norm(pg) / jnp.linalg.norm(exact)) < -0.9


@pytest.mark.parametrize("name", losses.LOSSES)
def test_every_loss_has_zero_gradient_when_draft_equals_target(name):
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 9)), jnp.float32)
  grads = jax.grad(lambda z: losses.get_loss(name)(z, logits, jnp.ones((2, 5)),
                                                   jax.random.key(0))[0])(logits)
  chex.assert_trees_all_close(grads, jnp.zeros_like(grads), atol=1e-6)


def test_unknown_loss_names_the_known_ones():
  with pytest.raises(ValueError, match=r"fkl.*rkl.*tvd.*tvdpp"):
    losses.get_loss("kl")
  with pytest.raises(ValueError, match="unknown argument"):
    distill_config.get_config("lose=fkl")


# --- the distillation set and fine-tuning, on tiny models -------------------

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
  """Tiny target and draft folders with the real tokenizer, and a small corpus root."""
  return write_tiny_setup(tmp_path_factory.mktemp("align"), max_seq_len=128)


def _config(root, workdir, **overrides):
  c = distill_config.get_config("runlocal")
  c.target_dir, c.draft_dir = str(root / "target"), str(root / "draft")
  c.tokenizer, c.data.corpus_root = TOKENIZER, str(root / "corpus")
  c.data.data_dir = str(root / "data")  # shared by the tests that use the runlocal set
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def test_distillation_set_resumes_exactly_and_refuses_another_target(tiny_setup, tmp_path):
  c = _config(tiny_setup, tmp_path, **{"data.batches_per_setting": 2,
                                       "data.data_dir": str(tmp_path / "data")})
  target, _, tok = distill.load_pair(c)
  files = distill.corpus_lib.build_corpus(root=c.data.corpus_root).train
  shards = data_lib.build(c, target, tok, c.data.data_dir, files)
  assert len(shards) == 2 * len(c.data.settings)
  rows = data_lib.load_rows(c.data.data_dir)
  assert len(rows) == len(shards) * c.data.batch_size
  for row in rows:
    assert c.data.min_prompt_tokens <= len(row["prompt"]) <= c.data.max_prompt_tokens
    assert 1 <= len(row["completion"]) <= c.data.max_new_tokens
  # A killed run: one shard missing, one half-written temporary left behind.
  with open(shards[1], "rb") as f:
    original = f.read()
  os.remove(shards[1])
  with open(shards[1] + ".tmp", "wb") as f:
    f.write(b"partial")
  data_lib.build(c, target, tok, c.data.data_dir, files)
  assert data_lib.load_rows(c.data.data_dir) == rows
  with open(shards[1], "rb") as f:
    assert f.read() == original
  # Another target: refused, naming the field.
  other = target.__class__(config=target.config, params=jax.tree_util.tree_map(
      lambda x: x + 1, target.params), tokenizer_id=target.tokenizer_id)
  with pytest.raises(ValueError, match="another target.*target:"):
    data_lib.build(c, other, tok, c.data.data_dir, files)


def test_prompt_source_too_short_is_a_clear_error(tiny_setup):
  tok = Tokenizer.load(TOKENIZER)
  files = distill.corpus_lib.build_corpus(root=str(tiny_setup / "corpus")).train
  with pytest.raises(ValueError, match="too little text"):
    data_lib.sample_prompts(files, tok, 4, min_tokens=5000, max_tokens=6000, seed=(0,))
  assert data_lib.sample_prompts(files, tok, 3, 8, 24, (0,)) == \
      data_lib.sample_prompts(files, tok, 3, 8, 24, (0,))


def test_pair_with_another_tokenizer_is_refused(tiny_setup, tmp_path):
  cfg = tiny_config(128)
  model_io.save_lm(str(tmp_path / "draft"), cfg, tr.init_params(cfg, jax.random.key(3)),
                   tokenizer_id="someothertokenizer", store_dtype="float32")
  c = _config(tiny_setup, tmp_path)
  c.draft_dir = str(tmp_path / "draft")
  with pytest.raises(ValueError, match="draft .* another tokenizer"):
    distill.load_pair(c)


@pytest.mark.parametrize("loss", ["tvdpp"])  # fkl: same loop, exact loss tested above
def test_finetuning_resumes_exactly_and_exports_the_draft(tiny_setup, tmp_path, loss):
  c = _config(tiny_setup, tmp_path, loss=loss)
  full = distill.run(c, str(tmp_path / "full"))
  staged = _config(tiny_setup, tmp_path, loss=loss, stop_after_step=2)
  distill.run(staged, str(tmp_path / "staged"))
  staged.stop_after_step = 0
  resumed = distill.run(staged, str(tmp_path / "staged"))
  assert resumed["step"] == full["step"] == c.num_steps
  a = model_io.load_lm(str(tmp_path / "full" / "model"))
  b = model_io.load_lm(str(tmp_path / "staged" / "model"))
  chex.assert_trees_all_equal(a.params, b.params)
  assert os.path.exists(tmp_path / "full" / "model" / "metrics.jsonl")
  start = model_io.load_lm(c.draft_dir)
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a.params),
                                                       jax.tree_util.tree_leaves(start.params)))
  with open(tmp_path / "staged" / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(set(steps))  # no duplicated rows after the resume


def test_bad_config_fields_are_named(tiny_setup, tmp_path):
  c = _config(tiny_setup, tmp_path, **{"data.settings": ("greedy", "hot")})
  with pytest.raises(ValueError, match="data.settings"):
    distill.check_config(c)
  c = _config(tiny_setup, tmp_path, **{"data.source": "web"})
  with pytest.raises(ValueError, match="data.source"):
    distill.check_config(c)
  c = _config(tiny_setup, tmp_path, seq_len=8)
  with pytest.raises(ValueError, match="seq_len"):
    distill.check_config(c)


def test_evaluation_of_a_draft_equal_to_the_target(tiny_setup, tmp_path):
  """A draft identical to the target: alpha 1 and nearly K + 1 tokens per target call."""
  spec = importlib.util.spec_from_file_location("align_eval_config", "configs/align_eval.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("runlocal")
  c.target_dir, c.tokenizer, c.corpus_root = str(tiny_setup / "target"), TOKENIZER, str(
      tiny_setup / "corpus")
  c.min_prompt_tokens, c.max_prompt_tokens = 8, 32
  c.drafts = (f"same={tiny_setup / 'target'}",)
  # Few shapes, few compiles: the timed calls take the 4 prompts in one batch, the shape of
  # the continuation and tau calls (speed_k = 2 = k_values[0]), whose loops they reuse.
  c.k_values, c.speed_batches, c.speed_prompts = (2,), (4,), 4
  results = evaluate.run(c)
  same = results["drafts"]["same"]
  for sampling in evaluate.SAMPLINGS:
    assert abs(same[sampling]["alpha"] - 1.0) < 1e-5
    assert all(same[sampling]["tau"][k] > k for k in c.k_values)
    # Timings only add up (a measured speed depends on the machine's load).
    assert all(s["speedup"] == pytest.approx(s["ar_ms_per_token"] / s["sps_ms_per_token"])
               for s in same[sampling]["speed"].values())
  paths = evaluate.write_results(results, str(tmp_path / "out"), "test")
  assert all(os.path.getsize(p) > 0 for p in paths)
  with open(paths[1]) as f:
    assert "| same | greedy | 1.000 |" in f.read()


def test_coarse_losses_are_exact_with_the_whole_vocabulary_and_lower_bounds_otherwise():
  rng = np.random.default_rng(4)
  draft = jnp.asarray(rng.normal(size=(2, 3, 12)) * 2, jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 3, 12)) * 2, jnp.float32)
  mask = jnp.ones((2, 3))
  log_q = jax.nn.log_softmax(target, -1)
  for k, exact in ((12, True), (4, False)):
    logq_k, ids_k = jax.lax.top_k(log_q, k)
    coarse_p, coarse_q = teacher.coarsen(draft, ids_k, logq_k)
    for name in ("fkl", "rkl", "tvd"):
      fn = losses.get_loss(name)
      full, coarse = float(fn(draft, target, mask)[0]), float(fn(coarse_p, coarse_q, mask)[0])
      if exact:
        assert abs(full - coarse) < 1e-4, (name, full, coarse)
      else:
        assert coarse <= full + 1e-6, (name, full, coarse)  # data processing inequality


def test_teacher_cache_is_the_targets_top_k_and_is_reused(tiny_setup, tmp_path):
  target = model_io.load_lm(str(tiny_setup / "target"))
  inputs = np.random.default_rng(5).integers(4, 4096, size=(3, 16)).astype(np.int32)
  ids, logq = teacher.topk_cache(target, inputs, 5, str(tmp_path), batch=2)
  log_q = jax.nn.log_softmax(tr.forward(target.config, target.params, inputs)[0], -1)
  ref_logq, ref_ids = jax.lax.top_k(log_q, 5)
  np.testing.assert_array_equal(ids, np.asarray(ref_ids))
  np.testing.assert_allclose(logq, np.asarray(ref_logq), atol=1e-5)
  (cached,) = [f for f in os.listdir(tmp_path) if f.startswith("teacher-top5-")]
  again = teacher.topk_cache(target, inputs, 5, str(tmp_path))
  np.testing.assert_array_equal(again[0], ids)
  assert os.listdir(tmp_path) == [cached]


def test_rows_keep_their_whole_completion_when_cropped():
  rows = [{"prompt": list(range(10, 40)), "completion": [7, 8, 9, 2]},
          {"prompt": [1, 5], "completion": [6, 2]}]
  b = data_lib.DistillBatches(rows, seq_len=8, batch_size=2, seed=0, loss_on="completion")
  np.testing.assert_array_equal(b.tokens[0], [35, 36, 37, 38, 39, 7, 8, 9, 2])
  np.testing.assert_array_equal(b.mask[0], [0, 0, 0, 0, 1, 1, 1, 1])  # predicts 7, 8, 9, 2
  np.testing.assert_array_equal(b.mask[1], [0, 1, 1, 0, 0, 0, 0, 0])  # 5 -> 6, 6 -> 2
  full = data_lib.DistillBatches(rows, seq_len=8, batch_size=2, seed=0, loss_on="all")
  assert full.mask[0].sum() == 8 and full.mask[1].sum() == 3


def test_corpus_baseline_trains_with_the_exact_target(tiny_setup, tmp_path):
  c = _config(tiny_setup, tmp_path, **{"data.source": "corpus",
                                       "data.cache_dir": str(tmp_path / "tokens"),
                                       "data.data_dir": str(tmp_path / "data")})
  last = distill.run(c, str(tmp_path / "baseline"))
  assert last["step"] == c.num_steps and 0 < last["tvd"] < 1
  assert not os.path.exists(tmp_path / "data")  # no distillation set was built
  model_io.load_lm(str(tmp_path / "baseline" / "model"))


def test_script_bad_loss_is_one_line_and_exit_status_2(tmp_path):
  proc = subprocess.run([sys.executable, "scripts/distill.py", "--config=configs/distill.py:loss=kl",
                         f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if "error:" in l]
  assert len(lines) == 1 and "loss must be one of ('fkl', 'rkl', 'tvd', 'tvdpp')" in lines[0]
  assert not os.listdir(tmp_path)  # nothing written
