"""The training state as a plain pytree of flat, str-keyed dicts.

NNX modules are split once at the jit boundary (as maxtext does): the model's
`nnx.Param`s and its other variables (batch-norm statistics, the attention's
feature centres, frozen-BN scale/bias) become two flat dicts keyed by
'/'-joined module paths, e.g. 'backbone/features/4/block/1/0/kernel'. Flat
str keys are what Orbax needs (no int keys), what the optimizer's
backbone/heads partition and the sharding rules match on, and what a person
reads in a checkpoint.

    state = {'params': {...}, 'model_state': {...}, 'opt': optax state,
             'step': int32 scalar, ['ema': {...}]}

`ModelSpec` holds the graph definitions (train and eval mode) and the tree
layout, so a jitted function can rebuild the module from the dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from asrid_jax.models import asrid as asrid_lib


def _key(path: tuple[Any, ...]) -> str:
  parts = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
    # GetAttrKey('value') of a Variable node adds nothing to the name.
  return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class _Layout:
  keys: tuple[str, ...]
  treedef: Any

  @classmethod
  def of(cls, state: nnx.State) -> _Layout:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    keys = tuple(_key(p) for p, _ in leaves)
    if len(set(keys)) != len(keys):
      raise ValueError("model state has colliding flat keys")
    return cls(keys, treedef)

  def flat(self, state: nnx.State) -> dict[str, Any]:
    leaves = jax.tree.leaves(state)
    return dict(zip(self.keys, leaves, strict=True))

  def unflat(self, flat: Mapping[str, Any]) -> nnx.State:
    missing = set(self.keys) - set(flat)
    if missing:
      raise KeyError(f"missing model variables: {sorted(missing)[:5]}")
    return jax.tree.unflatten(self.treedef, [flat[k] for k in self.keys])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to go between an NNX model and the flat (params, model_state)."""

  train_def: Any
  eval_def: Any
  params: _Layout
  rest: _Layout

  @classmethod
  def of(cls, model: nnx.Module) -> ModelSpec:
    model.eval()
    eval_def, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    train_def, params, rest = nnx.split(model, nnx.Param, ...)
    return cls(train_def, eval_def, _Layout.of(params), _Layout.of(rest))

  def split(self, model: nnx.Module) -> tuple[dict, dict]:
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return self.params.flat(params), self.rest.flat(rest)

  def merge(
    self, params: Mapping[str, Any], rest: Mapping[str, Any], train: bool
  ) -> nnx.Module:
    graphdef = self.train_def if train else self.eval_def
    return nnx.merge(
      graphdef, self.params.unflat(params), self.rest.unflat(rest)
    )


def build_model(
  model_config: Mapping[str, Any], seed: int, model_init: str = ""
) -> nnx.Module:
  """ASRID(**config.model), with the backbone from `model_init` when set."""
  model = asrid_lib.ASRID(**dict(model_config), rngs=nnx.Rngs(seed))
  if model_init:
    from asrid_jax.models import mobilenet_v3  # pylint: disable=g-import-not-at-top

    mobilenet_v3.load_pretrained(model.backbone, model_init)
  return model


def abstract_model(model_config: Mapping[str, Any]) -> nnx.Module:
  """The model's structure with ShapeDtypeStruct leaves (no compute)."""
  return nnx.eval_shape(
    lambda: asrid_lib.ASRID(**dict(model_config), rngs=nnx.Rngs(0))
  )
