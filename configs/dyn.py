r"""ASRID dyn: paper Table 2 row "Dyn".

sta_new plus the dynamic head (Transformer over the T per-frame features). Loss w * static + (1 - w) * dynamic, w = 0.8 (use --config.loss.static_weight=0.95 for the paper's other setting).

Full run (DFDC-scale shards, one or more GPU/TPU hosts):

  python -m asrid_jax.train --config=configs/dyn.py --workdir=runs/dyn \
      --config.data.dir=/data/dfdc_shards \
      [--config.model_init=weights/mobilenet_v3_small]

CPU run on the built-in sample (after `make demo`; 2 cores, about a minute):

  python -m asrid_jax.train --config=configs/dyn.py:runlocal \
      --workdir=/tmp/asrid_dyn

Judging the result and run times: see configs/common.py.

Measured (runlocal, 300 steps on `make demo` data, 2-core CPU, 63 s):
validation video LogLoss 0.317 (accuracy 0.83) vs the constant prior's 0.637.
"""

from configs import common


def get_config(arg: str | None = None):
  """Config for dyn; arg: 'runlocal', 'res=N', 'steps=N' (comma-separated)."""
  config = common.base_config("dyn", arg)
  return config
