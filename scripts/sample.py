r"""Samples completions of prompts from a .txt or .jsonl file; writes JSONL with text and statistics.

  python scripts/sample.py --config=configs/sample.py \
      --config.input=prompts.jsonl --config.output=results/samples.jsonl
  # Every worker of a TPU slice, one mesh over all chips (docs/tpu.md, step 5):
  python scripts/sample.py --distributed=auto --config=configs/sample.py \
      --config.mesh.data=2 --config.mesh.tensor=8 --config.batch_size=16 ...

configs/sample.py has the formats and every field (specsample/sample_file.py
does the work). A bad setting or file prints one line and exits with status 2.
"""

from absl import app, flags
import jax
from ml_collections import config_flags

from specsample import cli, sample_file

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sampling config file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "draft_dir", "tokenizer"))
  rows = sample_file.run(config, start=cli.start_jax)
  if jax.process_index() == 0:
    calls = sum(r["target_calls"] for r in rows)
    print(f"wrote {len(rows)} rows to {config.output}: {sum(r['new_tokens'] for r in rows)} "
          f"tokens, {calls} target calls")


if __name__ == "__main__":
  cli.run(main)
