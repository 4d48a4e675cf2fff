"""Llama-family Hugging Face checkpoints (config.json + *.safetensors) as specsample models.

    config, meta = hf.load_config(hf_dir)              # TransformerConfig, {'store_dtype', ...}
    params = hf.load_params(hf_dir, config, shardings) # one NamedSharding per parameter

Supported: LlamaForCausalLM (Llama 1/2/3, GQA, tied or untied, llama3 rope
scaling), MistralForCausalLM and Qwen2ForCausalLM (q/k/v biases). The model in
transformer.py is the same network (RMSNorm, split-half rotary as HF stores
its q/k weights, SwiGLU, GQA), so import is a renaming plus reshapes:

  HF [out, in] Linear weights     -> ours [in, out]
  q/k/v_proj [N*H, D]            -> [D, N, H];  o_proj [D, N*H] -> [N, H, D]
  q/k/v_proj.bias [N*H]          -> [N, H]

Every parameter is built by `jax.make_array_from_callback`: each device's
shard is read from the file with `safe_open(...).get_slice(name)[rows, cols]`,
so no host ever holds a whole tensor that it does not need (a 70B import on a
mesh needs about one shard of host memory per device, not 140 GB).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open

from specsample import hf_tokenizer
from specsample import paths
from specsample.models import transformer as tr

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
_VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
# Buffers some checkpoints carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class HFCheckpointError(ValueError):
  """A checkpoint that cannot be imported: the message names the tensor and file."""


def is_hf_dir(directory: str) -> bool:
  """True for a folder holding an HF config.json (with `architectures`) and safetensors."""
  path = os.path.join(directory, "config.json")
  if not paths.isfile(path):
    return False
  meta = json.loads(paths.read_text(path))
  if "architectures" in meta and "config" not in meta and paths.is_remote(directory):
    raise ValueError(f"{directory}: Hugging Face folders are read from local disk (safetensors "
                     "are memory-mapped); copy it first: gcloud storage cp -r <folder> <local dir>")
  return "architectures" in meta and "config" not in meta


def config_from_hf(hf: dict) -> tr.TransformerConfig:
  """A TransformerConfig from an HF config.json dict.

  Raises:
    HFCheckpointError: an unsupported architecture or option, named with the
      supported ones.
  """
  arch = (hf.get("architectures") or [None])[0]
  if arch not in ARCHITECTURES:
    raise HFCheckpointError(f"unsupported architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
  refuse = lambda option, why: HFCheckpointError(
      f"{arch}: unsupported option {option} ({why}); supported: SwiGLU ('silu'), no o_proj/MLP "
      "biases, rope_scaling None or rope_type 'llama3', num_heads * head_dim == hidden_size")
  if hf.get("hidden_act", "silu") != "silu":
    raise refuse(f"hidden_act={hf['hidden_act']!r}", "only silu (SwiGLU)")
  for option in ("attention_bias", "mlp_bias"):
    if hf.get(option):
      raise refuse(f"{option}=true", "Llama-style biases on o_proj / MLP are not in the model")
  if hf.get("quantization_config"):
    raise refuse("quantization_config", "quantized weights")
  D, N = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or D // N
  if N * head_dim != D:
    raise refuse(f"head_dim={head_dim}", f"{N} heads * {head_dim} != hidden_size {D}")
  llama3 = ()
  # transformers 5 writes rope_parameters (with rope_theta inside); 4.x rope_scaling.
  scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
  theta = hf.get("rope_theta") or scaling.get("rope_theta") or 10_000.0
  if scaling:
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "llama3":
      llama3 = (float(scaling["factor"]), float(scaling["low_freq_factor"]),
                float(scaling["high_freq_factor"]), float(scaling["original_max_position_embeddings"]))
    elif kind != "default":
      raise refuse(f"rope_scaling type {kind!r}", "only 'llama3' scaling is implemented")
  max_len = hf.get("max_position_embeddings", 4096)
  # Sliding-window attention equals full causal attention while the cache
  # holds no more positions than the window: cap the cache there.
  window = hf.get("sliding_window")
  sliding = "sliding_attention" in (hf.get("layer_types") or ())
  if window and (arch == "MistralForCausalLM" or hf.get("use_sliding_window") or sliding):
    max_len = min(max_len, window)
  dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
  if dtype not in _DTYPES:
    raise refuse(f"torch_dtype={dtype!r}", f"stored dtypes: {sorted(_DTYPES)}")
  return tr.TransformerConfig(
      vocab_size=hf["vocab_size"], d_model=D, num_layers=hf["num_hidden_layers"],
      num_heads=N, num_kv_heads=hf.get("num_key_value_heads") or N, head_dim=head_dim,
      mlp_dim=hf["intermediate_size"], mlp_type="swiglu",
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)), max_seq_len=max_len,
      rope_base=float(theta), rope_llama3=llama3,
      attn_bias=arch == "Qwen2ForCausalLM", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      dtype="float32", param_dtype=_DTYPES[dtype]).validate()


def load_config(directory: str) -> tuple[tr.TransformerConfig, dict]:
  """(config, meta) of an HF folder, as models.io.load_config returns them.

  meta: store_dtype, tokenizer_id (fingerprint of tokenizer.json, or None),
  bos_id / eos_id from config.json, and format='hf'.
  """
  with open(os.path.join(directory, "config.json")) as f:
    hf = json.load(f)
  config = config_from_hf(hf)
  tok_path = os.path.join(directory, hf_tokenizer.TOKENIZER_FILE)
  tokenizer_id = (hf_tokenizer.HFTokenizer.load(directory).fingerprint
                  if os.path.exists(tok_path) else None)
  return config, {"store_dtype": config.param_dtype, "tokenizer_id": tokenizer_id,
                  "bos_id": hf.get("bos_token_id"), "eos_id": hf.get("eos_token_id"),
                  "format": "hf", "architecture": hf["architectures"][0]}


# ----------------------------------------------------------------------------- tensor map

def tensor_map(config: tr.TransformerConfig) -> dict[str, tuple[str, str, tuple[int, ...]]]:
  """Our parameter path ('layer_0/attn/q') -> (HF tensor name, layout, HF shape).

  Layouts: 'copy' (same array), 'T' (transposed), 'qkv' ([N*H, D] -> [D, N, H]),
  'o' ([D, N*H] -> [N, H, D]), 'bias' ([N*H] -> [N, H]).
  """
  D, F, V = config.d_model, config.mlp_dim, config.vocab_size
  NH, KH = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  out = {"embedding": ("model.embed_tokens.weight", "copy", (V, D)),
         "final_norm/scale": ("model.norm.weight", "copy", (D,))}
  if not config.tie_embeddings:
    out["unembed"] = ("lm_head.weight", "T", (V, D))
  for i in range(config.num_layers):
    hf, ours = f"model.layers.{i}.", f"layer_{i}/"
    out[ours + "attn_norm/scale"] = (hf + "input_layernorm.weight", "copy", (D,))
    out[ours + "mlp_norm/scale"] = (hf + "post_attention_layernorm.weight", "copy", (D,))
    for name, rows in (("q", NH), ("k", KH), ("v", KH)):
      out[ours + f"attn/{name}"] = (hf + f"self_attn.{name}_proj.weight", "qkv", (rows, D))
      if config.attn_bias:
        out[ours + f"attn/{name}_bias"] = (hf + f"self_attn.{name}_proj.bias", "bias", (rows,))
    out[ours + "attn/o"] = (hf + "self_attn.o_proj.weight", "o", (D, NH))
    out[ours + "mlp/gate"] = (hf + "mlp.gate_proj.weight", "T", (F, D))
    out[ours + "mlp/up"] = (hf + "mlp.up_proj.weight", "T", (F, D))
    out[ours + "mlp/down"] = (hf + "mlp.down_proj.weight", "T", (D, F))
  return out


def read_block(sl, layout: str, head_dim: int, index: tuple[tuple[int, int], ...]) -> np.ndarray:
  """The block `index` ((start, stop) per dimension of OUR layout) of one
  parameter, reading only the rows/columns it needs from an HF slice `sl`
  (anything indexable like safetensors' get_slice)."""
  H = head_dim
  if layout == "copy":
    return sl[tuple(slice(a, b) for a, b in index)]
  if layout == "T":
    (a0, b0), (a1, b1) = index
    return sl[a1:b1, a0:b0].T
  if layout == "qkv":  # ours [D, N, H] from HF [N*H, D]; heads are contiguous rows
    (d0, d1), (n0, n1), (h0, h1) = index
    return sl[n0 * H:n1 * H, d0:d1].T.reshape(d1 - d0, n1 - n0, H)[:, :, h0:h1]
  if layout == "o":  # ours [N, H, D] from HF [D, N*H]
    (n0, n1), (h0, h1), (d0, d1) = index
    return sl[d0:d1, n0 * H:n1 * H].T.reshape(n1 - n0, H, d1 - d0)[:, h0:h1, :]
  if layout == "bias":  # ours [N, H] from HF [N*H]
    (n0, n1), (h0, h1) = index
    return sl[n0 * H:n1 * H].reshape(n1 - n0, H)[:, h0:h1]
  raise ValueError(f"unknown layout {layout!r}")


def to_hf(array: np.ndarray, layout: str) -> np.ndarray:
  """Our parameter in HF's layout (the inverse of read_block over the whole array)."""
  if layout == "T":
    return array.T
  if layout == "qkv":
    return array.reshape(array.shape[0], -1).T
  if layout == "o":
    return array.reshape(-1, array.shape[-1]).T
  if layout == "bias":
    return array.reshape(-1)
  return array


# ----------------------------------------------------------------------------- files

def _header(path: str) -> dict:
  """A safetensors header, checked against the file size (truncation names the tensor)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise HFCheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", raw)
    if 8 + n > size:
      raise HFCheckpointError(f"{path}: truncated safetensors file (header of {n} bytes, file {size})")
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  for name, info in header.items():
    if 8 + n + info["data_offsets"][1] > size:
      raise HFCheckpointError(f"tensor {name} in {path}: truncated safetensors file (needs "
                              f"{8 + n + info['data_offsets'][1]} bytes, file has {size})")
  return header


def checkpoint_index(directory: str) -> dict[str, tuple[str, str, tuple[int, ...]]]:
  """HF tensor name -> (file path, safetensors dtype, shape), over every shard file."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
    files = [SINGLE_FILE]  # as transformers: other *.safetensors beside it are not the model's
  else:
    raise HFCheckpointError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} "
                            "(pytorch .bin checkpoints are not supported)")
  out = {}
  for name in files:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      raise HFCheckpointError(f"{path}: listed in {INDEX_FILE} but missing")
    for tensor, info in _header(path).items():
      out[tensor] = (path, info["dtype"], tuple(info["shape"]))
  return out


