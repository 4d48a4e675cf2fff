"""Multi-host start-up through JAX's own runtime (jax.distributed).

Flags --coordinator_address, --num_processes and --process_id are defined here
so every script accepts them. With none set, single-process runs do nothing;
on Cloud TPU VMs `--distributed=auto` lets JAX discover the slice itself.
"""

from absl import flags
import jax

_MODE = flags.DEFINE_enum("distributed", "off", ["off", "auto", "manual"],
                          "off: one process; auto: jax.distributed.initialize() discovers "
                          "the cluster (Cloud TPU, SLURM); manual: use the flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def maybe_initialize() -> None:
  """Initializes jax.distributed according to the flags (before any jax op)."""
  mode = _MODE.value
  if mode == "off":
    return
  if mode == "auto":
    jax.distributed.initialize()
    return
  missing = [n for n, v in (("coordinator_address", _COORDINATOR.value),
                            ("num_processes", _NUM_PROCESSES.value),
                            ("process_id", _PROCESS_ID.value)) if v is None]
  if missing:
    raise ValueError(f"--distributed=manual needs {missing}")
  if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    raise ValueError(f"--process_id must be in [0, {_NUM_PROCESSES.value}), got {_PROCESS_ID.value}")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
