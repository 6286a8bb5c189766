"""Test helpers of the evaluation tests: cheap random models, tiny videos.

Not a test module (pytest collects *_test.py); the evaluate and predict tests
import it from the tests folder, which pytest puts on sys.path.
"""

import functools
import pathlib

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from asrid_jax import checkpoint as checkpoint_lib
from asrid_jax import sharding as sharding_lib
from asrid_jax import train_state
from asrid_jax.models import asrid as asrid_lib


def random_model(model_config, seed=0):
  """An ASRID with random weights, built without running its initialisers.

  Initialising MobileNetV3 eagerly costs tens of seconds on the 2-core CI
  machine; filling the abstract model's leaves from numpy is instant and is
  just as random. BatchNorm variances are 1 so activations stay finite.
  """
  abstract = nnx.eval_shape(
    lambda: asrid_lib.ASRID(**model_config, rngs=nnx.Rngs(0))
  )
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1])
    if "var" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "mean" in name or "center" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    scale = 1.0 / np.sqrt(max(fan_in, 1))
    return (rng.standard_normal(leaf.shape) * scale).astype(leaf.dtype)

  filled = nnx.from_flat_state(
    [
      (p, v.replace(jnp.asarray(fill(p, v.get_value()))))
      for p, v in nnx.to_flat_state(state)
    ]
  )
  return nnx.merge(graphdef, filled)


def write_face_video(
  path: pathlib.Path,
  *,
  frames: int = 12,
  size: tuple[int, int] = (160, 128),
  face_px: int = 84,
  with_face: bool = True,
) -> pathlib.Path:
  """A small mp4: the astronaut's head (skimage) drifting over a grey wall."""
  from skimage import data

  w, h = size
  face = cv2.resize(
    data.astronaut()[20:230, 130:340], (face_px, face_px), cv2.INTER_AREA
  )
  writer = cv2.VideoWriter(
    str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h)
  )
  rng = np.random.default_rng(0)
  for i in range(frames):
    frame = np.full((h, w, 3), 90, np.uint8)
    if with_face:
      x, y = 20 + 2 * i, 20 + i % 3
      frame[y : y + face_px, x : x + face_px] = face
    else:
      frame += rng.integers(0, 20, frame.shape, dtype=np.uint8)
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  return path


def save_checkpoint(workdir, config, model, step):
  """A checkpoint as train.py writes it, laid out on all 8 devices."""
  mesh = sharding_lib.make_mesh([("data", -1)])
  assert mesh.devices.size == 8
  spec = train_state.ModelSpec.of(model)
  params, rest = spec.split(model)
  put = functools.partial(jax.device_put, device=sharding_lib.replicated(mesh))
  state = {
    "params": put(params),
    "model_state": put(rest),
    "opt": {"count": put(jnp.zeros((), jnp.int32))},
    "step": put(jnp.asarray(step, jnp.int32)),
  }
  # Orbax saves a replicated array "replica-parallel" on CPU: one lax.slice
  # per array and device, each compiled for its shape (~40 s for this model
  # on the 2-core CI machine). Plain saving writes the same files.
  previous = ocp.type_handlers.get_type_handler(jax.Array)
  ocp.type_handlers.register_type_handler(
    jax.Array,
    ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
    override=True,
  )
  try:
    ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
    ckpt.save(step, state, config=config, metrics={"val_logloss": 0.6})
    ckpt.close()
  finally:
    ocp.type_handlers.register_type_handler(jax.Array, previous, override=True)
