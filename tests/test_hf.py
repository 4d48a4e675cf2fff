"""Hugging Face import / export against goldens made by transformers (scripts/make_hf_goldens.py).

The goldens (tests/fixtures/hf/*: tiny checkpoints saved by transformers' own
Llama / Mistral / Qwen2 classes, their logits, greedy generations and tokenizer
results) are checked on every run: CI installs no torch (a multi-GB wheel).
test_live_transformers repeats the comparison live when transformers is
importable.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from specsample import sharding as sh
from specsample.decoding import Sampling, generate
from specsample.models import hf, hf_export
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.models.presets import get_preset
from specsample.tokenizer import Tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
NAMES = ("llama_tied", "llama_untied", "mistral_tied", "mistral_untied", "qwen2_tied", "qwen2_untied")


def fixture(name):
  return os.path.join(FIXTURES, name)


def load_goldens(name):
  with open(os.path.join(fixture(name), "goldens.json")) as f:
    goldens = json.load(f)
  return goldens, load_file(os.path.join(fixture(name), "goldens.safetensors"))


def padded_forward(lm, prompts):
  """Logits [B, T, V] of right-padded prompts in one full forward (causal: padding is invisible)."""
  width = max(len(p) for p in prompts)
  tokens = np.array([p + [0] * (width - len(p)) for p in prompts], np.int32)
  return np.asarray(tr.forward(lm.config, lm.params, tokens)[0])


@pytest.mark.parametrize("name", NAMES)
def test_goldens(name):
  """Logits within 1e-4 of transformers' on prompts of 1..24 tokens; greedy token for token."""
  goldens, logits = load_goldens(name)
  lm = model_io.load_lm(fixture(name))
  lengths = sorted(goldens["prompts"], key=int)
  prompts = [goldens["prompts"][n] for n in lengths]
  ours = padded_forward(lm, prompts)
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(ours[i, :int(n)], logits[f"logits_{n}"], atol=1e-4, rtol=0)
  out = generate(lm, prompts, method="autoregressive", sampling=Sampling(temperature=0.0),
                 max_new_tokens=8, eos_id=None, seed=0)
  assert out.tokens == [goldens["greedy"][n] for n in lengths]


@pytest.mark.parametrize("name", ["llama_tied", "qwen2_tied"])
def test_tokenizer_goldens(name):
  """tokenizer.json through Tokenizer.load encodes and decodes exactly as transformers did."""
  goldens, _ = load_goldens(name)
  tok = Tokenizer.load(fixture(name))  # folder also holds tokenizer.model: json wins
  for case in goldens["tokenizer"]:
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.decode(case["ids"]) == case["decoded"]
  assert tok.eos_id == 2 and tok.vocab_size == 384
  assert tok.bos_id == (None if name.startswith("qwen2") else 1)
  assert tok.encode("x", add_bos=True)[0] == (tok.bos_id if tok.bos_id is not None else tok.encode("x")[0])


def test_round_trip_bit_exact(tmp_path):
  """import -> export -> import gives identical params, for Llama (llama3 rope) and Qwen2 (biases);
  a project model (bfloat16) exports and comes back identical too."""
  for name in ("llama_untied", "qwen2_tied"):
    lm = model_io.load_lm(fixture(name))
    out = hf_export.export_hf(str(tmp_path / name), lm.config, lm.params, tokenizer_dir=fixture(name))
    back = model_io.load_lm(out)
    assert back.config == lm.config and back.tokenizer_id == lm.tokenizer_id
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           lm.params, back.params)
  config = get_preset("tiny", tie_embeddings=False, param_dtype="bfloat16")
  params = tr.init_params(config, jax.random.key(0))
  back = model_io.load_lm(hf_export.export_hf(str(tmp_path / "ours"), config, params))
  assert back.config.param_dtype == "bfloat16"
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                         params, back.params)


