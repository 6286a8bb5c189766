r"""Frame-level ASRID on imported face crops (DFDC deepfake-faces and alike).

One tight face crop per example (picture sampling, T = 1), static variants
only: `baseline` (pooled backbone feature -> FC), `sta_new` (spatial attention
+ StaNew head, the default) and `sta_new_mix`. Backbone from scratch (no
ImageNet weights offline; `--config.model_init=DIR` takes converted ones).

Import the crops, then train (CPU, 2 cores; relaunching resumes):

  python -m preprocessing.import_faces \
      --input ../shared/real_data/dfdc_faces_224/metadata.csv \
      --output data/dfdc_faces --crop_margin estimate
  python -m asrid_jax.train --config=configs/dfdc_faces.py:variant=sta_new \
      --workdir=runs/dfdc_sta_new --config.data.dir=data/dfdc_faces

Args (comma-separated, e.g. `:variant=baseline,res=160,epochs=8`):
  variant   baseline | sta_new | sta_new_mix
  sbi       train on the REAL crops only, with self-blended pseudo-fakes
            (SBI, probability 0.5) as the FAKEs: it never sees a real fake
  res       training resolution (default 128; the crops are stored at 224)
  epochs    passes over the 8:1:1 train split of the shared DFDC crops
            (25.5k images at batch 64 = 400 steps an epoch; steps= wins)
  steps     total optimizer steps
  runlocal  tiny network and 64 px for tests and smoke runs

Choices (see models/dfdc_faces/README.md for the measured result): 128 px,
batch 64, AdamW with a one-cycle schedule (peak 2e-3, weight decay 0.01),
BatchNorm trained (a real dataset: running statistics match the batch ones),
light augmentation that suits tight crops (flip, colour, JPEG, down-up
scaling, small erasing and landmark part dropout; no geometric change that
would move the face out of a tight crop). Validation each epoch on the val
split; the best checkpoint by validation LogLoss is kept.
"""

from configs import common

STATIC_VARIANTS = ("baseline", "sta_new", "sta_new_mix")
# Train split of the shared DFDC crops (8:1:1 grouped split): 25.5k images.
STEPS_PER_EPOCH = 400


def get_config(arg: str | None = None):
  """Config; arg: variant=, sbi, res=, epochs=, steps=, runlocal."""
  args = common.parse_arg(
    arg,
    variant="sta_new",
    sbi=False,
    res=128,
    epochs=6,
    steps=0,
    runlocal=False,
  )
  if args.variant not in STATIC_VARIANTS:
    raise ValueError(
      f"dfdc_faces: variant must be one of {STATIC_VARIANTS} (frame-level "
      f"training has no temporal head), got {args.variant!r}"
    )
  c = common.base_config(args.variant, "runlocal" if args.runlocal else None)
  c.model.update(dropout=0.2, frozen_bn=args.runlocal)
  # base_config has augment=True (defaults); a bool field cannot take a dict.
  del c.data["augment"]
  c.data.update(
    dir="data/dfdc_faces",
    image_size=args.res,
    sampling="picture",
    clip_len=1,
    balance="natural",
    worker_count=0,
    augment=dict(
      flip_prob=0.5,
      part_drop_prob=0.1,
      erase_prob=0.1,
      erase_area=(0.02, 0.1),
      color_prob=0.5,
      downscale_prob=0.15,
      downscale=(0.5, 0.9),
      noise_prob=0.05,
      jpeg_prob=0.3,
      jpeg_quality=(60, 95),
    ),
    sbi_prob=0.5 if args.sbi else 0.0,
    real_only=bool(args.sbi),
  )
  c.batch_size = 64
  steps = args.steps or args.epochs * STEPS_PER_EPOCH
  c.optim.update(
    lr=2e-3,
    weight_decay=0.01,
    schedule=dict(
      name="onecycle", pct_start=0.2, div_factor=20.0, final_div_factor=200.0
    ),
  )
  c.total_steps = steps
  c.log_every = 50
  c.eval_every = STEPS_PER_EPOCH
  c.checkpoint_every = STEPS_PER_EPOCH
  c.keep_checkpoints = 2
  c.eval.update(batch_size=128)
  if args.runlocal:
    c.data.update(image_size=min(args.res, 64))
    c.batch_size = 16
    c.total_steps = args.steps or 6
    c.log_every = 2
    c.eval_every = c.total_steps
    c.checkpoint_every = c.total_steps
    c.eval.update(batch_size=16)
  return c
