r"""Goldens for tests/test_gguf.py, made by transformers' own GGUF loaders (not by specsample).

  pip install -e '.[hf-reference]'        # after the CPU torch wheel
  python scripts/make_gguf_goldens.py --smollm=workdirs/models/downloads/SmolLM2-135M-Instruct.Q4_1.gguf

Writes tests/fixtures/gguf/: goldens.json (tiny models' logits and greedy
tokens, tokenizer encodings) and smollm2_tokenizer.gguf (the real file's
tokenizer metadata alone, so CI tests that tokenizer without the 98 MB file).
With --smollm it also records the real model's top-64 logits and greedy
tokens on PROMPTS (tested when the fetched file is in the cache).
"""

import json
import os
import shutil
import sys
import tempfile

from absl import app, flags
import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import gguf_fixtures  # pylint: disable=g-import-not-at-top,wrong-import-position

_SMOLLM = flags.DEFINE_string("smollm", None, "The real SmolLM2-135M-Instruct GGUF (optional).")
_OUT = flags.DEFINE_string("out", "tests/fixtures/gguf", "Output folder.")

TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "\tx  =  [1,2,3]\r\n\n\n    # trailing   \n  \t ",
    "Ünïcödé: 日本語のテキスト, emoji 🚀🔥, ‘quotes’ — dash, naïve café",
    "Numbers 3.14159 and 2024-12-06, 1e-5, 0xFF, 100000000 items; it's we'll they'd",
    "<|im_start|>user\nSummarize this.<|im_end|>\n<|im_start|>assistant\n",
    "      indented\n            deeper\n" + " " * 17 + "x\n",
]
PROMPTS = [
    "def add(a, b):\n    ",
    "import os\n\ndef list_files(path):\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "class Stack:\n    def __init__(self):\n",
    "The quick brown fox",
    "# Sort a list of numbers in ascending order\n",
]
TINY_PROMPTS = [[1, 5, 9, 100, 7], [3, 200, 17], [250, 4, 4, 4, 4, 4, 60, 2]]


def model_goldens(folder: str, name: str, prompts, top: int | None, greedy: int) -> dict:
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                            torch_dtype=torch.float32)
  model.eval()
  out = {"prompts": prompts, "logits": [], "top_ids": [], "greedy": []}
  with torch.no_grad():
    for ids in prompts:
      logits = model(torch.tensor([ids])).logits[0, -1].double().numpy()
      if top is None:
        out["logits"].append(logits.tolist())
      else:
        order = np.argsort(-logits, kind="stable")[:top]
        out["top_ids"].append(order.tolist())
        out["logits"].append(logits[order].tolist())
      gen = model.generate(torch.tensor([ids]), max_new_tokens=greedy, do_sample=False,
                           attention_mask=torch.ones(1, len(ids), dtype=torch.long))
      out["greedy"].append(gen[0, len(ids):].tolist())
  return out


def tokenizer_goldens(folder: str, name: str) -> dict:
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  return {"encodings": [tok.encode(t, add_special_tokens=False) for t in TEXTS],
          "decoded": [tok.decode(tok.encode(t, add_special_tokens=False)) for t in TEXTS]}


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  goldens = {"transformers": transformers.__version__, "texts": TEXTS, "models": {},
             "tokenizers": {}}
  with tempfile.TemporaryDirectory() as tmp:
    for name, arch, tied in (("llama_tied", "llama", True), ("llama_untied", "llama", False),
                             ("qwen2", "qwen2", True)):
      gguf_fixtures.write_tiny_model(os.path.join(tmp, f"{name}.gguf"), arch, tied=tied)
      goldens["models"][name] = model_goldens(tmp, f"{name}.gguf", TINY_PROMPTS, None, 8)
    for pre in ("smollm", "llama-bpe", "qwen2"):
      tok = dict(gguf_fixtures.byte_tokenizer(320), pre=pre)
      gguf_fixtures.write_tokenizer_only(os.path.join(tmp, f"tok_{pre}.gguf"), tok)
      goldens["tokenizers"][f"byte_{pre}"] = tokenizer_goldens(tmp, f"tok_{pre}.gguf")
    spm = gguf_fixtures.spm_tokenizer("assets/tokenizer/tokenizer.model")
    gguf_fixtures.write_tokenizer_only(os.path.join(tmp, "tok_spm.gguf"), spm)
    goldens["tokenizers"]["spm"] = tokenizer_goldens(tmp, "tok_spm.gguf")
    if _SMOLLM.value:
      real = os.path.join(tmp, "real.gguf")
      os.symlink(os.path.abspath(_SMOLLM.value), real)
      tok = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file="real.gguf")
      prompts = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
      goldens["smollm2"] = {**model_goldens(tmp, "real.gguf", prompts, 64, 32), "prompt_texts": PROMPTS}
      goldens["tokenizers"]["smollm2"] = tokenizer_goldens(tmp, "real.gguf")
      # The real tokenizer's metadata alone, so CI tests it without the model file.
      import gguf  # pylint: disable=g-import-not-at-top
      reader = gguf.GGUFReader(_SMOLLM.value)
      meta = {k[len("tokenizer.ggml."):]: f.contents() for k, f in reader.fields.items()
              if k.startswith("tokenizer.ggml.")}
      tok_meta = {"model": meta["model"], "pre": meta["pre"], "tokens": meta["tokens"],
                  "types": meta["token_type"], "merges": meta["merges"], "bos": meta["bos_token_id"],
                  "eos": meta["eos_token_id"], "pad": meta.get("padding_token_id"),
                  "unk": meta.get("unknown_token_id"),
                  "chat_template": reader.fields["tokenizer.chat_template"].contents()}
      gguf_fixtures.write_tokenizer_only(os.path.join(tmp, "smollm2_tokenizer.gguf"), tok_meta)
      shutil.copy(os.path.join(tmp, "smollm2_tokenizer.gguf"),
                  os.path.join(_OUT.value, "smollm2_tokenizer.gguf"))
      goldens["tokenizers"]["smollm2_metadata_only"] = tokenizer_goldens(tmp, "smollm2_tokenizer.gguf")
  with open(os.path.join(_OUT.value, "goldens.json"), "w") as f:
    json.dump(goldens, f)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
