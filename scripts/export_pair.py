r"""Exports trained target and draft checkpoints as the embedded pair.

  python scripts/export_pair.py --target_workdir=workdirs/target_small \
      --draft_workdir=workdirs/draft_small --out=assets/pair

Writes <out>/target and <out>/draft (config.json with the training config and
tokenizer fingerprint, bfloat16 params) and copies each run's metrics.jsonl
beside them. The tokenizer stays at assets/tokenizer/. Then measure the pair:
python scripts/pair_metrics.py (writes results/pair.json).

A run trained on a mesh (config.mesh) is restored onto that mesh, never
materialised on one host: on a TPU slice run this on every worker with
--distributed=auto (docs/tpu.md). --one_device restores onto one device.
"""

import os

from absl import flags

from specsample import cli, distributed, paths
from specsample.training import train as train_lib

_TARGET = flags.DEFINE_string("target_workdir", "workdirs/target_small", "Target training workdir.")
_DRAFT = flags.DEFINE_string("draft_workdir", "workdirs/draft_small", "Draft training workdir.")
_OUT = flags.DEFINE_string("out", "assets/pair", "Output folder.")
_ONE_DEVICE = flags.DEFINE_bool(
    "one_device", False, "Restore onto one device instead of the run's own mesh (config.mesh).")


def main(argv):
  del argv
  distributed.maybe_initialize()
  paths.check_writable(_OUT.value, "out")  # a bad bucket fails before any restore
  for workdir, name in ((_TARGET.value, "target"), (_DRAFT.value, "draft")):
    out = os.path.join(_OUT.value, name)
    step = train_lib.export_run(workdir, out, one_device=_ONE_DEVICE.value)
    print(f"exported {workdir} step {step} -> {out}")


if __name__ == "__main__":
  cli.run(main)
