"""Tests for configs/: every variant builds, arg parsing, seed derivation."""

import hashlib
import importlib
import json

import pytest

from configs import common


@pytest.mark.parametrize("variant", common.VARIANTS)
def test_variant_configs_build(variant):
  mod = importlib.import_module(f"configs.{variant}")
  full = mod.get_config()
  local = mod.get_config("runlocal")
  assert full.model.variant == local.model.variant == variant
  assert full.data.dir == common.DEFAULT_DATA_DIR
  assert local.data.image_size <= 96 and local.total_steps <= 500
  assert local.data.worker_count == 0
  assert local.batch_size % 8 == 0  # splits over the 8 test devices
  want_t = 1 if variant == "sta_pic" else 8
  assert full.data.clip_len == want_t
  assert mod.__doc__ and f"configs/{variant}.py:runlocal" in mod.__doc__


def test_parse_arg():
  args = common.parse_arg("runlocal,res=96", runlocal=False, res=0)
  assert args.runlocal is True and args.res == 96
  with pytest.raises(ValueError, match="unknown config arg 'foo'"):
    common.parse_arg("foo", runlocal=False)
  assert (
    common.base_config("dyn", "runlocal,res=80,steps=7").data.image_size == 80
  )
  assert common.base_config("dyn", "steps=7").total_steps == 7


def test_seed_is_the_documented_hash():
  c = common.base_config("dyn_mix", "runlocal")
  core = common.core_config(c)
  assert "dir" not in core["data"] and "workdir" not in core
  text = json.dumps(core, sort_keys=True, separators=(",", ":"))
  want = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
  assert common.derive_seed(c) == want & 0x7FFFFFFF


def test_seed_changes_with_core_config_only():
  base = common.derive_seed(common.base_config("dyn_mix", "runlocal"))
  assert base == common.derive_seed(common.base_config("dyn_mix", "runlocal"))

  def seed_after(fn):
    c = common.base_config("dyn_mix", "runlocal")
    fn(c)
    return common.derive_seed(c)

  # Core changes: learning rate, architecture, batch, sampling.
  assert seed_after(lambda c: c.optim.update(lr=1e-4)) != base
  assert seed_after(lambda c: c.model.update(attention_dim=32)) != base
  assert seed_after(lambda c: setattr(c, "batch_size", 16)) != base
  assert seed_after(lambda c: c.data.update(clip_len=8)) != base
  assert common.derive_seed(common.base_config("dyn", "runlocal")) != base
  # Not core: where data lives, loader speed, logging, eval, checkpoints.
  assert seed_after(lambda c: c.data.update(dir="/elsewhere")) == base
  assert seed_after(lambda c: c.data.update(worker_count=8)) == base
  assert seed_after(lambda c: setattr(c, "log_every", 1)) == base
  assert seed_after(lambda c: setattr(c, "eval_every", 3)) == base
  assert seed_after(lambda c: setattr(c, "keep_checkpoints", 9)) == base
  assert seed_after(lambda c: setattr(c, "mesh", [("data", 2)])) == base
  # An explicit seed wins.
  assert seed_after(lambda c: setattr(c, "seed", 123)) == 123
