r"""The paper's pair (chinchilla_70b target, draft_4b draft) on a Cloud TPU slice, bfloat16.

Size it without a TPU (abstract shapes, nothing allocated; exits 1 if it does not fit):

  python scripts/dry_run.py --config=configs/tpu.py:slice=v4-32
  python scripts/dry_run.py --config=configs/tpu.py:slice=v5e-64
  python scripts/dry_run.py --config=configs/tpu.py:slice=v5e-64 --config.batch_size=64 \
      --config.mesh.data=2 --config.mesh.tensor=32   # fails: 48 draft heads over tensor=32

Arguments after the colon (comma separated):
  slice=<name>   one of SLICES below (default v4-32): sets the mesh, HBM and batch.

Mesh. Sampling is bound by reading weights and caches from HBM, so both
models are split Megatron-style over `tensor` (heads, kv heads, MLP width,
vocabulary: 64 target and 48 draft heads both divide 8 and 16) within as few
chips as hold the 70B target's 141 GB of bfloat16 weights with room for the
caches, and the remaining chips form `data` replicas that split the batch.
`fsdp` stays 1: gathering weights every decode step would cost more than it
saves. Each model has its own rules (sharding.RULES name + overrides), so the
draft can be laid out differently from the target on the same mesh.
"""

import ml_collections

from specsample import config_common

# name -> (gcloud --accelerator-type, chips = JAX devices, hosts, HBM GiB per chip, tensor).
# v4: 2 TensorCores per chip seen as one device (megacore), 4 chips per host.
# v5e (v5litepod): 1 TensorCore per chip, 16 GiB HBM; multi-host slices have 4 chips per host.
SLICES = {
    "v4-8": ("v4-8", 4, 1, 32, 4),
    "v4-16": ("v4-16", 8, 2, 32, 8),
    "v4-32": ("v4-32", 16, 4, 32, 8),
    "v4-64": ("v4-64", 32, 8, 32, 8),
    "v4-128": ("v4-128", 64, 16, 32, 8),
    "v5e-8": ("v5litepod-8", 8, 1, 16, 8),
    "v5e-16": ("v5litepod-16", 16, 4, 16, 16),
    "v5e-32": ("v5litepod-32", 32, 8, 16, 16),
    "v5e-64": ("v5litepod-64", 64, 16, 16, 16),
    "v5e-128": ("v5litepod-128", 128, 32, 16, 16),
    "v5e-256": ("v5litepod-256", 256, 64, 16, 16),
}
ROWS_PER_REPLICA = 8  # batch rows per data replica


def _model(preset: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.preset = preset                   # models/presets.py name
  m.overrides = ml_collections.ConfigDict({  # TransformerConfig fields replaced in the preset
      "dtype": "bfloat16",            # compute dtype (logits and rejection maths stay float32)
      "param_dtype": "bfloat16",      # 2 bytes per parameter in HBM
  })
  m.rules = "tensor_parallel"         # sharding.RULES name: logical axis -> mesh axes
  m.rule_overrides = ml_collections.ConfigDict()  # e.g. {"vocab": None} to replicate one axis
  return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The pair on `slice=<name>` (see SLICES)."""
  args = config_common.parse_arg(arg, "configs/tpu.py", options={"slice": "v4-32"})
  if args["slice"] not in SLICES:
    raise ValueError(f"configs/tpu.py: unknown slice {args['slice']!r}; choose one of "
                     f"{sorted(SLICES)}")
  accelerator, chips, hosts, hbm, tensor = SLICES[args["slice"]]
  c = ml_collections.ConfigDict()
  c.slice = args["slice"]             # informational: which SLICES entry this is
  c.accelerator_type = accelerator    # gcloud compute tpus tpu-vm create --accelerator-type
  c.num_devices = chips               # JAX devices in the slice (chips), all hosts together
  c.num_hosts = hosts                 # TPU VM workers: one process each (--distributed=auto)
  c.hbm_gib = float(hbm)              # HBM per device; scripts/dry_run.py --hbm_gib overrides
  c.min_free_gib = 1.0                # per device, kept for activations, logits and XLA temporaries

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = chips // tensor       # replicas; the batch is split over data x fsdp
  c.mesh.fsdp = 1                     # parameter (embed) sharding; 1 for sampling
  c.mesh.tensor = tensor              # heads / kv heads / MLP / vocab split (Megatron)

  c.target = _model("chinchilla_70b")  # 70.3B params, 80 layers, 64 heads (q)
  c.draft = _model("draft_4b")         # 4.12B params, 8 layers, 48 heads (p)

  c.batch_size = ROWS_PER_REPLICA * c.mesh.data  # rows per generate call (global)
  c.seq_len = 2048                    # KV-cache positions: prompt + new tokens + num_draft + 1
  c.num_draft = 4                     # the paper's K
  c.max_new_tokens = 128              # tokens per row (the paper's XSum / HumanEval length)
  c.temperature = 0.8                 # nucleus sampling of the paper's HumanEval runs
  c.top_p = 0.95
  return c
