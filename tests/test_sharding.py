"""Sharded equals unsharded, on 8 fake CPU devices (tests/conftest.py).

For each mesh of tests/sharding_case.py, the issue's (8, 1), (2, 4), (1, 8) as
(batch-parallel, tensor): forward logits and two AdamW steps agree with the
unsharded ones within float32 tolerance, and greedy autoregressive and greedy
speculative decoding give identical tokens. Also: parameters and training
state created already sharded, a compiled loop reused for new prompts with
caches laid out by each model's rules, clear errors on bad meshes, rules and
shapes, and the dry run's byte counts.

XLA compiles are the cost here (seconds each on 2 cores): one per mesh and
function, the references once per module; random-init compiles are avoided
(host numpy weights) except in the one test that checks them.
tests/test_multihost.py reuses the (2, 4) speculative loop.
"""

import functools
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from specsample import dry_run
from specsample import sharding as sh
from specsample.decoding import api, generate
from specsample.models import io as model_io
from specsample.models import presets
from specsample.models import transformer as tr
from specsample.training import train as train_lib

import sharding_case as case

MESHES = list(case.MESH_SHAPES)


@pytest.fixture(scope="module")
def pair():
  return case.target_lm(), case.draft_lm()


@functools.lru_cache(maxsize=None)
def mesh_named(name: str):
  return sh.make_mesh(case.MESH_SHAPES[name])


def _tokens(seed: int, shape=(8, 16)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, case.TARGET_CFG.vocab_size, shape, np.int32)


# ------------------------------------------------------------ parameters and forward

