"""Tiny GGUF files, written deterministically with gguf.GGUFWriter, for tests and goldens.

scripts/make_gguf_goldens.py builds the same files and records what transformers
makes of them; tests/test_gguf.py rebuilds them and compares. Nothing here
imports specsample.
"""

from __future__ import annotations

import os

import gguf
import numpy as np

T = gguf.GGMLQuantizationType
# Per-256-value block: byte offsets of the float16 scales (the rest may be any bits).
K_QUANT_SCALES = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
TINY = dict(vocab=320, d_model=256, layers=2, heads=4, kv_heads=2, head_dim=64, mlp=512)
# One type per tensor kind per layer, so one file covers every supported type.
LAYER_TYPES = (
    {"attn_q": T.Q4_K, "attn_k": T.Q5_K, "attn_v": T.Q6_K, "attn_output": T.Q4_0,
     "ffn_gate": T.Q4_1, "ffn_up": T.Q5_0, "ffn_down": T.Q5_1},
    {"attn_q": T.F16, "attn_k": T.BF16, "attn_v": T.F32, "attn_output": T.Q8_0,
     "ffn_gate": T.Q6_K, "ffn_up": T.Q4_K, "ffn_down": T.Q5_K},
)


def quantized(rng: np.random.Generator, rows: int, cols: int, qtype, scale: float = 0.05) -> np.ndarray:
  """[rows, cols] values stored as `qtype`: the raw array GGUFWriter.add_tensor takes.

  Types gguf.quants can quantize are quantized from normal values; for the
  K-quants (which it cannot) random block bits with small float16 scales.
  """
  if qtype in K_QUANT_SCALES:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for offset in K_QUANT_SCALES[qtype]:
      d = rng.uniform(1e-4, 3e-4, (rows, cols // block)).astype(np.float16)
      raw[:, :, offset:offset + 2] = d.view(np.uint8).reshape(rows, cols // block, 2)
    return raw.reshape(rows, -1)
  values = (rng.normal(size=(rows, cols)) * scale).astype(np.float32)
  return values if qtype == T.F32 else gguf.quants.quantize(values, qtype)


def _add(writer: gguf.GGUFWriter, name: str, raw: np.ndarray, qtype) -> None:
  writer.add_tensor(name, raw, raw_dtype=qtype if qtype != T.F32 else None)


add = _add


def write_tiny_model(path: str, arch: str = "llama", seed: int = 0, tied: bool = True,
                     tokenizer: dict | None = None, replace: dict | None = None) -> str:
  """A 2-layer model of `arch` with every supported tensor type (LAYER_TYPES).
  replace: {tensor name: float32 array stored as F32 instead} (llama.cpp's layout)."""
  c, rng = TINY, np.random.default_rng(seed)
  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(c["layers"])
  w.add_context_length(512)
  w.add_embedding_length(c["d_model"])
  w.add_feed_forward_length(c["mlp"])
  w.add_head_count(c["heads"])
  w.add_head_count_kv(c["kv_heads"])
  w.add_rope_freq_base(10000.0)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_dimension_count(c["head_dim"])
  w.add_vocab_size(c["vocab"])
  add_tokenizer(w, tokenizer or byte_tokenizer(c["vocab"]))
  D, V, F = c["d_model"], c["vocab"], c["mlp"]
  NH, KH = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
  replace = replace or {}
  add = lambda w, name, raw, qtype: (_add(w, name, replace[name], T.F32) if name in replace
                                     else _add(w, name, raw, qtype))
  add(w, "token_embd.weight", quantized(rng, V, D, T.Q8_0, 0.5), T.Q8_0)
  for i, types in enumerate(LAYER_TYPES[:c["layers"]]):
    shapes = {"attn_q": (NH, D), "attn_k": (KH, D), "attn_v": (KH, D), "attn_output": (D, NH),
              "ffn_gate": (F, D), "ffn_up": (F, D), "ffn_down": (D, F)}
    for kind, (rows, cols) in shapes.items():
      add(w, f"blk.{i}.{kind}.weight", quantized(rng, rows, cols, types[kind]), types[kind])
      if arch == "qwen2" and kind in ("attn_q", "attn_k", "attn_v"):
        add(w, f"blk.{i}.{kind}.bias", (rng.normal(size=rows) * 0.05).astype(np.float32), T.F32)
    for norm in ("attn_norm", "ffn_norm"):
      add(w, f"blk.{i}.{norm}.weight", (1 + 0.1 * rng.normal(size=D)).astype(np.float32), T.F32)
  add(w, "output_norm.weight", (1 + 0.1 * rng.normal(size=D)).astype(np.float32), T.F32)
  if not tied:
    add(w, "output.weight", quantized(rng, V, D, T.Q6_K), T.Q6_K)
  _finish(w)
  return path


def byte_tokenizer(vocab: int) -> dict:
  """A gpt2-type vocabulary of `vocab` tokens: the 256 byte symbols, a few merges, specials."""
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"),
            ("Ġ", "s"), ("r", "e"), ("Ġ", "w")]
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + alphabet + ["".join(m) for m in merges]
  tokens += [f"<extra_{i}>" for i in range(vocab - len(tokens))]
  types = [3, 3, 3] + [1] * (len(tokens) - 3)
  return {"model": "gpt2", "pre": "smollm", "tokens": tokens, "types": types,
          "merges": [" ".join(m) for m in merges], "bos": 1, "eos": 2, "pad": 2}


def add_tokenizer(w: gguf.GGUFWriter, tok: dict) -> None:
  w.add_tokenizer_model(tok["model"])
  if tok.get("pre"):
    w.add_tokenizer_pre(tok["pre"])
  w.add_token_list(tok["tokens"])
  w.add_token_types(tok["types"])
  if tok.get("merges"):
    w.add_token_merges(tok["merges"])
  if tok.get("scores") is not None:
    w.add_token_scores(tok["scores"])
  w.add_bos_token_id(tok["bos"])
  w.add_eos_token_id(tok["eos"])
  if tok.get("pad") is not None:
    w.add_pad_token_id(tok["pad"])
  if tok.get("unk") is not None:
    w.add_unk_token_id(tok["unk"])
  if "add_space_prefix" in tok:
    w.add_add_space_prefix(tok["add_space_prefix"])
  if tok.get("chat_template"):
    w.add_chat_template(tok["chat_template"])


def write_tokenizer_only(path: str, tok: dict, arch: str = "llama") -> str:
  """A GGUF holding only tokenizer metadata (what transformers' tokenizer loader reads)."""
  w = gguf.GGUFWriter(path, arch)
  add_tokenizer(w, tok)
  _finish(w)
  return path


def spm_tokenizer(model_file: str) -> dict:
  """The `llama` (SentencePiece) metadata llama.cpp's converter writes for a .model file."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=model_file)
  tokens, scores, types = [], [], []
  for i in range(sp.get_piece_size()):
    tokens.append(sp.id_to_piece(i))
    scores.append(sp.get_score(i))
    types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                 else 5 if sp.is_unused(i) else 1)
  return {"model": "llama", "tokens": tokens, "types": types, "scores": scores,
          "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "add_space_prefix": True}


def _finish(w: gguf.GGUFWriter) -> None:
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def real_smollm_path() -> str | None:
  """The fetched SmolLM2 GGUF, if the cache holds it (models/fetch.py's layout)."""
  root = os.environ.get("SPECSAMPLE_CACHE") or os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workdirs", "models")
  path = os.path.join(root, "downloads", "SmolLM2-135M-Instruct.Q4_1.gguf")
  return path if os.path.exists(path) else None
