r"""Converts a Hugging Face Llama / Mistral / Qwen2 folder to a specsample model folder, or back.

  python scripts/convert_hf.py --hf_dir=/ckpt/Llama-2-7b-hf --out=/models/llama2_7b
  python scripts/convert_hf.py --to_hf --model_dir=assets/pair/target --out=/tmp/target_hf \
      --tokenizer_dir=/ckpt/tokenizer_folder

Converting is optional: load_lm and every script that takes a model folder
read an HF folder directly. The output is written to a temporary sibling and
renamed into place, so an interrupted run leaves nothing half-written.
"""

from absl import app, flags
import jax

from specsample.models import hf_export
from specsample.models import io as model_io

_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF folder: config.json + *.safetensors.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_STORE_DTYPE = flags.DEFINE_string("store_dtype", None, "Stored dtype; default the checkpoint's.")
_TO_HF = flags.DEFINE_bool("to_hf", False, "Export --model_dir to HF format instead.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "With --to_hf: the model folder to export.")
_TOKENIZER_DIR = flags.DEFINE_string("tokenizer_dir", None, "With --to_hf: tokenizer files to copy.")
flags.mark_flags_as_required(["out"])


def main(argv):
  del argv
  print(f"devices: {jax.devices()}")
  if _TO_HF.value:
    lm = model_io.load_lm(_MODEL_DIR.value)
    out = hf_export.export_hf(_OUT.value, lm.config, lm.params, tokenizer_dir=_TOKENIZER_DIR.value)
  else:
    out = hf_export.convert(_HF_DIR.value, _OUT.value, store_dtype=_STORE_DTYPE.value)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