def test_params_and_train_state_created_sharded(reference_training):
  """jax.jit(init, out_shardings=...): each device creates only its shards, and
  the values equal the unsharded init (JAX's partitionable threefry). One mesh:
  random-init compiles are the slowest here."""
  cfg = case.TARGET_CFG
  mesh = mesh_named(case.MULTIHOST_MESH)
  expected = sh.param_shardings(cfg, mesh, case.TARGET_RULES)
  params = sh.init_params(cfg, mesh, case.TARGET_RULES, jax.random.key(0))
  assert jax.tree_util.tree_map(lambda x: x.sharding, params) == expected
  q = params["layer_0"]["attn"]["q"]               # [D, N, H]: embed over fsdp, heads over tensor
  assert q.sharding.spec == P("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (32 // 2, 8 // 4, 4)
  reference = reference_training[0].params          # jax.jit(init_state) on one device, seed 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, reference)

  # init_train_state's out_shardings (checked without a further compile): Adam
  # moments are laid out like their parameters, counters replicated.
  state = train_lib.train_state_shardings(cfg, train_lib.make_optimizer(_train_config()), mesh,
                                   case.TARGET_RULES)
  adam = state.opt_state[1][0]                      # chain(clip, adamw(scale_by_adam, ...))
  assert state.params == expected and adam.mu == expected and adam.nu == expected
  assert adam.count.is_fully_replicated and state.step.is_fully_replicated


@pytest.fixture(scope="module")
def reference_logits(pair):
  target, _ = pair
  logits, _ = jax.jit(functools.partial(tr.forward, target.config))(target.params, _tokens(0))
  return np.asarray(logits)


@pytest.mark.parametrize("mesh_name", MESHES)
def test_forward_logits_match_unsharded(pair, reference_logits, mesh_name):
  target, _ = pair
  mesh = mesh_named(mesh_name)
  shardings = sh.param_shardings(target.config, mesh, case.TARGET_RULES)
  params = sh.shard_params(target.params, target.config, mesh, case.TARGET_RULES)
  batch = sh.batch_sharding(mesh, case.TARGET_RULES, (8, 16))
  logits_spec = sh.logical_to_spec(("batch", "seq", "vocab"), (8, 16, target.config.vocab_size),
                                   mesh, case.TARGET_RULES, what="logits")
  forward = jax.jit(lambda p, t: tr.forward(target.config, p, t)[0],
                    in_shardings=(shardings, batch), out_shardings=NamedSharding(mesh, logits_spec))
  logits = forward(params, _tokens(0))
  shape = case.MESH_SHAPES[mesh_name]
  assert logits.addressable_shards[0].data.shape == (
      8 // (shape["data"] * shape["fsdp"]), 16, 32 // shape["tensor"])
  np.testing.assert_allclose(np.asarray(logits), reference_logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- training

def _load_config(path: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(
      os.path.basename(path)[:-3] + "_config", os.path.join(os.path.dirname(__file__), "..", path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _train_config(mesh_shape: dict | None = None):
  """configs/train.py for TARGET_CFG: 2 steps of 8 x 16 tokens at a constant rate
  of 1e-2 (no warmup: the first step already moves the weights)."""
  c = _load_config("configs/train.py", "model=tiny,runlocal")
  c.model = dict(case.TARGET_CFG.__dict__)
  c.data.batch_size, c.data.seq_len = 8, 16
  c.num_steps, c.optim.warmup_steps, c.optim.peak_lr, c.optim.min_lr_ratio = 2, 0, 1e-2, 1.0
  c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 1, 2, 1, 2
  if mesh_shape is not None:
    c.mesh.update(mesh_shape)
  return c


def _batches():
  out = []
  for seed in (1, 2):
    tokens = _tokens(seed, (8, 17))
    out.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                "weights": (np.arange(16) < 14).astype(np.float32)[None].repeat(8, 0)})
  return out


class _Data:
  """train()'s `datasets`: the two batches above; validation is the first."""

  def batch_at(self, step: int) -> dict:
    return _batches()[step]

  def val_batches(self, n: int) -> list[dict]:
    return _batches()[:n]


@pytest.fixture(scope="module")
def reference_training():
  """Two unsharded steps from the jitted init (the init every mesh reproduces)."""
  config = _train_config()
  optimizer = train_lib.make_optimizer(config)
  state = jax.jit(lambda: train_lib.init_state(case.TARGET_CFG, optimizer, config.seed))()
  initial = jax.device_get(state)  # host copy: the step donates its input state
  step = train_lib.make_train_step(case.TARGET_CFG, optimizer)
  metrics = []
  for batch in _batches():
    state, m = step(state, batch)
    metrics.append({k: float(v) for k, v in m.items()})
  val_loss = train_lib.evaluate(train_lib.make_eval_step(case.TARGET_CFG), state.params,
                                _Data().val_batches(1))
  return initial, jax.device_get(state), metrics, val_loss


def _assert_state_close(got, want):
  # AdamW divides by sqrt(v): where a weight's two gradients nearly cancel, float32
  # rounding of the (differently ordered) sharded sums is amplified, up to ~3e-5
  # here; a missing reduction would move weights by ~lr = 1e-2 and change the loss.
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mesh_name", MESHES)
def test_train_steps_match_unsharded(reference_training, mesh_name):
  initial, ref_state, ref_metrics, _ = reference_training
  mesh = mesh_named(mesh_name)
  optimizer = train_lib.make_optimizer(_train_config())
  shardings = train_lib.train_state_shardings(case.TARGET_CFG, optimizer, mesh, case.TARGET_RULES)
  state = jax.device_put(initial, shardings)
  step = train_lib.make_sharded_train_step(case.TARGET_CFG, optimizer, mesh, case.TARGET_RULES,
                                    batch_size=8, seq_len=16)
  for batch, ref in zip(_batches(), ref_metrics):
    state, metrics = step(state, batch)
    for k in ("loss", "grad_norm"):
      np.testing.assert_allclose(float(metrics[k]), ref[k], rtol=1e-5, err_msg=k)
  assert int(state.step) == 2
  assert jax.tree_util.tree_map(lambda x: x.sharding, state) == shardings  # out_shardings kept
  _assert_state_close(state, ref_state)


def test_train_loop_on_a_mesh(reference_training, tmp_path):
  """training.train with config.mesh: state created sharded (init_train_state),
  sharded steps and evaluation, orbax checkpoint, metrics from process 0; the
  same numbers as the unsharded reference."""
  initial, ref_state, ref_metrics, ref_val_loss = reference_training
  mesh_shape = case.MESH_SHAPES[case.MULTIHOST_MESH]
  last = train_lib.train(_train_config(mesh_shape), str(tmp_path), datasets=_Data())
  np.testing.assert_allclose(last["loss"], ref_metrics[1]["loss"], rtol=1e-5)
  np.testing.assert_allclose(last["val_loss"], ref_val_loss, rtol=1e-5)
  mesh = sh.make_mesh(mesh_shape)
  assert (jax.tree_util.tree_map(lambda x: x.sharding, last["params"])
          == sh.param_shardings(case.TARGET_CFG, mesh, case.TARGET_RULES))
  _assert_state_close(last["params"], ref_state.params)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert json.loads((tmp_path / "config.json").read_text())["mesh"] == mesh_shape
  assert (tmp_path / "checkpoints" / "2").is_dir()

  # Export: restored onto the run's mesh from abstract shapes (no init), or onto
  # one device; both give the trained params, stored in bfloat16.
  stored = jax.tree_util.tree_map(
      lambda x: np.asarray(jax.device_get(x)).astype(jnp.bfloat16).astype(np.float32),
      last["params"])
  for one_device in (False, True):
    out = tmp_path / f"model-{one_device}"
    assert train_lib.export_run(str(tmp_path), str(out), one_device=one_device) == 2
    model = model_io.load_lm(str(out))
    assert model.config == case.TARGET_CFG
    jax.tree_util.tree_map(np.testing.assert_array_equal, model.params, stored)
    assert json.loads((out / "config.json").read_text())["trained_steps"] == 2
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "metrics.jsonl").read_text()


# ------------------------------------------------------------------------- decoding

@pytest.fixture(scope="module")
def greedy_reference(pair):
  target, _ = pair
  return generate(target, case.PROMPTS, method="autoregressive", **case.DECODE)


@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("method", ["autoregressive", "speculative"])
def test_greedy_decoding_matches_unsharded(pair, greedy_reference, method, mesh_name):
  """Identical tokens. Greedy speculative == greedy autoregressive unsharded
  (tests/test_decoding.py), so one unsharded reference serves both methods."""
  target, draft = pair
  mesh = mesh_named(mesh_name)
  out = generate(target, case.PROMPTS, draft=draft, mesh=mesh, method=method,
                 rules=case.TARGET_RULES, draft_rules=case.DRAFT_RULES, **case.DECODE)
  assert out.tokens == greedy_reference.tokens
  assert [len(t) for t in out.tokens] == [case.DECODE["max_new_tokens"]] * len(case.PROMPTS)
  if method == "speculative":
    assert (out.stats["drafted"] == case.DECODE["num_draft"] * out.stats["target_calls"]).all()
    assert (out.stats["target_calls"] < case.DECODE["max_new_tokens"]).any()  # some drafts kept


def test_auto_k_on_a_mesh_calibrates_on_its_own_iterations(pair, greedy_reference):
  """num_draft as a set on a mesh: the state crosses the timed segments in the layouts of
  loops.state_shardings (caches split by the rules) and decoding carries on from it."""
  target, draft = pair
  kwargs = dict(case.DECODE, num_draft=(0, 1, 3))
  out = generate(target, case.PROMPTS, draft=draft, mesh=mesh_named(case.MULTIHOST_MESH),
                 rules=case.TARGET_RULES, draft_rules=case.DRAFT_RULES, **kwargs)
  assert out.tokens == greedy_reference.tokens


def test_sharded_loop_compiles_once_and_pins_cache_layout(pair):
  """New prompts of the same padded shape reuse the compiled loop; the final
  caches come back split by each model's own rules."""
  target, draft = pair
  mesh = mesh_named(case.MULTIHOST_MESH)
  kwargs = dict(draft=draft, mesh=mesh, rules=case.TARGET_RULES,
                draft_rules=case.DRAFT_RULES, **case.DECODE)
  generate(target, case.PROMPTS, **kwargs)  # compiled by the test above
  before = dict(api.TRACE_COUNT)
  other = [list(reversed(p)) for p in case.PROMPTS]
  generate(target, other, seed=7, **kwargs)
  assert api.TRACE_COUNT == before

  # The same jitted loop (make_loop is cached), called directly to see its caches.
  prompts_BP, prompt_len_B, spec = api.prepare(
      target, draft, case.PROMPTS, "speculative", case.DECODE["num_draft"],
      case.DECODE["sampling"], case.DECODE["max_new_tokens"], eos_id=None, pad_to=16)
  assert spec.eos_id is None and prompts_BP.shape[1] == 16
  target_rules = sh.canonical_rules(case.TARGET_RULES)
  loop = api.make_loop("speculative", case.TARGET_CFG, case.DRAFT_CFG, spec, mesh,
                       target_rules, case.DRAFT_RULES, 8, 16)
  s = api.loop_shardings(case.TARGET_CFG, case.DRAFT_CFG, mesh, target_rules, case.DRAFT_RULES,
                             8, 16, spec.buffer_len)
  out = loop(sh.shard_params(target.params, case.TARGET_CFG, mesh, target_rules),
             sh.shard_params(draft.params, case.DRAFT_CFG, mesh, case.DRAFT_RULES),
             sh.put_global(prompts_BP, s["prompts"]), sh.put_global(prompt_len_B, s["prompt_len"]),
             sh.put_global(np.asarray(jax.random.key_data(jax.random.key(0))), s["replicated"]),
             *(sh.put_global(x, s["replicated"])   # sampling values; cost of "auto", and the
               for x in (spec.sampling.values(),    # timing hooks' defaults
                         np.ones(1, np.float32), np.int32(-1), np.int32(2**31 - 1))))
  assert api.TRACE_COUNT == before
  target_cache, draft_cache = out[5]
  # The target's 4 kv heads split over tensor=4; the draft's rules keep them whole.
  assert target_cache.k[0].sharding.spec == P(("data", "fsdp"), None, "tensor", None)
  assert draft_cache.v[0].sharding.spec == P(("data", "fsdp"), None, None, None)
  assert target_cache.lengths.sharding.spec == P(("data", "fsdp"))


# ------------------------------------------------------------------------ bad input

def test_mesh_errors_name_sizes_and_axes():
  with pytest.raises(ValueError, match=r"mesh \(data=2, fsdp=1, tensor=2\) has 4 devices but 8 "):
    sh.make_mesh({"data": 2, "fsdp": 1, "tensor": 2})
  with pytest.raises(ValueError, match="unknown: \\['model'\\]"):
    sh.make_mesh({"data": 2, "model": 4})
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sh.make_mesh({"data": -1, "tensor": -1})
  assert dict(sh.make_mesh({"data": -1, "fsdp": 1, "tensor": 2}).shape) == {
      "data": 4, "fsdp": 1, "tensor": 2}


def test_rule_errors_name_the_axis():
  mesh = sh.abstract_mesh({"data": 2, "fsdp": 1, "tensor": 4})
  without_mlp = tuple(r for r in sh.TENSOR_PARALLEL if r[0] != "mlp")
  with pytest.raises(ValueError, match="parameter layer_0/mlp/.*'mlp'.* has no rule"):
    sh.param_shardings(case.TARGET_CFG, mesh, without_mlp)
  with pytest.raises(ValueError, match="unknown logical axis 'experts'"):
    sh.get_rules("tensor_parallel", {"experts": "tensor"})
  with pytest.raises(ValueError, match="'heads' -> 'model': unknown mesh axis"):
    sh.get_rules("tensor_parallel", {"heads": "model"})
  with pytest.raises(ValueError, match="sharding rules 'megatron' are unknown"):
    sh.get_rules("megatron")
  # A rule naming an axis this mesh lacks.
  with pytest.raises(ValueError, match=r"names mesh axes \['fsdp'\] that this mesh"):
    sh.param_shardings(case.TARGET_CFG, sh.abstract_mesh({"data": 2, "tensor": 4}),
                       sh.TENSOR_PARALLEL)
  # One mesh axis for two dimensions of the same array.
  with pytest.raises(ValueError, match="would split two dimensions"):
    sh.param_shardings(case.TARGET_CFG, mesh, sh.get_rules("tensor_parallel", {"embed": "tensor"}))


def test_indivisible_dimensions_raise_before_compiling(pair):
  target, draft = pair
  six_heads = case.TARGET_CFG.replace(d_model=24, num_heads=6, num_kv_heads=6)
  mesh = mesh_named(case.MULTIHOST_MESH)
  with pytest.raises(ValueError, match=r"parameter layer_0/attn/o: dimension 0 \('heads', size 6\) "
                                       r"is not divisible by mesh axes \('tensor',\) of size 4"):
    sh.param_shardings(six_heads, mesh, sh.TENSOR_PARALLEL)
  before = dict(api.TRACE_COUNT)
  with pytest.raises(ValueError, match=r"prompts \[B, P\]: dimension 0 \('batch', size 3\) is not "
                                       r"divisible by mesh axes \('data', 'fsdp'\) of size 8"):
    generate(target, case.PROMPTS[:3], draft=draft, mesh=mesh_named("data8"), **case.DECODE)
  with pytest.raises(ValueError, match="training batch"):
    train_lib.make_sharded_train_step(case.TARGET_CFG, optax.sgd(0.1), mesh_named("data8"),
                               case.TARGET_RULES, batch_size=4, seq_len=16)
  assert api.TRACE_COUNT == before


# -------------------------------------------------------------------------- dry run

def test_dry_run_counts_shards_without_allocating():
  """The paper's pair at 2 of its 80 / 8 layers (abstract traces of the full
  depth take seconds each; the per-layer arithmetic is the same)."""
  config = _load_config("configs/tpu.py", "slice=v4-32")
  config.target.overrides.num_layers = config.draft.overrides.num_layers = 2
  report = dry_run.memory_report(config)
  assert report.mesh == {"data": 2, "fsdp": 1, "tensor": 8} and report.fits
  target, draft = report.models
  # KV cache: 2 layers x (k, v) x 16/2 rows x 2048 positions x kv heads/8 x 128 x
  # 2 bytes, plus the int32 lengths of the 8 rows.
  assert target.cache_bytes == 2 * 2 * 8 * 2048 * (64 // 8) * 128 * 2 + 8 * 4
  assert draft.cache_bytes == 2 * 2 * 8 * 2048 * (48 // 8) * 128 * 2 + 8 * 4
  # Parameters: everything but the 1-D norm scales is split 8 ways.
  cfg = presets.get_preset("chinchilla_70b", num_layers=2)
  norms = (2 * 2 + 1) * cfg.d_model * 2
  assert target.param_bytes == (target.param_total_bytes - norms) // 8 + norms
  assert target.num_params == tr.count_params(sh.param_shapes(cfg))
  assert target.param_total_bytes == 2 * target.num_params  # bfloat16
  text = dry_run.format_report(report)
  assert "| target chinchilla_70b | tensor_parallel |" in text and "fits" in text

  with pytest.raises(dry_run.DoesNotFitError,
                     match=r"need \d+\.\d\d GiB per device .* but a device has 0\.50 GiB"):
    dry_run.check_fits(dry_run.memory_report(config, hbm_gib=0.5))
  config.mesh.tensor, config.mesh.data = 16, 1
  config.draft.rules = "replicated"   # a different layout for the draft
  report = dry_run.memory_report(config)
  assert report.models[1].param_bytes == report.models[1].param_total_bytes
  assert report.models[0].param_bytes < report.models[0].param_total_bytes / 15
  config.draft.rules = "tensor_parallel"
  config.mesh.tensor = 32                # 48 draft heads over 32
  with pytest.raises(ValueError, match=r"draft draft_4b: parameter .*'heads', size 48"):
    dry_run.memory_report(config)
