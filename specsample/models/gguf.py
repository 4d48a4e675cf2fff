"""GGUF checkpoints (llama.cpp's single-file format) as specsample models.

    config, meta = gguf.load_config("model.gguf")         # TransformerConfig, {'store_dtype', ...}
    params = gguf.load_params("model.gguf", config, shardings)

Supported architectures: llama (also Mistral and SmolLM files, which llama.cpp
writes as llama), mistral and qwen2. Tensor types: F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K, dequantized by the `gguf` package's own
`gguf.quants.dequantize` (so the values are llama.cpp's) into the param dtype.

A GGUF tensor is stored with llama.cpp's shape order reversed; read as numpy it
is HF's [out, in], with quantization blocks running along `in`. So the HF
tensor map and block reader (models/hf.py) serve as they are, with two
differences handled here:

  * llama.cpp's convert script permutes the rows of q and k for its
    interleaved rotary (per head: HF row s*H/2 + i is stored at row 2i + s);
    `_unpermute` undoes it, as transformers' GGUF loader does. qwen2 files are
    not permuted (llama.cpp runs them with NEOX rotary, our split-half form).
  * Sharded loads read per-device slices: whole rows, and along `in` only the
    quantization blocks covering the requested columns (a block is 32 or 256
    values), so a device's shard is dequantized from its own bytes only.
"""

from __future__ import annotations

from typing import Any

import gguf
import jax
import ml_dtypes
import numpy as np

from specsample import gguf_tokenizer
from specsample.gguf_file import GGUFError, field, is_gguf, open_reader  # re-exported
from specsample.models import hf
from specsample.models import transformer as tr

ARCHITECTURES = ("llama", "mistral", "qwen2")
_T = gguf.GGMLQuantizationType
SUPPORTED_TYPES = (_T.F32, _T.F16, _T.BF16, _T.Q8_0, _T.Q4_0, _T.Q4_1, _T.Q5_0, _T.Q5_1,
                   _T.Q4_K, _T.Q5_K, _T.Q6_K)
