"""The training state on the mesh and the pure, jitted train step.

    state = {'params', 'model_state', 'opt', 'step'[, 'ema']}   (train_state.py)
    state, metrics = trainer.train_step(state, batch, rng)

The step is one `jax.jit` with explicit in/out shardings and the state
donated: parameters replicated (or as config.sharding_rules / an 'fsdp' axis
place them), the batch split over the data axes. Under jit, batch norm sees
the global batch, so no cross-device averaging is written anywhere.

Gradient accumulation (config.grad_accum_steps = A) is a `lax.scan` over A
micro-batches INSIDE the step, not optax.MultiSteps:
  * one step = one optimizer update = one global batch from the iterator, so
    schedules, checkpoints and the data-iterator state all count updates, and
    a checkpoint never holds a half-accumulated gradient;
  * micro-batch i takes rows i, A + i, 2A + i, ... of the batch: every device
    contributes equally to every micro-batch, so no device idles;
  * batch norm normalises each micro-batch with its own statistics and
    updates the running averages once per micro-batch, in order (as a
    PyTorch loop with accumulation does); only one micro-batch's activations
    are alive at a time.
Loss: config.loss -> `losses.asrid_loss` (w * static + (1 - w) * dynamic +
aux_weight * aux). Dropout keys: fold_in(rng, step) then fold_in(., micro).

Parameters frozen by config.optim.freeze, and parameters the loss never
reaches (found once from the loss's jaxpr, e.g. heads a variant does not use),
are not trainable: their gradients are zeroed before the global-norm clip and
the logged `grad_norm`, and AdamW does not decay them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from asrid_jax import losses, optim, train_state
from asrid_jax import sharding as sharding_lib
from asrid_jax.models import asrid as asrid_lib


def _live_inputs(jaxpr: jex_core.Jaxpr, live_out: list[bool]) -> list[bool]:
  """Which inputs of `jaxpr` can affect the outputs flagged in `live_out`.

  Backward liveness over the equations; a nested jit is analysed
  inside, any other primitive with a live output counts all its inputs as
  live (conservative: an input reported dead is never read by a live output).
  """
  live = {v for v, on in zip(jaxpr.outvars, live_out, strict=True) if on}
  live = {v for v in live if isinstance(v, jex_core.Var)}
  for eqn in reversed(jaxpr.eqns):
    outs = [v in live for v in eqn.outvars]
    if not any(outs):
      continue
    nested = eqn.primitive.name in ("pjit", "jit")  # renamed in jax 0.7
    inner = eqn.params.get("jaxpr") if nested else None
    if inner is not None:
      used = _live_inputs(inner.jaxpr, outs)
    else:
      used = [True] * len(eqn.invars)
    live.update(
      v
      for v, u in zip(eqn.invars, used, strict=True)
      if u and isinstance(v, jex_core.Var)
    )
  return [v in live for v in jaxpr.invars]


def params_without_gradient(loss_fn, params: Mapping[str, Any], *args) -> set:
  """Flat keys of `params` that output 0 of `loss_fn(params, *args)` never
  reads (their gradient is identically zero). Traces, does not compute."""
  closed = jax.make_jaxpr(loss_fn)(dict(params), *args)
  flat, _ = jax.tree_util.tree_flatten_with_path(dict(params))
  num_out = len(closed.jaxpr.outvars)
  live = _live_inputs(closed.jaxpr, [True] + [False] * (num_out - 1))
  # make_jaxpr's invars are the flattened arguments, params first.
  return {
    str(path[0].key)
    for (path, _), on in zip(flat, live[: len(flat)], strict=True)
    if not on
  }


def _opt_shardings(opt_abstract, param_sh: Mapping[str, NamedSharding], repl):
  """Optimizer leaves mirroring a parameter get its sharding; others repl."""

  def pick(path, leaf):
    for entry in reversed(path):
      if isinstance(entry, jax.tree_util.DictKey):
        sh = param_sh.get(str(entry.key))
        if sh is not None and len(sh.spec) <= len(leaf.shape):
          return sh
        break
    return repl

  return jax.tree_util.tree_map_with_path(pick, opt_abstract)


def _abstract_batch(config) -> tuple[jax.ShapeDtypeStruct, ...]:
  """(images, labels, frame_order) of a train batch, for tracing only."""
  data = config.data
  t = 1 if data.get("sampling", "video") == "picture" else data.clip_len
  size = data.image_size
  return (
    jax.ShapeDtypeStruct((2, t, size, size, 3), jnp.uint8),
    jax.ShapeDtypeStruct((2,), jnp.int32),
    jax.ShapeDtypeStruct((2, t), jnp.int32),
  )


class Trainer:
  """Model spec, optimizer, shardings and the jitted step of one run."""

  def __init__(self, config: ml_collections.ConfigDict, mesh, seed: int):
    self.config = config
    self.mesh = mesh
    self.seed = seed
    self.accum = int(config.get("grad_accum_steps", 1))
    self.ema_decay = float(config.get("ema_decay", 0.0) or 0.0)
    model = train_state.abstract_model(config.model)
    self.spec = train_state.ModelSpec.of(model)
    params, rest = self.spec.split(model)
    self._param_shapes = params
    freeze = [re.compile(r) for r in config.optim.get("freeze", [])]
    frozen = frozenset(k for k in params if any(r.search(k) for r in freeze))
    self.no_gradient = frozenset(
      params_without_gradient(
        lambda p, r, x, y, k, o: self._loss(p, r, x, y, k, o)[0],
        params,
        rest,
        *_abstract_batch(config)[:2],
        jax.random.key(0),
        _abstract_batch(config)[2],
      )
    )
    if self.no_gradient:
      logging.info(
        "%d parameter arrays never reach the loss (not decayed, not in "
        "|g|): %s ...",
        len(self.no_gradient),
        sorted(self.no_gradient)[:3],
      )
    self.trainable = frozenset(params) - frozen - self.no_gradient
    self.opt = optim.make_optimizer(
      config.optim,
      config.total_steps,
      optim.param_labels(params, frozen=frozen),
      decay={k: k in self.trainable and optim.default_decay(k) for k in params},
    )
    self.repl = sharding_lib.replicated(mesh)
    self.batch_sharding = sharding_lib.batch_sharding(mesh)
    p_sh = sharding_lib.param_shardings(
      params, mesh, config.get("sharding_rules", [])
    )
    opt_abs = jax.eval_shape(self.opt.tx.init, params)
    self.state_sharding = {
      "params": p_sh,
      "model_state": {k: self.repl for k in rest},
      "opt": _opt_shardings(opt_abs, p_sh, self.repl),
      "step": self.repl,
    }
    self._abstract = {
      "params": params,
      "model_state": rest,
      "opt": opt_abs,
      "step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    if self.ema_decay:
      # EMA of the weights and of the batch statistics: evaluating EMA
      # weights with the raw weights' BatchNorm statistics mismatches them.
      self.state_sharding["ema"] = p_sh
      self._abstract["ema"] = params
      self.state_sharding["ema_stats"] = {k: self.repl for k in rest}
      self._abstract["ema_stats"] = rest
    dp = sharding_lib.data_parallel_size(mesh)
    micro = config.batch_size // max(self.accum, 1)
    if config.batch_size % self.accum or micro % dp:
      raise ValueError(
        f"batch_size {config.batch_size} / grad_accum_steps {self.accum} "
        f"must give micro-batches divisible by the data-parallel size {dp}"
      )
    # Traced exactly once per Trainer: a second trace (new shapes, dtypes or
    # shardings) would silently recompile every few steps, so it raises
    # (chex.assert_max_traces(n=1) semantics, counted per Trainer instance).
    self.traces = 0
    self.train_step = jax.jit(
      self._traced_once,
      donate_argnums=(0,),
      in_shardings=(self.state_sharding, self.batch_sharding, self.repl),
      out_shardings=(self.state_sharding, self.repl),
    )
    self._feed = jax.jit(
      lambda opt_state, loss: optim.feed_validation_loss(
        self.opt, opt_state, loss
      ),
      donate_argnums=(0,),
      out_shardings=self.state_sharding["opt"],
    )

  # ---------------------------------------------------------------- state
  def abstract_state(self) -> dict[str, Any]:
    """ShapeDtypeStructs carrying this mesh's shardings (restore target)."""
    return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      self._abstract,
      self.state_sharding,
    )

  def param_counts(self) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k, v in self._param_shapes.items():
      group = k.split("/", 1)[0]
      counts[group] = counts.get(group, 0) + int(np.prod(v.shape))
    counts["total"] = sum(counts.values())
    return counts

  def init_state(self, model_init: str = "") -> dict[str, Any]:
    """Fresh state on the mesh; backbone from `model_init` when given."""
    config = self.config
    key = jax.random.key(self.seed)

    def init_model(key):
      model = asrid_lib.ASRID(**dict(config.model), rngs=nnx.Rngs(key))
      return self.spec.split(model)

    params, rest = jax.jit(
      init_model,
      out_shardings=(
        self.state_sharding["params"],
        self.state_sharding["model_state"],
      ),
    )(key)
    if model_init:
      from asrid_jax.models import mobilenet_v3  # pylint: disable=g-import-not-at-top

      model = self.spec.merge(params, rest, train=True)
      mobilenet_v3.load_pretrained(model.backbone, model_init)
      params, rest = self.spec.split(model)
      params = jax.device_put(params, self.state_sharding["params"])
      rest = jax.device_put(rest, self.state_sharding["model_state"])

    def make(params, rest):
      state = {
        "params": params,
        "model_state": rest,
        "opt": self.opt.tx.init(params),
        "step": jnp.zeros((), jnp.int32),
      }
      if self.ema_decay:
        state["ema"] = jax.tree.map(jnp.copy, params)
        state["ema_stats"] = jax.tree.map(jnp.copy, rest)
      return state

    return jax.jit(make, out_shardings=self.state_sharding)(params, rest)

  def eval_model(self, state: Mapping[str, Any]) -> nnx.Module:
    """The model in eval mode, with EMA parameters when configured."""
    use_ema = self.ema_decay and self.config.get("eval", {}).get(
      "use_ema", True
    )
    if use_ema:
      return self.spec.merge(state["ema"], state["ema_stats"], train=False)
    return self.spec.merge(state["params"], state["model_state"], train=False)

  def feed_validation_loss(self, state: dict, loss: float) -> dict:
    if self.opt.plateau is None:
      return state
    state = dict(state)
    state["opt"] = self._feed(state["opt"], jnp.float32(loss))
    return state

  def fingerprint(self, batch: Mapping[str, jax.Array]) -> dict[str, list]:
    """Host copy of which examples a batch holds (data-order tests/logs)."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    out = {}
    for k in ("video_idx", "face_index", "frame_order"):
      x = batch[k]
      if not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
      out[k] = np.asarray(x).tolist()
    return out

  # ----------------------------------------------------------------- step
  def _loss(self, params, rest, images, labels, key, frame_order=None):
    model = self.spec.merge(params, rest, train=True)
    # A clip of a track shorter than T is padded (frame_order -1): the
    # temporal head masks those positions, as at evaluation.
    mask = None if frame_order is None else frame_order >= 0
    out = model(images, rngs=key, frame_mask=mask)
    total, terms = losses.asrid_loss(out, labels, **dict(self.config.loss))
    _, new_rest = self.spec.split(model)
    return total, (terms, new_rest)

  def _traced_once(self, state, batch, rng):
    self.traces += 1
    if self.traces > 1:
      raise RuntimeError(
        f"train step traced {self.traces} times: batch shapes/dtypes or "
        "state shardings changed between steps"
      )
    return self._step(state, batch, rng)

  def _step(self, state, batch, rng):
    a = self.accum
    rng = jax.random.fold_in(rng, state["step"])
    params = state["params"]
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    images, labels = batch["image"], batch["label"]
    orders = batch.get("frame_order")
    if a == 1:
      (_, (terms, rest)), grads = grad_fn(
        params,
        state["model_state"],
        images,
        labels,
        jax.random.fold_in(rng, 0),
        orders,
      )
    else:
      axes = sharding_lib.data_axes(self.mesh)

      def split(x):
        x = x.reshape((x.shape[0] // a, a) + x.shape[1:]).swapaxes(0, 1)
        spec = P(None, axes, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(
          x, NamedSharding(self.mesh, spec)
        )

      micro = (
        split(images),
        split(labels),
        None if orders is None else split(orders),
      )

      def body(carry, xs):
        g_acc, rest, t_acc = carry
        i, (im, lb, fo) = xs
        (_, (terms, rest)), g = grad_fn(
          params, rest, im, lb, jax.random.fold_in(rng, i), fo
        )
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        t_acc = jax.tree.map(jnp.add, t_acc, terms)
        return (g_acc, rest, t_acc), None

      terms0 = jax.eval_shape(
        lambda: grad_fn(
          params,
          state["model_state"],
          micro[0][0],
          micro[1][0],
          rng,
          None if orders is None else micro[2][0],
        )[0][1][0]
      )
      zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      carry = (zeros(params), state["model_state"], zeros(terms0))
      (grads, rest, terms), _ = jax.lax.scan(
        body, carry, (jnp.arange(a), micro)
      )
      grads = jax.tree.map(lambda g: g / a, grads)
      terms = jax.tree.map(lambda t: t / a, terms)
    # Frozen and unreached parameters must not count in the clip or |g|.
    grads = {
      k: g if k in self.trainable else jnp.zeros_like(g)
      for k, g in grads.items()
    }
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = self.opt.tx.update(grads, state["opt"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {
      "params": new_params,
      "model_state": rest,
      "opt": opt_state,
      "step": state["step"] + 1,
    }
    if self.ema_decay:
      new_state["ema"] = optim.ema_update(
        state["ema"], new_params, self.ema_decay, state["step"]
      )
      new_state["ema_stats"] = optim.ema_update(
        state["ema_stats"], rest, self.ema_decay, state["step"]
      )
    lrs = optim.learning_rates(self.opt, opt_state, state["step"])
    metrics = {"loss": terms, "opt": {"grad_norm": grad_norm, **lrs}}
    return new_state, metrics
