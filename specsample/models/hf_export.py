"""specsample models as Hugging Face folders (config.json + model.safetensors), and HF import.

    hf_export.export_hf("/out/llama", config, params, tokenizer_dir="/hf/llama")
    hf_export.convert("/hf/llama", "/out/specsample_model")   # scripts/convert_hf.py

Export writes a LlamaForCausalLM (Qwen2ForCausalLM when the model has q/k/v
biases) that transformers and vLLM load; importing it back (models.hf) gives
bit-identical parameters. Both write to a temporary sibling folder that is
renamed into place, so an interrupted run leaves no half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import jax
import numpy as np
from safetensors.numpy import save_file

from specsample import paths
from specsample.models import hf
from specsample.models import io
from specsample.models import transformer as tr

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "generation_config.json")


def hf_config(config: tr.TransformerConfig, *, bos_id: int | None = 1,
              eos_id: int | None = 2) -> dict:
  """The HF config.json dict of a TransformerConfig (transformers 4.x keys, which 5.x reads).

  Raises:
    ValueError: a GELU MLP, which no supported HF architecture has.
  """
  if config.mlp_type != "swiglu":
    raise ValueError(f"HF export needs mlp_type='swiglu' (Llama / Qwen2), got {config.mlp_type!r}")
  qwen = config.attn_bias
  out = {
      "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
      "model_type": "qwen2" if qwen else "llama",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "intermediate_size": config.mlp_dim, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "hidden_act": "silu",
      "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
      "rope_theta": config.rope_base, "tie_word_embeddings": config.tie_embeddings,
      "torch_dtype": config.param_dtype, "bos_token_id": bos_id, "eos_token_id": eos_id,
      "attention_bias": False, "mlp_bias": False, "use_cache": True,
  }
  if config.rope_llama3:
    factor, low, high, old_len = config.rope_llama3
    out["rope_scaling"] = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                           "high_freq_factor": high, "original_max_position_embeddings": int(old_len)}
  if qwen:
    del out["attention_bias"], out["mlp_bias"], out["head_dim"]
    out.update(use_sliding_window=False, sliding_window=None)
  return out


def _atomic_dir(directory: str, write) -> str:
  """Runs write(tmp) on a fresh temporary sibling, then renames it to `directory`."""
  if paths.is_remote(directory):  # safetensors and the folder rename need a local disk
    raise ValueError(f"{directory}: Hugging Face folders are written to local disk; export "
                     "there, then copy it: gcloud storage cp -r <folder> gs://...")
  directory = os.path.abspath(directory)
  tmp = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
  os.makedirs(tmp)
  try:
    write(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  paths.swap_in_folder(tmp, directory)
  return directory


def export_hf(directory: str, config: tr.TransformerConfig, params, *,
              tokenizer_dir: str | None = None, bos_id: int | None = 1,
              eos_id: int | None = 2) -> str:
  """Writes an HF folder (config.json, model.safetensors in param_dtype, tokenizer files).

  Args:
    directory: output folder, replaced atomically.
    config, params: the model; params may be sharded (gathered to this host).
    tokenizer_dir: folder whose tokenizer files (tokenizer.json, ...) are copied.
    bos_id, eos_id: written to config.json.
  """
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  tensors = {}
  for key, (hf_name, layout, _) in hf.tensor_map(config).items():
    array = np.asarray(jax.device_get(flat[key]))
    tensors[hf_name] = np.ascontiguousarray(hf.to_hf(array, layout))

  def write(tmp):
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config(config, bos_id=bos_id, eos_id=eos_id), f, indent=2)
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES if tokenizer_dir else ():
      if os.path.exists(os.path.join(tokenizer_dir, name)):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))

  return _atomic_dir(directory, write)


def convert(hf_dir: str, out: str, *, store_dtype: str | None = None) -> str:
  """Imports an HF folder and saves it as a specsample model folder (models.io.save_lm).

  Args:
    hf_dir: HF folder (config.json + safetensors).
    out: the model folder to write (atomically, as save_lm does).
    store_dtype: dtype of the stored params; default the checkpoint's.

  Returns:
    The written folder.
  """
  config, meta = hf.load_config(hf_dir)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shardings = jax.tree_util.tree_map(lambda _: device, tr.param_shapes(config))
  params = hf.load_params(hf_dir, config, shardings)
  return io.save_lm(out, config, params, tokenizer_id=meta["tokenizer_id"],
                    store_dtype=store_dtype or config.param_dtype,
                    extra={"source": paths.absolute(hf_dir), "architecture": meta["architecture"]})
