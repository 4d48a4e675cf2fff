"""A Hugging Face `tokenizer.json` behind the interface of specsample.tokenizer.Tokenizer.

Encoding never adds special tokens by itself (`add_special_tokens=False`);
`add_bos` / `add_eos` add them as in the sentencepiece Tokenizer, so prompts
are built the same way for both. Decoding skips special tokens, like
transformers' `decode(ids, skip_special_tokens=True)`. bos / eos / pad come
from tokenizer_config.json, else config.json, beside tokenizer.json; a
tokenizer without a bos token (Qwen2) ignores `add_bos`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence

import tokenizers

from specsample import paths

TOKENIZER_FILE = "tokenizer.json"


def _token(value) -> str | None:
  return value.get("content") if isinstance(value, dict) else value


class ModelCheck:
  """check_model for every tokenizer class (needs vocab_size and fingerprint)."""

  def check_model(self, name: str, model, path: str, where: str = "") -> None:
    """ValueError unless `model` (an LM) has this vocabulary and, if it records one, this
    tokenizer's fingerprint. name, where: how the messages call the model ("draft", " at
    <dir>"); path: where this tokenizer was loaded from."""
    if model.config.vocab_size != self.vocab_size:
      raise ValueError(f"{name} vocab_size={model.config.vocab_size} does not match the tokenizer "
                       f"{path} (vocab {self.vocab_size})")
    if model.tokenizer_id and model.tokenizer_id != self.fingerprint:
      raise ValueError(f"{name}{where} was trained with another tokenizer ({model.tokenizer_id}) "
                       f"than {path} ({self.fingerprint})")


class HFTokenizer(ModelCheck):
  """encode / decode / bos_id / eos_id / vocab_size / fingerprint over tokenizers.Tokenizer."""

  def __init__(self, tokenizer_json: str, special: dict | None = None, *,
               add_bos_token: bool = False, chat_template: str | None = None):
    """Builds from the text of a tokenizer.json and {'bos': ..., 'eos': ..., 'pad': ...} tokens or ids.

    add_bos_token, chat_template: what the model's files say (tokenizer_config.json, GGUF
    metadata); kept for scripts that apply them. encode() adds bos only when asked.
    """
    self._json = tokenizer_json
    self.add_bos_token = add_bos_token
    self.chat_template = chat_template
    self.backend = tokenizers.Tokenizer.from_str(tokenizer_json)
    ids = {}
    for role, value in (special or {}).items():
      if isinstance(value, str):
        value = self.backend.token_to_id(value)
      ids[role] = value
    self._ids = ids

  @classmethod
  def load(cls, path: str) -> HFTokenizer:
    """Loads `tokenizer.json` (a file, or a folder holding it and maybe tokenizer_config.json)."""
    is_dir = paths.isdir(path)
    folder = path if is_dir else os.path.dirname(path)
    file = os.path.join(path, TOKENIZER_FILE) if is_dir else path
    text = paths.read_text(file)
    special, extra = {}, {}
    for name, prefix in (("config.json", "_token_id"), ("tokenizer_config.json", "_token")):
      meta_path = os.path.join(folder, name)
      if paths.exists(meta_path):
        meta = json.loads(paths.read_text(meta_path))
        for role in ("bos", "eos", "pad"):
          value = meta.get(role + prefix)
          value = value[0] if isinstance(value, list) else _token(value)
          if value is not None:
            special[role] = value
        if name == "tokenizer_config.json":
          extra = {"add_bos_token": bool(meta.get("add_bos_token", False)),
                   "chat_template": meta.get("chat_template")}
    return cls(text, special, **extra)

  def to_json(self) -> str:
    """The tokenizer.json text (written beside a converted model; `load` reads it back)."""
    return self._json

  @property
  def fingerprint(self) -> str:
    """sha256 of what the ids mean: the model's type, vocabulary and merges and the
    added tokens' ids and contents.

    Not of the file's bytes, nor of the normalizer / pre-tokenizer: the same
    tokenizer converted by different transformers versions (Llama-2-7b-hf vs
    TinyLlama) spells those differently, and a draft / target pair only needs
    every id to mean the same piece (prompts are encoded once, by one of them).
    """
    data = json.loads(self._json)
    model = data.get("model") or {}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    added = sorted((t["id"], t["content"]) for t in data.get("added_tokens") or [])
    canon = json.dumps({"type": model.get("type"), "vocab": model.get("vocab"), "merges": merges,
                        "added": added}, sort_keys=True)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()

  @property
  def vocab_size(self) -> int:
    """Number of ids, added tokens included."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  @property
  def bos_id(self) -> int | None:
    """Beginning-of-sequence id, or None when the tokenizer has none."""
    return self._ids.get("bos")

  @property
  def eos_id(self) -> int | None:
    """End-of-sequence id."""
    return self._ids.get("eos")

  @property
  def pad_id(self) -> int | None:
    """Padding id, or None."""
    return self._ids.get("pad")

  def id_to_piece(self, token_id: int) -> str:
    """The token string of one id."""
    return self.backend.id_to_token(token_id)

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    """Text to ids, with bos / eos added on request (a missing bos is skipped)."""
    return self.encode_batch([text], add_bos, add_eos)[0]

  def encode_batch(self, texts: Sequence[str], add_bos: bool = False,
                   add_eos: bool = False) -> list[list[int]]:
    """Encodes many texts (multi-threaded inside tokenizers)."""
    if add_eos and self.eos_id is None:
      raise ValueError("add_eos=True but this tokenizer has no eos token")
    prefix = [self.bos_id] if add_bos and self.bos_id is not None else []
    suffix = [self.eos_id] if add_eos else []
    encoded = self.backend.encode_batch(list(texts), add_special_tokens=False)
    return [prefix + e.ids + suffix for e in encoded]

  def decode(self, ids: Iterable[int]) -> str:
    """Ids to text, special tokens skipped."""
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)