# llama.cpp tensor names of one layer -> HF's (the tensor map is models/hf.py's).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def architecture(reader, path: str) -> str:
  """`general.architecture`, checked against ARCHITECTURES."""
  arch = field(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise GGUFError(f"{path}: unsupported architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
  return arch


def config_from_gguf(reader, path: str) -> tr.TransformerConfig:
  """A TransformerConfig from the file's metadata (and its tensor list for tying)."""
  arch = architecture(reader, path)
  get = lambda key, default=None: field(reader, f"{arch}.{key}", default)
  scaling = get("rope.scaling.type", "none")
  if scaling not in ("none", None) or "rope_freqs.weight" in {t.name for t in reader.tensors}:
    raise GGUFError(f"{path}: unsupported rope scaling ({scaling!r} or a rope_freqs tensor, "
                    "as Llama 3.1 files carry); supported: plain rotary")
  D, N = int(get("embedding_length")), int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", D // N))
  if N * head_dim != D or get("rope.dimension_count", head_dim) != head_dim:
    raise GGUFError(f"{path}: head_dim {head_dim} with {N} heads and rotary over "
                    f"{get('rope.dimension_count')} dims; supported: N * head_dim == d_model, full rotary")
  tokens = field(reader, "tokenizer.ggml.tokens")
  vocab = int(get("vocab_size", len(tokens) if tokens is not None else 0))
  names = {t.name for t in reader.tensors}
  return tr.TransformerConfig(
      vocab_size=vocab, d_model=D, num_layers=int(get("block_count")), num_heads=N,
      num_kv_heads=int(get("attention.head_count_kv", N)), head_dim=head_dim,
      mlp_dim=int(get("feed_forward_length")), mlp_type="swiglu",
      tie_embeddings="output.weight" not in names, max_seq_len=int(get("context_length", 4096)),
      rope_base=float(get("rope.freq_base", 10_000.0)), attn_bias="blk.0.attn_q.bias" in names,
      norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
      dtype="float32", param_dtype="float32").validate()


def load_config(path: str) -> tuple[tr.TransformerConfig, dict]:
  """(config, meta) of a GGUF file, as models.io.load_config returns them.

  meta: store_dtype, tokenizer_id (the fingerprint of the tokenizer its
  metadata describes, specsample/gguf_tokenizer.py), bos_id / eos_id,
  format='gguf', architecture.
  """
  reader = open_reader(path)
  config = config_from_gguf(reader, path)
  tokenizer = gguf_tokenizer.from_reader(reader, path)
  return config, {"store_dtype": config.param_dtype, "tokenizer_id": tokenizer.fingerprint,
                  "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "format": "gguf",
                  "architecture": architecture(reader, path)}


def hf_name(gguf_name: str) -> str | None:
  """HF's name for a llama.cpp tensor name ('blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight')."""
  if gguf_name in _TOP_NAMES:
    return _TOP_NAMES[gguf_name]
  parts = gguf_name.split(".")
  if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
  return None


class _Slice:
  """One GGUF tensor in HF's [out, in] layout, dequantized on indexing (like safetensors' get_slice).

  `sl[rows]` or `sl[rows, cols]` with contiguous slices reads only the rows
  asked for and, along `in`, the quantization blocks that cover `cols`.
  `rows_per_head`: q/k of a permuted file (undo the rotary interleave per head).
  """

  def __init__(self, tensor, rows_per_head: int | None):
    self.tensor, self.rows_per_head = tensor, rows_per_head
    self.shape = tuple(int(n) for n in reversed(tensor.shape))  # [out, in] (or [n] for norms)
    self.block, self.block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type]

  def __getitem__(self, index) -> np.ndarray:
    index = index if isinstance(index, tuple) else (index,)
    spans = [s.indices(n)[:2] for s, n in zip(index, self.shape)]
    spans += [(0, n) for n in self.shape[len(spans):]]
    (r0, r1), (c0, c1) = spans if len(spans) == 2 else (spans[0], (0, 1))
    raw = self.tensor.data  # [rows, bytes per row] (quantized) or [rows, in] (float)
    if len(self.shape) == 1:
      return gguf.quants.dequantize(np.asarray(raw[r0:r1]), self.tensor.tensor_type)
    if self.rows_per_head and (r0 % self.rows_per_head or r1 % self.rows_per_head):
      raise ValueError("q/k rows must be read in whole heads (the rotary permutation is per head)")
    b0, b1 = c0 // self.block, -(-c1 // self.block)  # the blocks covering [c0, c1)
    width = self.block_bytes if raw.dtype == np.uint8 else self.block
    out = gguf.quants.dequantize(np.ascontiguousarray(raw[r0:r1, b0 * width:b1 * width]),
                                 self.tensor.tensor_type)
    out = out.reshape(r1 - r0, -1)[:, c0 - b0 * self.block:c1 - b0 * self.block]
    return _unpermute(out, self.rows_per_head) if self.rows_per_head else out


def _unpermute(rows_XC: np.ndarray, rows_per_head: int) -> np.ndarray:
  """HF's row order from llama.cpp's, per head: stored row 2i + s is HF row s*H/2 + i."""
  n, cols = rows_XC.shape
  heads = n // rows_per_head
  x = rows_XC.reshape(heads, rows_per_head // 2, 2, cols)  # [heads, H/2, 2, C]
  return x.swapaxes(1, 2).reshape(n, cols)


def tensor_index(reader, path: str, config: tr.TransformerConfig) -> dict[str, Any]:
  """HF tensor name -> the reader's tensor, every name and shape checked against `config`.

  Raises:
    GGUFError: a missing, unexpected or misshapen tensor, or an unsupported type (named).
  """
  supported = SUPPORTED_TYPES
  index = {}
  for t in reader.tensors:
    name = hf_name(t.name)
    if name is None:
      raise GGUFError(f"{path}: unexpected tensor {t.name} (not part of a "
                      f"{config.num_layers}-layer {', '.join(ARCHITECTURES)} model)")
    try:
      qtype = gguf.GGMLQuantizationType(t.tensor_type)
    except ValueError:
      qtype = None
    if qtype not in supported:
      raise GGUFError(f"{path}: tensor {t.name} has type {getattr(qtype, 'name', t.tensor_type)}; "
                      f"supported: {', '.join(s.name for s in supported)}")
    index[name] = t
  for name, _layout, shape in hf.tensor_map(config).values():
    if name not in index:
      raise GGUFError(f"{path}: tensor {name} (llama.cpp naming) is missing")
    found = tuple(int(n) for n in reversed(index[name].shape))
    if found != shape:
      raise GGUFError(f"{path}: tensor {index[name].name} has shape {list(found)} (as [out, in]); "
                      f"the metadata implies {list(shape)}")
  return index


def load_params(path: str, config: tr.TransformerConfig, shardings) -> Any:
  """Parameters of a GGUF file, each laid out by its sharding, cast to config.param_dtype.

  Args:
    path: a local .gguf file.
    config: from load_config (overrides that keep shapes are allowed).
    shardings: tree of one jax.sharding.Sharding per parameter.
  """
  reader = open_reader(path)
  arch = architecture(reader, path)
  index = tensor_index(reader, path, config)
  mapping = hf.tensor_map(config)
  dtype = np.dtype(config.param_dtype if config.param_dtype != "bfloat16" else ml_dtypes.bfloat16)

  def one(key_path, shape, sharding):
    key = "/".join(str(getattr(k, "key", k)) for k in key_path)
    name, layout, _ = mapping[key]
    permuted = arch != "qwen2" and (name.endswith("q_proj.weight") or name.endswith("k_proj.weight"))
    sl = _Slice(index[name], config.head_dim if permuted else None)

    def shard(idx):
      spans = tuple(s.indices(n)[:2] for s, n in zip(idx, shape.shape))
      try:
        block = hf.read_block(sl, layout, config.head_dim, spans)
      except Exception as e:
        raise GGUFError(f"{path}: tensor {index[name].name} unreadable: {e}") from e
      return np.ascontiguousarray(block).astype(dtype, copy=False)

    return jax.make_array_from_callback(shape.shape, sharding, shard)

  return jax.tree_util.tree_map_with_path(one, tr.param_shapes(config), shardings)
