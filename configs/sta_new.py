r"""ASRID sta_new: paper Table 2 row "StaNew".

Same network as sta_pic, trained on clips of T consecutive frames of one face track (video sampling); every frame gets the static loss.

Full run (DFDC-scale shards, one or more GPU/TPU hosts):

  python -m asrid_jax.train --config=configs/sta_new.py --workdir=runs/sta_new \
      --config.data.dir=/data/dfdc_shards \
      [--config.model_init=weights/mobilenet_v3_small]

CPU run on the built-in sample (after `make demo`; 2 cores, about a minute):

  python -m asrid_jax.train --config=configs/sta_new.py:runlocal \
      --workdir=/tmp/asrid_sta_new

Judging the result and run times: see configs/common.py.

Measured (runlocal, 300 steps on `make demo` data, 2-core CPU, 52 s):
validation video LogLoss 0.248 (accuracy 1.0) vs the constant prior's 0.637.
"""

from configs import common


def get_config(arg: str | None = None):
  """Config for sta_new; arg: 'runlocal', 'res=N', 'steps=N' (comma-separated)."""
  config = common.base_config("sta_new", arg)
  return config
