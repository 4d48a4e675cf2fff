"""A KV predictor in closed form: least squares from the auxiliary's cache to the target's.

The predictor (models/kv_predictor.py) is linear per target layer: pre-rotary
keys (values) of target layer i = [aux keys (values) of layer j, 1] @ W. With
the auxiliary frozen, the L1 / L2 part of KV Prediction's objective is then a
ridge regression, solved exactly from moments accumulated over corpus windows:
one forward of each model per window, no backward, no learning rate.

    G_j  = sum_n x_jn x_jn^T            [I+1, I+1]  per auxiliary layer j
    C_ji = sum_n x_jn y_in^T            [I+1, O]    per (j, target layer i)
    W_ji = (G_j + ridge * mean diag(G_j) * I')^-1 C_ji     (I' leaves the bias out)

Every (j, i) is solved, so the layer map is chosen by the data: target layer i
reads the auxiliary layer whose map leaves the smallest fraction of its
variance unexplained. A target layer the auxiliary holds an exact copy of (a
layer-pruned target keeps it) is copied through with the identity map instead.

The result is a starting point: training/kvp_train.py can fine-tune it on the
target's cross-entropy (config.init_from).
"""

from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np

from specsample import paths
from specsample.models import kv_predictor as kvp_lib
from specsample.models import transformer as tr
from specsample.models.lm import LM


def _flat_layers(xs: tuple[jax.Array, ...]) -> jax.Array:
  """Per-layer [B, S, K, H] -> [L, B*S, K*H]."""
  return jnp.stack([x.reshape(-1, x.shape[2] * x.shape[3]) for x in xs])


@functools.partial(jax.jit, static_argnames=("config",))
def window_moments(config: kvp_lib.KVPConfig, target_params, aux_params, tokens_BW: jax.Array):
  """Moments of one batch of windows, for keys and values: {kind: (G, C, yy, y)}.

  G [L_aux, I+1, I+1], C [L_aux, L_target, I+1, O], yy [L_target] (sum of
  squares), y [L_target, O] (sums), all float32 sums over the B * W positions,
  of pre-rotary keys (kv_predictor.pre_rotary) and values.
  """
  B, W = tokens_BW.shape
  _, aux = tr.forward(config.aux, aux_params, tokens_BW, tr.init_cache(config.aux, B, W))
  _, tgt = tr.forward(config.target, target_params, tokens_BW, tr.init_cache(config.target, B, W))
  aux_kv, tgt_kv = kvp_lib.pre_rotary(aux, config.aux), kvp_lib.pre_rotary(tgt, config.target)
  out = {}
  for i, kind in enumerate(("k", "v")):
    x_LNI = _flat_layers(aux_kv[i])
    x_LNI = jnp.concatenate([x_LNI, jnp.ones(x_LNI.shape[:2] + (1,), jnp.float32)], axis=-1)
    y_TNO = _flat_layers(tgt_kv[i])
    out[kind] = (jnp.einsum("jni,jnk->jik", x_LNI, x_LNI),
                 jnp.einsum("jni,tno->jtio", x_LNI, y_TNO),
                 jnp.sum(y_TNO * y_TNO, axis=(1, 2)), jnp.sum(y_TNO, axis=1))
  return out


