"""KV Prediction training (training/kvp_train.py, kvp_fit.py), KVP folders, and the
benchmark (eval/kvp): resumable training, the least-squares start, a continued run with an
exact tail, refused folders and fields, every benchmark phase. Decoding: tests/test_kvp.py.
"""

import dataclasses
import importlib.util
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from specsample.decoding import LM, common
from specsample.decoding import kv_prediction as kvpd
from specsample.models import io as model_io
from specsample.models import kv_predictor as kp
from specsample.training import kvp_fit, kvp_train
from conftest import TOKENIZER, write_tiny_setup

_spec = importlib.util.spec_from_file_location("kvp_config", "configs/kvp.py")
kvp_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kvp_config)

# -------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
  """Tiny target and draft folders with the real tokenizer, and a small corpus root."""
  return write_tiny_setup(tmp_path_factory.mktemp("kvp"), max_seq_len=64)


def _config(root, **overrides):
  c = kvp_config.get_config("runlocal")
  c.target_dir, c.aux_dir, c.tokenizer = str(root / "target"), str(root / "draft"), TOKENIZER
  c.data.corpus_root, c.data.cache_dir = str(root / "corpus"), str(root / "tokens")
  for key, value in overrides.items():
    node, (*parents, leaf) = c, key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def test_training_lowers_the_loss_resumes_exactly_and_exports_a_kvp(tiny_setup, tmp_path):
  c = _config(tiny_setup, checkpoint_every=3)
  full = kvp_train.run(c, str(tmp_path / "full"))
  # A run killed after step 3: its workdir holds step 3's checkpoint and the rows logged so far.
  (tmp_path / "staged" / "checkpoints").mkdir(parents=True)
  shutil.copytree(tmp_path / "full" / "checkpoints" / "3", tmp_path / "staged" / "checkpoints" / "3")
  with open(tmp_path / "full" / "metrics.jsonl") as f:
    rows = f.readlines()
  (tmp_path / "staged" / "metrics.jsonl").write_text("".join(rows))  # rows past 3 are dropped
  resumed = kvp_train.run(c, str(tmp_path / "staged"))
  assert resumed["step"] == full["step"] == c.num_steps
  target = model_io.load_lm(c.target_dir)
  a = kvpd.load_kvp(str(tmp_path / "full" / "model"), target)
  b = kvpd.load_kvp(str(tmp_path / "staged" / "model"), target)
  chex.assert_trees_all_equal((a.aux.params, a.params), (b.aux.params, b.params))
  with open(tmp_path / "staged" / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(set(steps))  # no duplicated rows after the resume
  # The same batch's loss, before and after the 6 steps.
  _, aux, config, _ = kvp_train.load_models(c)
  batch = kvp_train.SplitBatches(np.concatenate([np.arange(4096)] * 2), c).batch_at(0)
  loss = jax.jit(lambda aux_params, pred: kvp_train.kvp_loss(
      config, c.weights.to_dict(), c.data.continuation, 0, {"aux": aux_params, "predictor": pred},
      {"target": target.params}, batch)[0])
  before = loss(aux.params, kp.init_params(config, jax.random.key(c.seed)))
  assert float(loss(a.aux.params, a.params)) < float(before)
  # The auxiliary model is an ordinary model folder (usable as draft=).
  chex.assert_trees_all_equal(model_io.load_lm(str(tmp_path / "full" / "model" / "aux")).params,
                              a.aux.params)


def test_training_from_the_least_squares_fit_with_a_frozen_auxiliary(tiny_setup, tmp_path):
  """configs/kvp.py:pair=smollm2's recipe on the tiny pair: a pruned auxiliary, frozen;
  the predictor starts from its fit (exported alone as fit_model/) and only the target's
  CE trains it."""
  c = _config(tiny_setup, aux="pruned", keep_layers=(0,), init="lstsq", train_aux=False,
              **{"weights.aux_ce": 0.0, "weights.l1": 0.0})
  kvp_train.run(c, str(tmp_path))
  target = model_io.load_lm(c.target_dir)
  fitted = kvpd.load_kvp(str(tmp_path / "fit_model"), target)
  trained = kvpd.load_kvp(str(tmp_path / "model"), target)
  assert fitted.layer_map == trained.layer_map and fitted.layer_map[0] == 0
  w = np.asarray(fitted.params["layer_0_k"])
  np.testing.assert_array_equal(w.reshape(w.shape[0], -1), np.eye(w.shape[0]))  # exact copy
  chex.assert_trees_all_equal(trained.aux.params, fitted.aux.params)  # frozen
  # ... so not stored: load_kvp rebuilds it from the target's layers, and checks its fingerprint.
  assert not (tmp_path / "model" / "aux").exists()
  assert json.loads((tmp_path / "model" / "kvp.json").read_text())["aux_keep_layers"] == [0]
  config = kvpd.kvp_config(target, trained)
  batch = kvp_train.SplitBatches(np.concatenate([np.arange(4096)] * 2), c).batch_at(0)
  loss = jax.jit(lambda pred: kvp_train.kvp_loss(
      config, c.weights.to_dict(), c.data.continuation, 0, {"predictor": pred},
      {"target": target.params, "aux": fitted.aux.params}, batch))
  total, parts = loss(trained.params)
  assert float(total) == float(parts["target_ce"]) > 0
  assert float(parts["aux_ce"]) == float(parts["l1"]) == 0.0  # weight 0: not computed
  moved = [k for k in trained.params if not np.array_equal(trained.params[k], fitted.params[k])]
  assert len(moved) == len(trained.params)  # every map learned (test_training_lowers_the_loss...
  # checks that training lowers the loss)
  # Continued from that folder with an exact tail: its layer map and start, the tail recorded.
  c2 = _config(tiny_setup, aux="pruned", keep_layers=(0,), init="kvp", train_aux=False,
               init_dir=str(tmp_path / "model"), exact_tail=3,
               **{"weights.aux_ce": 0.0, "weights.l1": 0.0})
  kvp_train.run(c2, str(tmp_path / "tail"))
  tailed = kvpd.load_kvp(str(tmp_path / "tail" / "model"), target)
  assert tailed.exact_tail == 3 and tailed.layer_map == trained.layer_map
  with_tail = jax.jit(lambda pred: kvp_train.kvp_loss(
      config, c.weights.to_dict(), c.data.continuation, 3, {"predictor": pred},
      {"target": target.params, "aux": fitted.aux.params}, batch)[0])
  assert float(with_tail(trained.params)) != float(total)  # the tail changes the loss
  # It started from the folder's predictor: 6 Adam steps of lr <= 1e-3 move each weight
  # by at most ~6e-3, far less than the distance to a random or least-squares start.
  for k in tailed.params:
    step = np.abs(np.asarray(tailed.params[k]) - np.asarray(trained.params[k])).max()
    assert 0 < step < 0.02, (k, step)


def test_least_squares_fit_of_the_target_from_itself_recovers_its_cache(tiny_pair):
  """The target as its own auxiliary: the fit must choose layer i for target layer i and
  predict the cache (moments, solve, layer choice and parameter layout all have to be right)."""
  target, _ = tiny_pair
  config = kp.KVPConfig(target.config, target.config).validate()
  tokens = np.random.default_rng(0).integers(0, 16, 4096)
  fit = ml_collections.ConfigDict({"num_windows": 8, "window": 32, "ridge": 1e-6})
  layer_map, params, unexplained = kvp_fit.fit(config, target, target, tokens, fit, exact={})
  assert layer_map == (0, 1)
  assert max(unexplained["k"] + unexplained["v"]) < 1e-3
  prompts_BP = jnp.asarray(tokens[None, :24].astype(np.int32))
  real = common.prefill(target.config, target.params, common.init_buffer(prompts_BP, 32),
                        jnp.array([24]), 24)
  pred = kp.predict_cache(dataclasses.replace(config, layer_map=layer_map), params, real)
  for a, b in zip(pred.k + pred.v, real.k + real.v):
    np.testing.assert_allclose(a[:, :23], b[:, :23], atol=2e-3, rtol=1e-2)


def test_a_predictor_for_another_target_or_auxiliary_is_refused(tiny_setup, tmp_path):
  c = _config(tiny_setup)
  target = model_io.load_lm(c.target_dir)
  aux = model_io.load_lm(c.aux_dir)
  config = kp.KVPConfig(target.config, aux.config).validate()
  folder = str(tmp_path / "kvp")
  kvpd.save_kvp(folder, target, aux, kp.init_params(config, jax.random.key(0)), config.layer_map)
  other = LM(target.config, jax.tree_util.tree_map(lambda x: x * 2, target.params))
  with pytest.raises(ValueError, match="was trained for target"):
    kvpd.load_kvp(folder, other)
  with pytest.raises(ValueError, match="was trained with auxiliary model"):
    kvpd.check_aux_fingerprint(folder, LM(aux.config, jax.tree_util.tree_map(lambda x: x + 1,
                                                                             aux.params)))
  kvpd.load_kvp(folder, target, max_seq_len=128)  # a longer max_seq_len keeps the identity
  # An auxiliary saved as "the target's own layers" must be exactly them.
  with pytest.raises(ValueError, match=r"aux_keep_layers=\[0\]: the auxiliary is not these layers"):
    kvpd.save_kvp(str(tmp_path / "kvp2"), target, aux, kp.init_params(config, jax.random.key(0)),
                  config.layer_map, aux_keep_layers=(0,))


@pytest.mark.parametrize("field, value, message", [
    ("aux", "small", "config.aux must be one of"),
    ("data.min_prompt", 1, "config.data.min_prompt must be in"),
    ("weights.l1", -1.0, "config.weights.l1 must be a number >= 0"),
    ("keep_layers", (1, 0), "kvp.keep_layers must be increasing"),
    ("layer_map", (0, 0, 0), "kvp.layer_map must have one entry per target layer"),
    ("init", "zeros", "config.init must be one of"),
    ("fit.ridge", 0.0, "config.fit.ridge must be a number > 0"),
    ("fit.window", 65, "config.fit.window = 65 exceeds the target's max_seq_len=64"),
    ("exact_tail", -2, "config.exact_tail must be an int >= 0, got -2"),
    ("init", "kvp", "config.init='kvp' needs config.init_dir"),
])
def test_bad_training_config_fields_are_named(tiny_setup, tmp_path, field, value, message):
  c = _config(tiny_setup, **{field: value})
  if field in ("keep_layers",):
    c.aux = "pruned"
  if field.startswith("fit."):
    c.init = "lstsq"
  with pytest.raises(ValueError, match=message):
    kvp_train.check_config(c)
    kvp_train.load_models(c)


# ----------------------------------------------------------------------- the benchmark

def test_the_benchmark_runs_every_phase_and_scores_an_exact_tail(tiny_setup, tmp_path):
  """scripts/eval_kvp.py's phases end to end on a tiny trained predictor (configs/kvp_eval.py
  runlocal): the same folder scored with and without an exact tail, the lookup latency
  settings; the numbers are smoke, the structure and the tail's effect are checked."""
  from specsample.eval.kvp import bench, report as kvp_report  # pylint: disable=g-import-not-at-top
  c = _config(tiny_setup, aux="pruned", keep_layers=(0,), train_aux=False)
  kvp_train.run(c, str(tmp_path / "train"))
  spec = importlib.util.spec_from_file_location("kvp_eval_config", "configs/kvp_eval.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  e = module.get_config("runlocal")
  e.target_dir, e.tokenizer = c.target_dir, TOKENIZER
  e.corpus_root, e.cache_dir, e.out_dir = c.data.corpus_root, c.data.cache_dir, str(tmp_path / "out")
  e.max_seq_len, e.ttft_prompt_lens = 512, (32,)  # HumanEval prompts are ~150 tokens
  e.kvp_dirs = ml_collections.ConfigDict({"plain": str(tmp_path / "train" / "model"),
                                          "tail": str(tmp_path / "train" / "model")})
  e.exact_tail = ml_collections.ConfigDict({"tail": 4})
  e.quality.humaneval_limit, e.quality.tail = 2, 4
  e.latency.aux, e.latency.lookup = "tail", True
  e.phases = ("quality", "timing", "tasks")
  e.tasks.aux, e.tasks.docsum_dir = "tail", str(tmp_path / "docsum")
  results = bench.run(e)
  for task in ("validation", "humaneval"):
    row = results["quality"][task]
    assert row["kvp_plain"] != row["kvp_tail"]  # the tail is scored, not the folder's 0
    assert row["aux_plain"] == row["aux_tail"]
  assert {(r["method"], r["aux"]) for r in results["ttft"]} == {
      ("full", None), ("kvp", "plain"), ("aux", "plain"), ("kvp", "tail"), ("aux", "tail")}
  assert {r["setting"] for r in results["latency"]} == {"sps", "sps_kvp", "ar_kvp", "ar",
                                                       "sps_lookup", "sps_lookup_kvp",
                                                       "lookup_auto", "lookup_auto_kvp"}
  # Task quality on long prompts: both variants, both settings scored item by item.
  assert set(results["tasks"]) == {"humaneval_long", "summary_long"}
  for name, row in results["tasks"].items():
    assert row["items"] == 2 and len(row["per_item"]["full"]) == len(row["per_item"]["kvp"]) == 2
    assert row["metric"] == ("pass@1" if name == "humaneval_long" else "ROUGE-2")
    assert 0 <= row["common_prefix"] <= e.tasks.max_new_tokens and 0 <= row["identical"] <= 1
    assert row["difference"] == pytest.approx(np.mean(row["per_item"]["kvp"])
                                              - np.mean(row["per_item"]["full"]))
  report = (tmp_path / "out" / "kvp.md").read_text()
  assert "`tail`: aux_kind=pruned" in report and "exact tail 4" in report
  assert "## Task quality on long prompts" in report and "| summary_long | 2 |" in report
  # A later phase with another predictor beside them (configs/kvp_eval.py stage1=): each
  # table shows the predictors it has rows for (this crashed two real runs' reports).
  results["config"]["kvp_dirs"]["later"] = "elsewhere"
  assert "KVP (later)" not in kvp_report.markdown(results)
  kvp_report.plot(results, str(tmp_path / "plot.png"))


def test_eval_config_names_a_bad_phase_or_task_setting_in_one_line():
  from specsample.eval.kvp import tasks  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("kvp_eval_config", "configs/kvp_eval.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with pytest.raises(ValueError, match="phases must be quality, timing, latency, tasks"):
    module.get_config("phases=quality+task")
  with pytest.raises(ValueError, match="tail must be a whole number >= 0, got 'x'"):
    module.get_config("tail=x")
  assert module.get_config("pair=smollm2,tail=256").exact_tail.to_dict() == {"pruned4": 256}
  e = module.get_config("pair=smollm2,phases=tasks")
  tasks.check_config(e)  # the shipped setting passes
  e.tasks.aux = "draft"
  with pytest.raises(ValueError, match=r"config.tasks.aux must name one of config.kvp_dirs \(pruned4\)"):
    tasks.check_config(e)
  e.tasks.aux, e.tasks.num_items = "pruned4", 0
  with pytest.raises(ValueError, match="config.tasks.num_items must be >= 1, got 0"):
    tasks.check_config(e)
