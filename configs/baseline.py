r"""ASRID baseline: paper Table 2 row "Baseline".

MobileNetV3-Small, pooled feature -> one FC per frame; no attention, no temporal head. Batches of clips (video sampling); the loss is the frame BCE only.

Full run (DFDC-scale shards, one or more GPU/TPU hosts):

  python -m asrid_jax.train --config=configs/baseline.py --workdir=runs/baseline \
      --config.data.dir=/data/dfdc_shards \
      [--config.model_init=weights/mobilenet_v3_small]

CPU run on the built-in sample (after `make demo`; 2 cores, about a minute):

  python -m asrid_jax.train --config=configs/baseline.py:runlocal \
      --workdir=/tmp/asrid_baseline

Judging the result and run times: see configs/common.py.

Measured (runlocal, 300 steps on `make demo` data, 2-core CPU, 62 s):
validation video LogLoss 0.642 (accuracy 0.67) vs the constant prior's 0.637;
does NOT beat the prior: the pooled-feature baseline sees the global frame only.
"""

from configs import common


def get_config(arg: str | None = None):
  """Config for baseline; arg: 'runlocal', 'res=N', 'steps=N' (comma-separated)."""
  config = common.base_config("baseline", arg)
  return config