class Moments:
  """Running float64 sums of `window_moments` over batches, and the solve."""

  def __init__(self):
    self.sums: dict | None = None
    self.count = 0  # positions

  def add(self, batch_moments: dict, positions: int) -> None:
    host = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), jax.device_get(batch_moments))
    self.sums = host if self.sums is None else jax.tree_util.tree_map(np.add, self.sums, host)
    self.count += positions

  def solve(self, ridge: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{kind: (W [L_aux, L_target, I+1, O], unexplained [L_aux, L_target])}.

    unexplained = residual sum of squares / total variance about the mean, per (j, i).
    """
    out = {}
    for kind, (G, C, yy, y) in self.sums.items():
      n = self.count
      L_a, L_t = C.shape[:2]
      W = np.zeros_like(C)
      resid = np.zeros((L_a, L_t))
      for j in range(L_a):
        reg = ridge * np.mean(np.diag(G[j])[:-1]) * np.diag(np.r_[np.ones(G.shape[-1] - 1), 0.0])
        W[j] = np.linalg.solve(G[j] + reg, C[j].transpose(1, 0, 2).reshape(G.shape[-1], -1)
                               ).reshape(G.shape[-1], L_t, -1).transpose(1, 0, 2)
        # |XW - Y|^2 = yy - 2 <W, C> + <W, G W>
        resid[j] = (yy - 2 * np.einsum("tio,tio->t", W[j], C[j])
                    + np.einsum("tio,ik,tko->t", W[j], G[j], W[j]))
      total = yy - np.sum(y * y, axis=-1) / n
      out[kind] = (W, resid / total[None])
    return out


def predictor(config: kvp_lib.KVPConfig, solved: dict, exact: dict[int, int]
              ) -> tuple[tuple[int, ...], dict, dict]:
  """(layer map, predictor params, {kind: unexplained per target layer}).

  Args:
    config: shapes (its layer_map is ignored: the data chooses it).
    solved: `Moments.solve`'s output.
    exact: target layer -> auxiliary layer holding an exact copy of it.
  """
  t, a = config.target, config.aux
  I, K, H = a.num_kv_heads * a.head_dim, t.num_kv_heads, t.head_dim
  unexplained = solved["k"][1] + solved["v"][1]
  layer_map = tuple(exact.get(i, int(np.argmin(unexplained[:, i]))) for i in range(t.num_layers))
  params, chosen = {}, {"k": [], "v": []}
  for i, j in enumerate(layer_map):
    for kind in ("k", "v"):
      W, frac = solved[kind]
      if i in exact:
        w, b = np.eye(I), np.zeros(I)
        chosen[kind].append(0.0)
      else:
        w, b = W[j, i, :-1], W[j, i, -1]
        chosen[kind].append(float(frac[j, i]))
      params[f"layer_{i}_{kind}"] = jnp.asarray(w.reshape(I, K, H), t.param_dtype)
      params[f"layer_{i}_{kind}_bias"] = jnp.asarray(b.reshape(K, H), t.param_dtype)
  return layer_map, params, chosen


def fit(config: kvp_lib.KVPConfig, target: LM, aux: LM, tokens: np.ndarray, fit_config,
        exact: dict[int, int]) -> tuple[tuple[int, ...], dict, dict]:
  """`predictor` fitted on fit_config.num_windows windows of fit_config.window tokens,
  drawn uniformly from `tokens` with a fixed seed (0): a pure function of its inputs."""
  rng = np.random.default_rng(0)
  moments = Moments()
  for _ in range(fit_config.num_windows):
    start = int(rng.integers(0, len(tokens) - fit_config.window))
    window_BW = np.asarray(tokens[None, start:start + fit_config.window], np.int32)
    moments.add(window_moments(config, target.params, aux.params, window_BW), window_BW.size)
  return predictor(config, moments.solve(fit_config.ridge), exact)


def fit_once(path: str, config: kvp_lib.KVPConfig, target: LM, aux: LM, tokens: np.ndarray,
             fit_config, exact: dict[int, int]) -> tuple[tuple[int, ...], dict]:
  """(layer map, params) of `fit`, computed once: stored whole at `path` (npz), read back
  on a resume, so a resumed training run starts from the same predictor."""
  if paths.isfile(path):
    with np.load(io.BytesIO(paths.read_bytes(path))) as f:
      layer_map = tuple(int(j) for j in f["layer_map"])
      params = {k[len("p_"):]: jnp.asarray(f[k]) for k in f.files if k.startswith("p_")}
    return layer_map, params
  layer_map, params, unexplained = fit(config, target, aux, tokens, fit_config, exact)
  buf = io.BytesIO()
  np.savez(buf, layer_map=np.asarray(layer_map, np.int32),
           unexplained_k=np.asarray(unexplained["k"]), unexplained_v=np.asarray(unexplained["v"]),
           **{f"p_{k}": np.asarray(v) for k, v in params.items()})
  paths.write_atomic({path: buf.getvalue()})
  return layer_map, params
