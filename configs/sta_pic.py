r"""ASRID sta_pic: paper Table 2 row "StaPic".

Spatial attention (M maps) + StaNew static head, trained on batches sampled BY PICTURE (each example one face crop from anywhere in the split, T = 1). Static loss only.

Full run (DFDC-scale shards, one or more GPU/TPU hosts):

  python -m asrid_jax.train --config=configs/sta_pic.py --workdir=runs/sta_pic \
      --config.data.dir=/data/dfdc_shards \
      [--config.model_init=weights/mobilenet_v3_small]

CPU run on the built-in sample (after `make demo`; 2 cores, about a minute):

  python -m asrid_jax.train --config=configs/sta_pic.py:runlocal \
      --workdir=/tmp/asrid_sta_pic

Judging the result and run times: see configs/common.py.

Measured (runlocal, 300 steps on `make demo` data, 2-core CPU, 57 s):
validation video LogLoss 0.231 (accuracy 1.0) vs the constant prior's 0.637.
"""

from configs import common


def get_config(arg: str | None = None):
  """Config for sta_pic; arg: 'runlocal', 'res=N', 'steps=N' (comma-separated)."""
  config = common.base_config("sta_pic", arg)
  return config