def check_tensors(directory: str, config: tr.TransformerConfig) -> dict:
  """Checks names and shapes of every tensor; returns checkpoint_index(directory).

  Raises:
    HFCheckpointError: a missing, extra or wrongly shaped tensor (named, with its file).
  """
  index = checkpoint_index(directory)
  expected = {hf_name: shape for hf_name, _, shape in tensor_map(config).values()}
  for hf_name, shape in expected.items():
    if hf_name not in index:
      raise HFCheckpointError(f"tensor {hf_name} is missing from the safetensors files in {directory}")
    path, dtype, found = index[hf_name]
    if hf_name in _VOCAB_TENSORS and found[1:] == shape[1:] and found[0] <= shape[0]:
      pass  # a vocab_size override pads the vocabulary (load_params)
    elif found != shape:
      raise HFCheckpointError(f"tensor {hf_name} in {path} has shape {list(found)}, config.json "
                              f"implies {list(shape)}")
    if dtype not in _ST_DTYPES:
      raise HFCheckpointError(f"tensor {hf_name} in {path} has dtype {dtype}; supported: {sorted(_ST_DTYPES)}")
  for hf_name, (path, _, _) in index.items():
    tied_head = hf_name == "lm_head.weight" and config.tie_embeddings  # HF ignores it too
    if hf_name not in expected and not tied_head and not hf_name.endswith(_IGNORED_SUFFIXES):
      raise HFCheckpointError(f"unexpected tensor {hf_name} in {path} (not part of a "
                              f"{config.num_layers}-layer model as config.json describes it)")
  return index


