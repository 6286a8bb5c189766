"""config.optim -> an Optax chain, its learning-rate schedule and EMA.

The chain, outermost first:

  clip_by_global_norm(clip_norm)            # over ALL gradients together
  multi_transform({'backbone': adamw(lr * backbone_lr_mult),
                   'heads':    adamw(lr),
                   'frozen':   set_to_zero()})
  plateau scale (only for schedule 'plateau')

Parameters are a flat dict keyed by '/'-joined module paths (see
`asrid_jax.train`), so the backbone/heads split is a prefix test on the key and
parameters frozen by the config (frozen-BN scale/bias) get a zero update and no
weight decay.

Weight decay (AdamW's decoupled term) applies to kernels only: biases and
BatchNorm/LayerNorm scales are not decayed (decaying a norm scale shrinks the
layer's output for no regularising gain), and neither are parameters that the
loss never reaches (`decay` from `step.Trainer`: with a zero gradient, AdamW
would only pull them to zero). The mask is applied inside each AdamW, so the
optimizer state keeps the same leaves as without it and old checkpoints load.

Reduce-on-plateau is fed by the VALIDATION loss, not by the training loss: the
train step only multiplies updates by the current scale (state untouched), and
`feed_validation_loss(opt_state, loss)` runs optax's plateau update once per
evaluation. The plateau state lives inside the optimizer state, so it is
checkpointed and restored with it, and it is identical on every process because
the validation loss is a global reduction.

Gradient accumulation is NOT done here (no optax.MultiSteps): the train step
scans over micro-batches and calls this chain once per update, so one step is
one update, the schedule counts updates, and a checkpoint never holds a
half-accumulated gradient (see `asrid_jax.train`).
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import ReduceLROnPlateauState

BACKBONE = "backbone"
HEADS = "heads"
FROZEN = "frozen"
SCHEDULES = ("constant", "warmup_cosine", "sgdr", "onecycle", "plateau")


def make_schedule(
  lr: float, schedule: Mapping[str, Any], total_steps: int
) -> optax.Schedule:
  """A step -> learning-rate function from config.optim.schedule.

  Args:
    lr: the peak (or constant) learning rate.
    schedule: dict with 'name' and the schedule's options:
      constant / plateau: no options (plateau scales lr from validation).
      warmup_cosine: warmup_steps, end_factor (end lr = lr * end_factor).
      sgdr: cycle_steps (first period, torch T_0), cycle_mult (T_mult),
        end_factor (eta_min = lr * end_factor), warmup_steps (each cycle).
      onecycle: pct_start, div_factor, final_div_factor (as torch OneCycleLR).
      plateau (fed by `feed_validation_loss`): factor, patience (bad
        evaluations tolerated, as torch ReduceLROnPlateau), rtol, atol,
        cooldown, min_scale.
    total_steps: number of optimizer updates of the run.
  """
  name = schedule.get("name", "constant")
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  if name in ("constant", "plateau"):
    return optax.constant_schedule(lr)
  if name == "warmup_cosine":
    warmup = int(schedule.get("warmup_steps", 0))
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=lr,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=lr * float(schedule.get("end_factor", 0.0)),
    )
  if name == "sgdr":
    period = int(schedule.get("cycle_steps", max(1, total_steps // 4)))
    mult = float(schedule.get("cycle_mult", 1.0))
    warmup = int(schedule.get("warmup_steps", 0))
    end = lr * float(schedule.get("end_factor", 0.0))
    if period <= warmup:
      raise ValueError(f"sgdr cycle_steps {period} <= warmup_steps {warmup}")
    cycles, covered = [], 0
    while covered < total_steps:
      cycles.append(
        dict(
          init_value=end if warmup else lr,
          peak_value=lr,
          warmup_steps=warmup,
          decay_steps=period,
          end_value=end,
        )
      )
      covered += period
      period = max(warmup + 1, int(round(period * mult)))
    return optax.sgdr_schedule(cycles)
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(
      transition_steps=total_steps,
      peak_value=lr,
      pct_start=float(schedule.get("pct_start", 0.3)),
      div_factor=float(schedule.get("div_factor", 25.0)),
      final_div_factor=float(schedule.get("final_div_factor", 1e4)),
    )
  raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


NO_DECAY_SUFFIXES = ("bias", "scale")


def default_decay(key: str) -> bool:
  """Whether a parameter is weight-decayed by name: kernels yes, biases and
  norm scales no."""
  return key.rsplit("/", 1)[-1] not in NO_DECAY_SUFFIXES


def param_labels(
  params: Mapping[str, Any],
  *,
  backbone_prefix: str = "backbone/",
  frozen: frozenset[str] = frozenset(),
) -> dict[str, str]:
  """Label each flat parameter key 'backbone', 'heads' or 'frozen'."""
  labels = {}
  for key in params:
    if key in frozen:
      labels[key] = FROZEN
    elif key.startswith(backbone_prefix):
      labels[key] = BACKBONE
    else:
      labels[key] = HEADS
  return labels


def _plateau_scale_only() -> optax.GradientTransformation:
  """Multiplies updates by a ReduceLROnPlateauState's scale; never updates it.

  The state is advanced only by `feed_validation_loss`, once per evaluation.
  """

  def init_fn(params):
    del params
    return ReduceLROnPlateauState(
      scale=jnp.ones([], jnp.float32),
      best_value=jnp.asarray(jnp.inf, jnp.float32),
      plateau_count=jnp.zeros([], jnp.int32),
      cooldown_count=jnp.zeros([], jnp.int32),
      count=jnp.zeros([], jnp.int32),
      avg_value=jnp.zeros([], jnp.float32),
    )

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: state.scale * u, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


class Optimizer(NamedTuple):
  """The optax chain plus what the loop needs to log and feed it."""

  tx: optax.GradientTransformation
  schedule: optax.Schedule  # head learning rate before any plateau scale
  backbone_lr_mult: float
  plateau: optax.GradientTransformationExtraArgs | None


def make_optimizer(
  optim: Mapping[str, Any],
  total_steps: int,
  labels: Mapping[str, str],
  decay: Mapping[str, bool] | None = None,
) -> Optimizer:
  """Builds the chain described in the module docstring from config.optim.

  Args:
    optim: config.optim.
    total_steps: optimizer updates of the run.
    labels: `param_labels` of the flat parameter dict.
    decay: flat key -> whether AdamW decays it; default `default_decay`.
  """
  name = optim.get("name", "adamw")
  if name != "adamw":
    raise ValueError(f"config.optim.name {name!r}: only 'adamw' is supported")
  lr = float(optim["lr"])
  sched_cfg = dict(optim.get("schedule", {"name": "constant"}))
  schedule = make_schedule(lr, sched_cfg, total_steps)
  mult = float(optim.get("backbone_lr_mult", 1.0))

  def decay_mask(tree: Mapping[str, Any]) -> dict[str, Any]:
    # multi_transform hands each group the full dict with the other groups'
    # leaves replaced by MaskedNode; those keep their placeholder.
    return {
      k: v
      if isinstance(v, optax.MaskedNode)
      else (decay[k] if decay is not None else default_decay(k))
      for k, v in tree.items()
    }

  def adamw(fn: Callable[[Any], Any]) -> optax.GradientTransformation:
    return optax.adamw(
      fn,
      b1=float(optim.get("b1", 0.9)),
      b2=float(optim.get("b2", 0.999)),
      eps=float(optim.get("eps", 1e-8)),
      weight_decay=float(optim.get("weight_decay", 0.01)),
      mask=decay_mask,
    )

  groups = {
    HEADS: adamw(schedule),
    BACKBONE: adamw(lambda step: schedule(step) * mult),
    FROZEN: optax.set_to_zero(),
  }
  used = set(labels.values())
  chain = []
  clip = optim.get("clip_norm")
  if clip:
    chain.append(optax.clip_by_global_norm(float(clip)))
  chain.append(
    optax.multi_transform(
      {k: v for k, v in groups.items() if k in used}, dict(labels)
    )
  )
  plateau = None
  if sched_cfg.get("name") == "plateau":
    plateau = optax.contrib.reduce_on_plateau(
      factor=float(sched_cfg.get("factor", 0.5)),
      # torch semantics: `patience` bad evaluations are tolerated and the
      # next one cuts the lr; optax cuts when the count reaches patience.
      patience=int(sched_cfg.get("patience", 2)) + 1,
      rtol=float(sched_cfg.get("rtol", 1e-4)),
      atol=float(sched_cfg.get("atol", 0.0)),
      cooldown=int(sched_cfg.get("cooldown", 0)),
      min_scale=float(sched_cfg.get("min_scale", 0.0)),
    )
    chain.append(_plateau_scale_only())
  return Optimizer(optax.chain(*chain), schedule, mult, plateau)


def _is_plateau(x: Any) -> bool:
  return isinstance(x, ReduceLROnPlateauState)


def plateau_scale(opt_state: Any) -> jax.Array:
  """The current plateau scale in opt_state (1.0 when there is none)."""
  found = [
    s.scale
    for s in jax.tree.leaves(opt_state, is_leaf=_is_plateau)
    if _is_plateau(s)
  ]
  return found[0] if found else jnp.ones([], jnp.float32)


def feed_validation_loss(
  optimizer: Optimizer, opt_state: Any, loss: float | jax.Array
) -> Any:
  """Advances the plateau state with one validation loss; no-op without it."""
  if optimizer.plateau is None:
    return opt_state
  value = jnp.asarray(loss, jnp.float32)

  def feed(s):
    if not _is_plateau(s):
      return s
    _, new = optimizer.plateau.update(jnp.zeros([]), s, value=value)
    return new

  return jax.tree.map(feed, opt_state, is_leaf=_is_plateau)


def learning_rates(
  optimizer: Optimizer, opt_state: Any, step: jax.Array | int
) -> dict[str, jax.Array]:
  """Effective head and backbone learning rates for an update at `step`."""
  head = optimizer.schedule(step) * plateau_scale(opt_state)
  return {"lr": head, "lr_backbone": head * optimizer.backbone_lr_mult}


def ema_update(
  ema: Any, params: Any, decay: float, step: jax.Array | int
) -> Any:
  """EMA of parameters with a warm-up: decay_t = min(decay, (1+t)/(10+t)).

  The warm-up keeps early averages from being dominated by the random
  initialisation (as TensorFlow's ExponentialMovingAverage num_updates).
  """
  step = jnp.asarray(step, jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))

  def avg(e, p):
    if not jnp.issubdtype(jnp.asarray(e).dtype, jnp.floating):
      return p  # counters and the like are not averaged
    return (d * e + (1.0 - d) * p).astype(jnp.asarray(e).dtype)

  return jax.tree.map(avg, ema, params)
