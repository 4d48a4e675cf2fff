r"""One process of the 2-process test (tests/test_multihost.py launches two).

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
  python tests/multihost_worker.py --distributed=manual \
      --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0 \
      --output_dir=/tmp/mh

Joins the cluster through specsample.distributed (the same flags every script
takes), builds one mesh over the devices of all processes, places both models'
parameters on it (each process holding only its own shards), and runs the
sharded greedy speculative loop. Every process prints its tokens; process 0 alone writes
<output_dir>/result.json. Then both save the sharded target with models.io.save_lm
into <output_dir>/target (one folder, written collectively) and read it back
with load_sharded_lm.
"""

import json
import os
import time

from absl import app, flags
import jax
import numpy as np

from specsample import distributed
from specsample import sharding as sh
from specsample.decoding import LM, generate
from specsample.models import io

import sharding_case as case  # tests/ is sys.path[0] when run as a script

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where process 0 writes result.json.")
flags.mark_flags_as_required(["output_dir"])


def main(argv):
  del argv
  start = time.perf_counter()
  distributed.maybe_initialize()
  pid, count = jax.process_index(), jax.process_count()
  mesh = sh.make_mesh(case.MESH_SHAPES[case.MULTIHOST_MESH])
  # Host weights, identical in every process; each process keeps only the
  # shards of its own devices (sharding.put_global, make_array_from_callback).
  target = LM(case.TARGET_CFG, sh.shard_params(case.target_lm().params, case.TARGET_CFG, mesh,
                                               case.TARGET_RULES))
  draft = LM(case.DRAFT_CFG, sh.shard_params(case.draft_lm().params, case.DRAFT_CFG, mesh,
                                             case.DRAFT_RULES))
  q = target.params["layer_0"]["attn"]["q"]
  assert not q.is_fully_addressable and len(q.addressable_shards) == jax.local_device_count()
  out = generate(target, case.PROMPTS, draft=draft, mesh=mesh, rules=case.TARGET_RULES,
                 draft_rules=case.DRAFT_RULES, method="speculative", **case.DECODE)
  # A model folder written collectively (each process saves its own shards;
  # process 0 writes config.json and renames), then read back shard by shard.
  saved = io.save_lm(os.path.join(_OUTPUT_DIR.value, "target"), case.TARGET_CFG, target.params,
                     store_dtype="float32")
  reloaded = io.load_sharded_lm(saved, mesh, case.TARGET_RULES)
  same = jax.tree_util.tree_map(
      lambda a, b: all(np.array_equal(x.data, y.data)
                       for x, y in zip(a.addressable_shards, b.addressable_shards)),
      target.params, reloaded.params)
  result = {
      "reloaded_shards_equal": all(jax.tree_util.tree_leaves(same)),
      "process_count": count, "global_devices": jax.device_count(),
      "local_devices": jax.local_device_count(),
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      # mesh.devices is [data, fsdp, tensor]: which processes hold each fsdp slice.
      "processes_by_fsdp": [sorted({d.process_index for d in mesh.devices[:, i].flat})
                            for i in range(mesh.shape["fsdp"])],
      "tokens": out.tokens, "target_calls": out.stats["target_calls"].tolist(),
      "written_by": pid, "seconds": round(time.perf_counter() - start, 1),
  }
  print(f"process {pid}/{count}: {jax.local_device_count()} of {jax.device_count()} devices, "
        f"mesh {result['mesh']}, {result['seconds']} s, tokens {out.tokens}", flush=True)
  if pid == 0:  # results are replicated: every process holds them, one writes them
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with open(os.path.join(_OUTPUT_DIR.value, "result.json"), "w") as f:
      json.dump(result, f)


if __name__ == "__main__":
  app.run(main)
