"""Named model sizes.

* `chinchilla_70b` / `draft_4b`: the paper's pair (Chen et al. 2023: 80 layers,
  d_model 8192, 64 heads; 8 layers, d_model 6144, 48 heads). Chinchilla's MLP
  width and vocabulary are not in PAPERS.md; we use SwiGLU with F = 3 D and a
  32k vocabulary, which lands the target at 70.3B parameters (untied
  embeddings) and the wide, shallow draft at 4.12B (tied), both checked with
  `jax.eval_shape` in tests/test_models.py. They are for sharded accelerator
  runs and memory dry-runs, never allocated on CPU.
* `target_small` / `draft_small`: the CPU-trainable embedded pair. The draft is
  narrow and shallow so that its decode step costs well under a tenth of the
  target's (measured in results/pair.json).
* `tiny`: a few thousand parameters for unit tests.
* `llama2_7b` / `tinyllama_1b`: the shapes of Hugging Face's Llama-2-7b-hf and
  TinyLlama-1.1B (models/hf.py imports the weights), for dry runs of that pair.
"""

from __future__ import annotations

from specsample.models.transformer import TransformerConfig

PRESETS: dict[str, TransformerConfig] = {
    "chinchilla_70b": TransformerConfig(
        vocab_size=32_000, d_model=8192, num_layers=80, num_heads=64, num_kv_heads=64,
        head_dim=128, mlp_dim=3 * 8192, tie_embeddings=False, max_seq_len=2048,
        dtype="bfloat16", param_dtype="bfloat16"),
    "draft_4b": TransformerConfig(
        vocab_size=32_000, d_model=6144, num_layers=8, num_heads=48, num_kv_heads=48,
        head_dim=128, mlp_dim=3 * 6144, tie_embeddings=True, max_seq_len=2048,
        dtype="bfloat16", param_dtype="bfloat16"),
    "target_small": TransformerConfig(
        vocab_size=4096, d_model=320, num_layers=6, num_heads=5, num_kv_heads=1,
        head_dim=64, mlp_dim=864, tie_embeddings=True, max_seq_len=1024),
    "draft_small": TransformerConfig(
        vocab_size=4096, d_model=128, num_layers=2, num_heads=2, num_kv_heads=1,
        head_dim=64, mlp_dim=384, tie_embeddings=True, max_seq_len=1024),
    "tiny": TransformerConfig(
        vocab_size=32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=8, mlp_dim=64, tie_embeddings=True, max_seq_len=64),
    "llama2_7b": TransformerConfig(
        vocab_size=32_000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
        head_dim=128, mlp_dim=11_008, tie_embeddings=False, max_seq_len=4096, norm_eps=1e-5,
        dtype="bfloat16", param_dtype="bfloat16"),
    "tinyllama_1b": TransformerConfig(
        vocab_size=32_000, d_model=2048, num_layers=22, num_heads=32, num_kv_heads=4,
        head_dim=64, mlp_dim=5632, tie_embeddings=False, max_seq_len=2048, norm_eps=1e-5,
        dtype="bfloat16", param_dtype="bfloat16"),
}


def get_preset(name: str, **overrides) -> TransformerConfig:
  """The named preset with field overrides, validated.

  Raises:
    ValueError: unknown preset name (the message lists the known ones) or an
      invalid field value (the message names the field).
  """
  if name not in PRESETS:
    raise ValueError(f"model preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides).validate()