def _span(s: slice, n: int) -> tuple[int, int]:
  start, stop, step = s.indices(n)
  assert step == 1, "shardings give contiguous blocks"
  return start, stop


def load_params(directory: str, config: tr.TransformerConfig, shardings) -> Any:
  """Parameters of an HF folder, each laid out by its sharding, cast to config.param_dtype.

  A vocab_size above the checkpoint's pads the embedding (and lm_head) with
  zero rows: a draft whose vocabulary is a prefix of its target's (Qwen2.5
  0.5B 151,936 vs 7B 152,064) then proposes the padded ids with logit 0.
  The rejection step corrects any draft distribution, so the output is still
  exactly the target's; only acceptance can drop, by the draft's mass on them.

  Args:
    directory: HF folder (config.json + safetensors, sharded or not).
    config: from load_config (overrides allowed that keep shapes, or pad the vocabulary).
    shardings: tree of one jax.sharding.Sharding per parameter (same tree as
      transformer.param_shapes(config)).
  """
  index = check_tensors(directory, config)
  mapping = tensor_map(config)
  hf_vocab = index["model.embed_tokens.weight"][2][0]
  handles = {}
  dtype = np.dtype(config.param_dtype if config.param_dtype != "bfloat16" else ml_dtypes.bfloat16)

  def one(path, shape, sharding):
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    hf_name, layout, _ = mapping[key]
    file = index[hf_name][0]

    def shard(idx):
      if file not in handles:
        handles[file] = safe_open(file, framework="numpy")
      spans = [_span(s, n) for s, n in zip(idx, shape.shape)]
      # Rows past the checkpoint's vocabulary (a larger vocab_size) are zeros.
      vdim = {"embedding": 0, "unembed": 1}.get(key)
      out_shape = tuple(b - a for a, b in spans)
      if vdim is not None:
        spans[vdim] = (min(spans[vdim][0], hf_vocab), min(spans[vdim][1], hf_vocab))
      try:
        block = read_block(handles[file].get_slice(hf_name), layout, config.head_dim, tuple(spans))
      except Exception as e:
        raise HFCheckpointError(f"tensor {hf_name} in {file}: unreadable: {e}") from e
      block = np.ascontiguousarray(block).astype(dtype, copy=False)
      if block.shape != out_shape:
        block = np.pad(block, [(0, o - b) for o, b in zip(out_shape, block.shape)])
      return block

    return jax.make_array_from_callback(shape.shape, sharding, shard)

  try:
    return jax.tree_util.tree_map_with_path(one, tr.param_shapes(config), shardings)
  finally:
    handles.clear()
