r"""Builds tests/fixtures/hf/: tiny HF checkpoints made by transformers' own classes, with goldens.

    pip install -e '.[hf-reference]' && python scripts/make_hf_goldens.py

Why goldens and not transformers in CI: torch from PyPI is a multi-GB CUDA
wheel and would dominate the CI install and its 15-minute budget, while the
import code needs only safetensors and tokenizers. So this script (run once,
by hand, with the CPU torch wheel) records what transformers computes, and
tests/test_hf.py checks the import against these files on every run; when
transformers is importable the tests also compare live.

For each family (Llama, Mistral, Qwen2) x (tied, untied) it writes a folder
with config.json, float32 safetensors (llama_untied sharded, with
model.safetensors.index.json), a tokenizer (Llama-2-style sentencepiece BPE
with byte fallback, or Llama-3/Qwen-style byte-level BPE, trained here),
goldens.safetensors (logits [T, V] on prompts of several lengths) and
goldens.json (the prompts, greedy generations by model.generate, and tokenizer
encodings / decodings of code and unicode text).
Weights are redrawn at std 0.3 (biases and norms too) so that every tensor
matters and next-token distributions are far from uniform.
"""

import inspect
import io
import json
import os
import shutil
import textwrap

from absl import app, flags
import numpy as np
from safetensors.numpy import save_file
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
import torch
import transformers

_OUT = flags.DEFINE_string("out", "tests/fixtures/hf", "Folder of the fixtures.")

VOCAB = 384
PROMPT_LENGTHS = (1, 5, 12, 24)
NEW_TOKENS = 8
TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n\treturn fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import os\n\nclass Foo:  # naïve café ☕\n    x = {'ключ': 'значение'}\r\n",
    "日本語のテキスト 😀 emoji and   spaces\n\n\n  trailing  ",
    "▁already escaped▁ space",
]
_COMMON = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
FIXTURES = {
    # name: (model class, config kwargs, tokenizer kind, max shard size or None)
    "llama_tied": ("Llama", dict(tie_word_embeddings=True), "spm", None),
    "llama_untied": ("Llama", dict(tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)), "bytelevel", "20KB"),
    "mistral_tied": ("Mistral", dict(tie_word_embeddings=True, sliding_window=48), "spm", None),
    "mistral_untied": ("Mistral", dict(tie_word_embeddings=False, sliding_window=None,
                                       num_key_value_heads=1), "spm", None),
    "qwen2_tied": ("Qwen2", dict(tie_word_embeddings=True, bos_token_id=None), "bytelevel", None),
    "qwen2_untied": ("Qwen2", dict(tie_word_embeddings=False, bos_token_id=None, rope_theta=1e6),
                     "bytelevel", None),
}


def _corpus() -> list[str]:
  return [line for m in (json, shutil, textwrap) for line in inspect.getsource(m).splitlines()]


def make_tokenizer(kind: str, folder: str):
  """A 384-token BPE: 'spm' is Llama 2's kind (sentencepiece, byte fallback, converted by
  transformers from tokenizer.model), 'bytelevel' Llama 3's / Qwen2's (GPT-2 bytes)."""
  if kind == "spm":
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, model_type="bpe",
        vocab_size=VOCAB, byte_fallback=True, character_coverage=0.98, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        normalization_rule_name="identity")  # as Llama 2's
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
      f.write(model.getvalue())
    return transformers.LlamaTokenizer.from_pretrained(folder, legacy=False)
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_corpus(), trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>",
                                              unk_token="<unk>", clean_up_tokenization_spaces=False)


def make_model(family: str, overrides: dict, seed: int):
  """A transformers model of the family, all weights redrawn at std 0.3 (norms around 1)."""
  cfg_cls = getattr(transformers, f"{family}Config")
  model_cls = getattr(transformers, f"{family}ForCausalLM")
  model = model_cls(cfg_cls(**{**_COMMON, **overrides})).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * 0.3
      p.copy_(1.0 + noise if "norm" in name else noise)
  return model


def goldens(model, tokenizer, seed: int) -> tuple[dict, dict]:
  """({prompts, greedy continuations, tokenizer results}, {logits_<length>: [T, V] float32})."""
  rng = np.random.default_rng(seed)
  out, logits_out = {"greedy": {}, "prompts": {}}, {}
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  for n in PROMPT_LENGTHS:
    prompt = rng.integers(3, VOCAB, size=n).tolist()
    ids = torch.tensor([prompt])
    with torch.no_grad():
      logits = model(ids).logits[0].float().numpy()
      gen = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    out["prompts"][n] = prompt
    logits_out[f"logits_{n}"] = logits
    out["greedy"][n] = gen[0, n:].tolist()
  out["tokenizer"] = [{"text": t, "ids": tokenizer.encode(t, add_special_tokens=False),
                       "decoded": tokenizer.decode(tokenizer.encode(t, add_special_tokens=False),
                                                   skip_special_tokens=True)} for t in TEXTS]
  return out, logits_out


def main(argv):
  del argv
  torch.manual_seed(0)
  for seed, (name, (family, overrides, tok_kind, shard)) in enumerate(FIXTURES.items()):
    folder = os.path.join(_OUT.value, name)
    shutil.rmtree(folder, ignore_errors=True)
    model = make_model(family, overrides, seed)
    tokenizer = make_tokenizer(tok_kind, folder)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    tokenizer.save_pretrained(folder)
    results, logits = goldens(model, tokenizer, seed)
    with open(os.path.join(folder, "goldens.json"), "w") as f:
      json.dump(results, f, indent=1)
    save_file(logits, os.path.join(folder, "goldens.safetensors"))
    print(name, sorted(os.listdir(folder)))


if __name__ == "__main__":
  app.run(main)