def test_convert_and_interrupted(tmp_path, monkeypatch):
  """convert writes a save_lm folder with the same logits; a crash mid-export leaves nothing."""
  out = hf_export.convert(fixture("mistral_untied"), str(tmp_path / "model"))
  assert not hf.is_hf_dir(out)
  a, b = model_io.load_lm(fixture("mistral_untied")), model_io.load_lm(out)
  tokens = [[5, 6, 7, 8]]
  np.testing.assert_array_equal(padded_forward(a, tokens), padded_forward(b, tokens))

  def crash(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(hf_export, "save_file", crash)
  with pytest.raises(KeyboardInterrupt):
    hf_export.export_hf(str(tmp_path / "export"), a.config, a.params)
  assert sorted(os.listdir(tmp_path)) == ["model"]


class RecordingSlice:
  """Wraps a safetensors slice; records the size of every block read."""

  def __init__(self, inner, name, log):
    self.inner, self.name, self.log = inner, name, log

  def __getitem__(self, index):
    block = self.inner[index]
    self.log.append((self.name, block.size))
    return block


class RecordingFile:
  """Wraps safe_open: get_slice is recorded, get_tensor (a whole tensor) is forbidden."""

  def __init__(self, path, framework, log):
    from safetensors import safe_open
    self.inner, self.log = safe_open(path, framework=framework), log

  def get_slice(self, name):
    return RecordingSlice(self.inner.get_slice(name), name, self.log)

  def get_tensor(self, name):
    raise AssertionError(f"whole tensor {name} read")


@pytest.mark.parametrize("name", ["llama_untied", "qwen2_untied"])
def test_sharded_import_reads_only_slices(monkeypatch, name):
  """On 8 devices (fsdp 4 x tensor 2) every device reads exactly its shard; values match one device."""
  whole = model_io.load_lm(fixture(name))
  log = []
  monkeypatch.setattr(hf, "safe_open", lambda p, framework: RecordingFile(p, framework, log))
  mesh = sh.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  lm = model_io.load_sharded_lm(fixture(name), mesh)
  shardings = sh.param_shardings(lm.config, mesh)
  shapes = tr.param_shapes(lm.config)
  expected_reads = 0
  for key, (hf_name, _, _) in hf.tensor_map(lm.config).items():
    path = key.split("/")
    sharding, shape = shardings, shapes
    for p in path:
      sharding, shape = sharding[p], shape[p]
    shard_size = int(np.prod(sharding.shard_shape(shape.shape)))
    reads = [size for name, size in log if name == hf_name]
    assert reads == [shard_size] * len(mesh.devices.flat), (key, reads, shard_size)
    expected_reads += len(reads)
  assert len(log) == expected_reads
  # The big matrices really are split: embedding [V, D] over tensor x fsdp is 1/8 per device.
  assert shardings["embedding"].shard_shape(shapes["embedding"].shape) == (384 // 2, 16 // 4)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                         lm.params, whole.params)


def test_speculative_across_imported_pair():
  """Llama target + Mistral draft (same tokenizer): greedy speculative = transformers' greedy.
  A Qwen2 draft (other tokenizer) is refused; a smaller draft vocab is padded on request."""
  goldens, _ = load_goldens("llama_tied")
  target, draft = model_io.load_lm(fixture("llama_tied")), model_io.load_lm(fixture("mistral_tied"))
  prompts = [goldens["prompts"]["5"], goldens["prompts"]["12"]]
  out = generate(target, prompts, draft=draft, method="speculative", num_draft=3,
                 sampling=Sampling(temperature=0.0), max_new_tokens=8, eos_id=None, seed=0)
  assert out.tokens == [goldens["greedy"]["5"], goldens["greedy"]["12"]]
  with pytest.raises(ValueError, match="tokenizers differ"):
    generate(target, prompts, draft=model_io.load_lm(fixture("qwen2_tied")), method="speculative",
             num_draft=3, sampling=Sampling(temperature=0.0), max_new_tokens=8, eos_id=None)
  big = model_io.load_lm(fixture("mistral_untied"), vocab_size=392)
  with pytest.raises(ValueError, match="vocabularies differ"):
    generate(big, prompts, draft=draft, method="speculative", num_draft=3,
             sampling=Sampling(temperature=0.0), max_new_tokens=2, eos_id=None)
  padded = model_io.load_lm(fixture("mistral_tied"), vocab_size=392)
  logits = padded_forward(padded, prompts)
  np.testing.assert_array_equal(logits[..., 384:], 0.0)
  np.testing.assert_array_equal(logits[..., :384], padded_forward(draft, prompts))


def _copy(tmp_path, name="llama_tied"):
  dst = tmp_path / name
  shutil.copytree(fixture(name), dst)
  return str(dst)


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(path, "w") as f:
    json.dump(cfg, f)


def _edit_tensors(folder, fn):
  path = os.path.join(folder, "model.safetensors")
  tensors = load_file(path)
  fn(tensors)
  save_file(tensors, path)
  return path


@pytest.mark.parametrize("change, message", [
    (dict(architectures=["GPT2LMHeadModel"]), "unsupported architecture 'GPT2LMHeadModel'; supported: LlamaForCausalLM"),
    (dict(hidden_act="gelu"), "unsupported option hidden_act='gelu'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling type 'yarn'"),
    (dict(attention_bias=True), "attention_bias=true"),
])
def test_unsupported_config(tmp_path, change, message):
  folder = _copy(tmp_path)
  _edit_config(folder, **change)
  with pytest.raises(hf.HFCheckpointError, match=message.replace("(", r"\(").replace("[", r"\[")):
    model_io.load_lm(folder)


def test_bad_tensors(tmp_path):
  """Missing, extra, misshapen tensors and a truncated file: errors name the tensor and file."""
  name = "model.layers.1.mlp.up_proj.weight"
  cases = [
      (lambda t: t.pop(name), f"tensor {name} is missing"),
      (lambda t: t.update(extra=np.zeros(3, np.float32)), "unexpected tensor extra in .*model.safetensors"),
      (lambda t: t.update({name: t[name][:-1]}), f"tensor {name} in .*model.safetensors has shape"),
  ]
  for i, (fn, message) in enumerate(cases):
    folder = _copy(tmp_path / str(i))
    _edit_tensors(folder, fn)
    with pytest.raises(hf.HFCheckpointError, match=message):
      model_io.load_lm(folder)
  folder = _copy(tmp_path / "truncated")
  path = os.path.join(folder, "model.safetensors")
  os.truncate(path, os.path.getsize(path) - 100)
  with pytest.raises(hf.HFCheckpointError, match=r"tensor \S+ in .*model.safetensors: truncated"):
    model_io.load_lm(folder)


def test_live_transformers(tmp_path):
  """Extra: our export loads in transformers and its logits equal ours (needs torch)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  for name in ("llama_untied", "qwen2_tied"):
    lm = model_io.load_lm(fixture(name))
    out = hf_export.export_hf(str(tmp_path / name), lm.config, lm.params, tokenizer_dir=fixture(name))
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = load_goldens(name)[0]["prompts"]["24"]
    with torch.no_grad():
      theirs = model(torch.tensor([prompt])).logits[0].numpy()
    np.testing.assert_allclose(padded_forward(lm, [prompt])[0], theirs, atol=1e-4, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "def f(x):\n\treturn 'ключ' + \"☕\"  \n"
    assert Tokenizer.load(out).encode(text) == tok.encode(text, add_special_tokens=False)


def test_presets_match_hf_configs():
  """The dry-run presets are what config_from_hf makes of the real config.json files."""
  llama2 = dict(architectures=["LlamaForCausalLM"], hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=32000,
                tie_word_embeddings=False, torch_dtype="float16", rope_theta=10000.0)
  tinyllama = dict(llama2, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                   num_key_value_heads=4, max_position_embeddings=2048, torch_dtype="bfloat16")
  for hf_cfg, preset, count in ((llama2, "llama2_7b", 6_738_415_616),
                                (tinyllama, "tinyllama_1b", 1_100_048_384)):
    config = hf.config_from_hf(hf_cfg).replace(dtype="bfloat16", param_dtype="bfloat16")
    assert config == get_preset(preset)
    assert tr.count_params(tr.param_shapes(config)) == count


def test_tokenizer_fingerprint(tmp_path):
  """Fingerprints follow what ids mean: a respelled normalizer keeps it, a changed piece does not."""
  from specsample.hf_tokenizer import HFTokenizer
  with open(os.path.join(fixture("llama_tied"), "tokenizer.json")) as f:
    data = json.load(f)
  base = HFTokenizer(json.dumps(data)).fingerprint
  assert base == Tokenizer.load(fixture("mistral_tied")).fingerprint
  assert base != Tokenizer.load(fixture("qwen2_tied")).fingerprint
  assert HFTokenizer(json.dumps(dict(data, normalizer=None, padding=None))).fingerprint == base
  vocab = dict(data["model"]["vocab"])
  a, b = sorted(vocab)[300:302]
  vocab[a], vocab[b] = vocab[b], vocab[a]
  assert HFTokenizer(json.dumps(dict(data, model=dict(data["model"], vocab=vocab)))).fingerprint != base
