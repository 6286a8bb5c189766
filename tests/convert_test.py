"""Converter tests: torchvision -> Flax parity, refusals, loading options.

A randomly initialised torchvision mobilenet_v3_small (no download) with
perturbed batch-norm statistics and affine parameters is saved to a .pth and
converted through the CLI code path; the Flax backbone must then reproduce
PyTorch's outputs.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

from asrid_jax import convert
from asrid_jax.models import mobilenet_v3 as mv

TORCH_TAPS = {"stride8": 3, "stride16": 8, "last": 12}


def _torch_model() -> torch.nn.Module:
  torch.manual_seed(0)
  model = torchvision.models.mobilenet_v3_small(weights=None)
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        # Non-trivial statistics and affine terms, so BN is really tested.
        n = module.num_features
        module.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
        module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
        module.weight.copy_(0.5 + torch.rand(n, generator=gen))
        module.bias.copy_(0.2 * torch.randn(n, generator=gen))
      elif isinstance(module, torch.nn.Linear):
        module.weight.normal_(0.0, 0.05, generator=gen)
        module.bias.normal_(0.0, 0.1, generator=gen)
  return model


@pytest.fixture(scope="module")
def torch_model() -> torch.nn.Module:
  return _torch_model()


@pytest.fixture(scope="module")
def pth(torch_model, tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "mnv3s.pth"
  torch.save(torch_model.state_dict(), path)
  return path


@pytest.fixture(scope="module")
def converted(pth, tmp_path_factory):
  out = tmp_path_factory.mktemp("converted") / "mnv3s"
  assert (
    convert.main(["--torchvision_weights", str(pth), "--out", str(out)]) == 0
  )
  return out


@functools.partial(nnx.jit, static_argnames=("num_classes",))
def _build(key, *, num_classes):
  return mv.MobileNetV3Small(num_classes=num_classes, rngs=nnx.Rngs(key))


@pytest.fixture(scope="module")
def flax_model(converted) -> mv.MobileNetV3Small:
  model = _build(jax.random.key(42), num_classes=1000)
  return mv.load_pretrained(model, converted)


@nnx.jit
def _forward(model, x):
  return model(x)


def _torch_outputs(model: torch.nn.Module, x: np.ndarray) -> dict:
  """Logits and the tapped feature maps (NHWC) of the torch model."""
  h = torch.from_numpy(x).permute(0, 3, 1, 2)
  out = {}
  with torch.no_grad():
    for index, layer in enumerate(model.features):
      h = layer(h)
      for name, tap in TORCH_TAPS.items():
        if tap == index:
          out[name] = h.permute(0, 2, 3, 1).numpy()
    out["pooled"] = h.mean(dim=(2, 3)).numpy()
    pooled = torch.from_numpy(out["pooled"])
    out["logits"] = model.classifier(pooled).numpy()
  return out


def _rel_error(a, b) -> float:
  """max|a - b| / max|b|: scale-free, and no blow-up where b is near 0."""
  b = np.asarray(b, np.float64)
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("impl", ["grouped", "shifted"])
@pytest.mark.parametrize("size,batch", [(224, 2), (380, 1)])
def test_parity_with_torchvision_eval(
  torch_model, flax_model, impl, size, batch
):
  torch_model.eval()
  flax_model.eval()
  flax_model.set_attributes(depthwise_impl=impl)
  x = np.random.default_rng(size).normal(size=(batch, size, size, 3))
  x = x.astype(np.float32)
  want = _torch_outputs(torch_model, x)
  got = _forward(flax_model, jnp.asarray(x))
  for name in ("stride8", "stride16", "last", "pooled", "logits"):
    assert got[name].shape == want[name].shape, name
    err = _rel_error(got[name], want[name])
    assert err < 1e-4, f"{name} ({impl}, {size}): relative error {err:.2e}"


def test_train_mode_matches_torch_and_updates_stats_like_torch(pth, converted):
  # Fresh copies: train mode mutates the running statistics of both.
  torch_model = _torch_model()
  torch_model.load_state_dict(torch.load(pth, weights_only=True))
  torch_model.train()
  flax_model = mv.load_pretrained(
    _build(jax.random.key(0), num_classes=1000), converted
  )
  flax_model.train()
  flax_model.set_attributes(depthwise_impl="shifted")
  x = np.random.default_rng(7).normal(size=(4, 64, 64, 3)).astype(np.float32)
  want = _torch_outputs(torch_model, x)  # train-mode BN, batch statistics
  got = _forward(flax_model, jnp.asarray(x))
  for name in ("stride8", "stride16", "last"):
    assert _rel_error(got[name], want[name]) < 1e-4, name
  # Running statistics after one step: torch uses the unbiased variance.
  sd = torch_model.state_dict()
  for path, var in nnx.to_flat_state(nnx.state(flax_model, nnx.BatchStat)):
    key = convert.torch_key("/".join(map(str, path)))
    np.testing.assert_allclose(
      np.asarray(var[...]), sd[key].numpy(), rtol=1e-4, atol=1e-6, err_msg=key
    )


def test_conversion_info_and_cli_output(converted, pth):
  info = json.loads((converted / convert.INFO_FILE).read_text())
  assert info["num_classes"] == 1000 and info["classifier_kept"]
  assert info["tensors"] == 210
  assert info["source_sha256"] == convert._sha256(pth)
  assert not list(converted.parent.glob(".*tmp*")), "temporary dir left"


def _numpy_state_dict(torch_model) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in torch_model.state_dict().items()}


def test_refuses_missing_key(torch_model):
  sd = _numpy_state_dict(torch_model)
  del sd["features.4.block.2.fc1.weight"]
  with pytest.raises(convert.ConversionError) as info:
    convert.convert_state_dict(sd, source="x.pth")
  message = str(info.value)
  assert "x.pth" in message and "missing keys (1)" in message
  assert "features.4.block.2.fc1.weight" in message


def test_refuses_wrong_shape_and_unexpected_key(torch_model):
  sd = _numpy_state_dict(torch_model)
  sd["features.1.block.0.0.weight"] = np.zeros((16, 1, 5, 5), np.float32)
  sd["features.13.0.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(convert.ConversionError) as info:
    convert.convert_state_dict(sd, source="x.pth")
  message = str(info.value)
  assert (
    "features.1.block.0.0.weight: shape (16, 1, 5, 5), expected (16, 1, 3, 3)"
    in message
  )
  assert "unexpected keys (1): features.13.0.weight" in message


def test_cli_reports_bad_file_and_writes_nothing(torch_model, tmp_path, capsys):
  sd = dict(torch_model.state_dict())
  del sd["classifier.0.bias"]
  bad = tmp_path / "bad.pth"
  torch.save(sd, bad)
  out = tmp_path / "out"
  args = ["--torchvision_weights", str(bad), "--out", str(out)]
  assert convert.main(args) == 1
  assert "classifier.0.bias" in capsys.readouterr().err
  assert not out.exists() and not list(tmp_path.glob(".out*"))
  # A non-state_dict file is refused too.
  torch.save([1, 2], bad)
  assert convert.main(args) == 1
  assert "expected a state_dict" in capsys.readouterr().err


def test_wrapped_and_prefixed_state_dict_converts_identically(torch_model):
  sd = _numpy_state_dict(torch_model)
  wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
  plain, n_plain = convert.convert_state_dict(sd)
  other, n_other = convert.convert_state_dict(wrapped)
  assert n_plain == n_other == 1000 and plain.keys() == other.keys()
  assert all(np.array_equal(plain[k], other[k]) for k in plain)


def test_drop_classifier_and_load_options(pth, converted, tmp_path):
  headless_dir = convert.convert_file(
    pth, tmp_path / "headless", keep_classifier=False
  )
  headless = mv.load_pretrained(
    _build(jax.random.key(0), num_classes=0), headless_dir
  )
  # A 1000-class file loads into a headless backbone (classifier ignored) ...
  full_into_headless = mv.load_pretrained(
    _build(jax.random.key(1), num_classes=0), converted
  )
  a = nnx.state(headless, mv.WEIGHTS)
  b = nnx.state(full_into_headless, mv.WEIGHTS)
  assert all(
    np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )
  # ... and a headless file loads into a 1000-class backbone, which keeps
  # its own (initialised) classifier: the fine-tuning set-up.
  full = _build(jax.random.key(3), num_classes=1000)
  head_before = np.asarray(full.classifier[3].kernel[...])
  mv.load_pretrained(full, headless_dir)
  np.testing.assert_array_equal(head_before, full.classifier[3].kernel[...])
  np.testing.assert_array_equal(
    full.features[0][0].kernel[...], headless.features[0][0].kernel[...]
  )
  # Existing output is refused without --overwrite, replaced with it.
  with pytest.raises(FileExistsError):
    convert.convert_file(pth, headless_dir)
  convert.convert_file(pth, headless_dir, overwrite=True)
  info = json.loads((headless_dir / convert.INFO_FILE).read_text())
  assert info["classifier_kept"] is True


def test_load_pretrained_refuses_bad_directory(tmp_path):
  with pytest.raises(convert.ConversionError, match="not a converted-weights"):
    mv.load_pretrained(_build(jax.random.key(0), num_classes=0), tmp_path)
