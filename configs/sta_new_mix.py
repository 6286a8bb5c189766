r"""ASRID sta_new_mix: paper Table 2 row "StaNew + Mix".

sta_new with the Mix block: the pooled backbone feature joins the attention part tokens, with a residual skip.

Full run (DFDC-scale shards, one or more GPU/TPU hosts):

  python -m asrid_jax.train --config=configs/sta_new_mix.py --workdir=runs/sta_new_mix \
      --config.data.dir=/data/dfdc_shards \
      [--config.model_init=weights/mobilenet_v3_small]

CPU run on the built-in sample (after `make demo`; 2 cores, about a minute):

  python -m asrid_jax.train --config=configs/sta_new_mix.py:runlocal \
      --workdir=/tmp/asrid_sta_new_mix

Judging the result and run times: see configs/common.py.

Measured (runlocal, 300 steps on `make demo` data, 2-core CPU, 74 s):
validation video LogLoss 0.352 (accuracy 0.83) vs the constant prior's 0.637.
"""

from configs import common


def get_config(arg: str | None = None):
  """Config for sta_new_mix; arg: 'runlocal', 'res=N', 'steps=N' (comma-separated)."""
  config = common.base_config("sta_new_mix", arg)
  return config
