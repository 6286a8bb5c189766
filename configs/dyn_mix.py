r"""ASRID dyn_mix: paper Table 2 row "Dyn + Mix (the full ASRID)".

Attention, Mix, static and dynamic heads. Loss w * static + (1 - w) * dynamic, w = 0.8 (paper also 0.95: --config.loss.static_weight=0.95).

Full run (DFDC-scale shards, one or more GPU/TPU hosts):

  python -m asrid_jax.train --config=configs/dyn_mix.py --workdir=runs/dyn_mix \
      --config.data.dir=/data/dfdc_shards \
      [--config.model_init=weights/mobilenet_v3_small]

CPU run on the built-in sample (after `make demo`; 2 cores, about a minute):

  python -m asrid_jax.train --config=configs/dyn_mix.py:runlocal \
      --workdir=/tmp/asrid_dyn_mix

Judging the result and run times: see configs/common.py.

Measured (runlocal on `make demo` data, 2-core CPU, 73 s wall): train loss
0.77 -> 0.13 over 300 steps; validation video LogLoss 0.171 (accuracy 1.0,
6 videos) vs the constant-prior LogLoss 0.637.
"""

from configs import common


def get_config(arg: str | None = None):
  """Config for dyn_mix; arg: 'runlocal', 'res=N', 'steps=N' (comma-separated)."""
  config = common.base_config("dyn_mix", arg)
  return config
