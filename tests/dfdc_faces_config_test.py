"""configs/dfdc_faces.py: frame-level training on imported face crops.

Imports tiny synthetic face images (a drawn face on noise, so that the SBI
blend has a face to work on) with import_faces, then trains the config's
`runlocal` size a few steps, evaluates, and checks what the workdir keeps.
"""

import json

import cv2
import numpy as np
import pytest

from asrid_jax import evaluate as eval_lib
from asrid_jax import model_info, train
from asrid_jax.data import records
from configs import dfdc_faces
from preprocessing import import_faces

pytestmark = pytest.mark.usefixtures("fast_compiles")


def _face(rng, size=48) -> np.ndarray:
  img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
  c = size // 2
  cv2.ellipse(
    img,
    (c, c),
    (size // 3, size // 2 - 4),
    0,
    0,
    360,
    tuple(int(v) for v in rng.integers(120, 230, 3)),
    -1,
  )
  for x in (c - size // 7, c + size // 7):
    cv2.circle(img, (x, c - size // 8), 2, (20, 20, 20), -1)
  cv2.line(
    img,
    (c - size // 8, c + size // 5),
    (c + size // 8, c + size // 5),
    (60, 20, 20),
    2,
  )
  return img


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("dfdc_faces")
  rng = np.random.default_rng(0)
  rows = ["path,label,original"]
  for i in range(24):
    cv2.imwrite(str(root / f"real_{i}.png"), _face(rng))
    rows.append(f"real_{i}.png,REAL,")
    for j in range(2):
      cv2.imwrite(str(root / f"fake_{i}_{j}.png"), _face(rng))
      rows.append(f"fake_{i}_{j}.png,FAKE,real_{i}.png")
  (root / "faces.csv").write_text("\n".join(rows) + "\n")
  out = root / "shards"
  args = import_faces.build_parser().parse_args(
    [
      "--input",
      str(root / "faces.csv"),
      "--output",
      str(out),
      "--image_size",
      "64",
      "--no-detect",
      "--crop_margin",
      "0.1",
    ]
  )
  summary = import_faces.run(args)
  assert summary.images == 72
  return out


def test_variants_and_args():
  for variant in dfdc_faces.STATIC_VARIANTS:
    c = dfdc_faces.get_config(f"variant={variant}")
    assert c.model.variant == variant
    assert c.data.sampling == "picture" and c.data.clip_len == 1
    assert c.total_steps == 6 * dfdc_faces.STEPS_PER_EPOCH
    assert not c.model.frozen_bn
  sbi = dfdc_faces.get_config("sbi")
  assert sbi.data.real_only and sbi.data.sbi_prob == 0.5
  assert dfdc_faces.get_config("epochs=2,res=96").total_steps == 800
  assert dfdc_faces.get_config("epochs=2,res=96").data.image_size == 96
  with pytest.raises(ValueError, match="temporal head"):
    dfdc_faces.get_config("variant=dyn_mix")


@pytest.mark.parametrize("arg", ["variant=sta_new", "variant=baseline,sbi"])
def test_runlocal_trains_evaluates_and_keeps_its_data_info(
  shards, tmp_path, arg
):
  config = dfdc_faces.get_config(f"runlocal,steps=3,{arg}")
  with config.unlocked():
    config.data.dir = str(shards)
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, workdir)
  assert result["step"] == 3 and result["stopped"] == "done"
  assert (workdir / "checkpoints" / "3").is_dir()
  assert np.isfinite(result["val"]["val/log_loss"])
  # The workdir keeps the training data's info: priors and crop convention.
  kept = json.loads((workdir / records.DATASET_INFO).read_text())
  assert kept == records.read_dataset_info(shards)
  priors = model_info.priors_from_info(kept)
  assert priors["frame"] == pytest.approx(48 / 72)
  assert kept["settings"]["margin"] == 0.1
  # evaluate takes the prior from the model, not from the shards it scores.
  args = eval_lib.build_parser().parse_args(
    [f"--workdir={workdir}", "--split=test", f"--out={tmp_path / 'eval'}"]
  )
  evaluated, _ = eval_lib.run(args)
  frame = evaluated.metrics["frame"]
  assert frame["prior"]["prior"] == pytest.approx(48 / 72)
  assert frame["n"] == kept["splits"]["test"]["num_records"]
