"""The tokenizer a GGUF file's metadata describes, behind specsample's Tokenizer interface.

A GGUF has no tokenizer.json: llama.cpp stores the vocabulary, merges, token
types and special ids as metadata. We build the same `tokenizers` pipeline
that transformers' GGUF loader builds (so encodings equal transformers'), as
a tokenizer.json string served by hf_tokenizer.HFTokenizer:

  * `gpt2` (byte-level BPE): GPT-2's byte alphabet; the split regex of the
    file's `tokenizer.ggml.pre` for the types in PRE_SPLITS (llama-bpe,
    qwen2, ...), else GPT-2's own regex. `smollm` is GPT-2's regex after
    splitting digits one by one, as llama.cpp and SmolLM's own tokenizer.json
    do; its vocabulary has no merge across two digits or a space and a digit,
    so this equals transformers' GPT-2 regex on every text (the goldens check
    numbers too).
  * `llama` (SentencePiece BPE): Metaspace ('first' prepend unless the file
    says add_space_prefix = false), byte fallback, merges from the file or
    derived from the scores as transformers derives them.

Control tokens (type 3) become special added tokens, user-defined ones (4)
plain added tokens. bos / eos / pad come from the metadata; `add_bos` is the
file's `tokenizer.ggml.add_bos_token`; the chat template is kept.
"""

from __future__ import annotations

import json

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from specsample import gguf_file
from specsample import hf_tokenizer

MODELS = ("gpt2", "llama")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> split regex (transformers' GGUF_PRE_TOKENIZER_SPLITS for these).
PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
              "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
              "deepseek-r1-qwen": _QWEN2_SPLIT}
# Pre-tokenizer types with GPT-2's own regex (smollm: after single-digit splits).
GPT2_REGEX_PRES = ("default", "gpt2", "smollm", None)
_CONTROL, _USER_DEFINED = 3, 4


class GGUFTokenizerError(ValueError):
  """Tokenizer metadata this module cannot build (names the file and the supported values)."""


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's printable spelling of the 256 bytes."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
  chars, extra = {}, 0
  for b in range(256):
    if b in keep:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def _derive_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
  """SentencePiece merges implied by a vocabulary and its scores (transformers' generate_merges)."""
  merges = []
  for piece, score in scores.items():
    local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
             if piece[:i] in vocab and piece[i:] in vocab]
    merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
  merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
  return [(a, b) for a, b, _ in merges]


def build(meta: dict, source: str = "<gguf>") -> hf_tokenizer.HFTokenizer:
  """An HFTokenizer from GGUF tokenizer metadata.

  Args:
    meta: the file's `tokenizer.*` keys without the prefix ('ggml.model',
      'ggml.tokens', 'ggml.merges', 'ggml.token_type', 'ggml.bos_token_id', ...,
      'chat_template').
    source: the file, for messages.

  Raises:
    GGUFTokenizerError: an unsupported tokenizer model or pre-tokenizer.
  """
  kind, pre = meta.get("ggml.model"), meta.get("ggml.pre")
  tokens = list(meta.get("ggml.tokens") or [])
  types = list(meta.get("ggml.token_type") or [1] * len(tokens))
  if kind == "gpt2":
    if pre not in PRE_SPLITS and pre not in GPT2_REGEX_PRES:
      raise GGUFTokenizerError(
          f"{source}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
          f"{', '.join(sorted(PRE_SPLITS) + [p for p in GPT2_REGEX_PRES if p])}")
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in meta.get("ggml.merges") or []]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                                          continuing_subword_prefix="", end_of_word_suffix="",
                                          fuse_unk=False))
    if pre in PRE_SPLITS:
      tok.pre_tokenizer = pre_tokenizers.Sequence([
          pre_tokenizers.Split(tokenizers.Regex(PRE_SPLITS[pre]), behavior="isolated"),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
      byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
      tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    byte_level]) if pre == "smollm" else byte_level)
    tok.decoder = decoders.ByteLevel()
    added_ok = lambda t: set(t) <= alphabet  # a control token outside the alphabet is a mislabel
  elif kind == "llama":
    vocab = {t: i for i, t in enumerate(tokens)}
    if meta.get("ggml.merges"):
      merges = [tuple(m.split(" ")) for m in meta["ggml.merges"]]
    else:
      merges = _derive_merges(vocab, dict(zip(tokens, meta.get("ggml.scores") or [0.0] * len(tokens))))
    unk = meta.get("ggml.unknown_token_id")
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
                                          dropout=None, unk_token=tokens[unk] if unk is not None else None))
    prefix = meta.get("ggml.add_space_prefix", True)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", split=False,
                                                 prepend_scheme="first" if prefix else "never")
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    added_ok = lambda t: True
  else:
    raise GGUFTokenizerError(f"{source}: tokenizer.ggml.model={kind!r} is not supported; "
                             f"supported: {', '.join(MODELS)}")
  tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True)
                          for t, ty in zip(tokens, types) if ty == _CONTROL and added_ok(t)])
  tok.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False)
                  for t, ty in zip(tokens, types) if ty == _USER_DEFINED and added_ok(t)])
  special = {role: meta.get(f"ggml.{key}_token_id") for role, key in
             (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))}
  return hf_tokenizer.HFTokenizer(
      tok.to_str(), {k: v for k, v in special.items() if v is not None},
      add_bos_token=bool(meta.get("ggml.add_bos_token", kind == "llama")),
      chat_template=meta.get("chat_template"))


def metadata(reader) -> dict:
  """The `tokenizer.*` metadata of a gguf.GGUFReader, keys without the 'tokenizer.' prefix."""
  return {k[len("tokenizer."):]: f.contents() for k, f in reader.fields.items()
          if k.startswith("tokenizer.")}


def from_reader(reader, source: str) -> hf_tokenizer.HFTokenizer:
  """The tokenizer of an open GGUF file."""
  return build(metadata(reader), source)


def load(path: str) -> hf_tokenizer.HFTokenizer:
  """The tokenizer of the GGUF file at `path`."""
  return from_reader(gguf_file.open_reader(path), path)


def tokenizer_config(tokenizer: hf_tokenizer.HFTokenizer) -> str:
  """tokenizer_config.json text for a converted folder: special tokens, add_bos, chat template."""
  piece = lambda i: tokenizer.id_to_piece(i) if i is not None else None
  return json.dumps({"bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
                     "pad_token": piece(tokenizer.pad_id),
                     "add_bos_token": tokenizer.add_bos_token,
                     "chat_template": tokenizer.chat_template}, indent=2)
