"""PyTorch twin of ASRID (torchvision MobileNetV3-Small + the same heads).

Written from the Flax definitions in asrid_jax/models/{attention,heads,
temporal,asrid}.py so that bench/train_bench.py compares the same work:
same layer widths, the same ops (texture enhancement, bilinear attention
pooling with signed sqrt + L2 norm, Mix with LayerNorm/GELU and a skip,
StaNew self-attention + BN + 2 FC, pre-norm Transformer encoder with
sinusoidal positions, mean over time). Layouts are NCHW (torch's own);
initialisations are torch defaults (irrelevant to speed). Not a weight-
compatible port: only the benchmark uses it. Runs on any device (move the
model with `.to(device)`; inputs on the same device) and under
`torch.autocast` (bench/train_bench.py's bfloat16 rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

TAPS = {"stride8": 3, "stride16": 8, "last": 12}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
  def __init__(self):
    super().__init__()
    self.features = torchvision.models.mobilenet_v3_small(weights=None).features

  def forward(self, x):
    out = {}
    for i, layer in enumerate(self.features):
      x = layer(x)
      for name, idx in TAPS.items():
        if i == idx:
          out[name] = x
    out["pooled"] = out["last"].mean(dim=(2, 3))
    return out


class TextureEnhancement(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv = nn.Conv2d(2 * cin, cout, 3, padding=1, bias=False)
    self.bn = nn.BatchNorm2d(cout, momentum=0.1)

  def forward(self, x):
    local = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return F.relu(self.bn(self.conv(torch.cat([x, x - local], 1))))


class Attention(nn.Module):
  def __init__(self, num_maps, out_dim, texture_dim):
    super().__init__()
    self.num_maps = num_maps
    self.map_conv = nn.Conv2d(48, 48, 3, padding=1, bias=False)
    self.map_bn = nn.BatchNorm2d(48, momentum=0.1)
    self.map_out = nn.Conv2d(48, num_maps, 1)
    self.texture = TextureEnhancement(24, texture_dim)
    self.proj = nn.Linear(texture_dim, out_dim)

  def forward(self, texture, semantic):
    maps = F.softplus(
      self.map_out(F.relu(self.map_bn(self.map_conv(semantic))))
    )
    maps = F.interpolate(
      maps, size=texture.shape[2:], mode="bilinear", align_corners=False
    )
    feats = self.texture(texture)
    area = maps.shape[2] * maps.shape[3]
    parts = torch.einsum("nmhw,nchw->nmc", maps, feats) / area
    parts = torch.sign(parts) * torch.sqrt(parts.abs() + 1e-6)
    parts = parts / torch.sqrt((parts * parts).sum(-1, keepdim=True) + 1e-12)
    return self.proj(parts), maps


class Mix(nn.Module):
  def __init__(self, global_dim, num_parts, dim):
    super().__init__()
    fused = global_dim + num_parts * dim
    self.norm = nn.LayerNorm(fused)
    self.fuse = nn.Linear(fused, dim)
    self.skip_proj = nn.Linear(global_dim, dim)

  def forward(self, g, parts):
    x = torch.cat([g, parts.flatten(1)], -1)
    token = F.gelu(self.fuse(self.norm(x))) + self.skip_proj(g)
    return torch.cat([token[:, None], parts], 1)


class StaticHead(nn.Module):
  def __init__(self, num_tokens, dim, heads, dropout):
    super().__init__()
    self.norm = nn.LayerNorm(dim)
    self.attn = nn.MultiheadAttention(dim, heads, dropout, batch_first=True)
    self.bn = nn.BatchNorm1d(num_tokens * dim, momentum=0.1)
    self.fc1 = nn.Linear(num_tokens * dim, dim)
    self.drop = nn.Dropout(dropout)
    self.fc2 = nn.Linear(dim, 1)

  def forward(self, tokens):
    y = self.norm(tokens)
    x = tokens + self.attn(y, y, y, need_weights=False)[0]
    feat = F.gelu(self.fc1(self.bn(x.flatten(1))))
    return self.fc2(self.drop(feat))[:, 0], feat


class TemporalHead(nn.Module):
  def __init__(self, dim, layers, heads, mlp_dim, dropout):
    super().__init__()
    layer = nn.TransformerEncoderLayer(
      dim,
      heads,
      mlp_dim,
      dropout,
      activation="gelu",
      batch_first=True,
      norm_first=True,
    )
    self.encoder = nn.TransformerEncoder(
      layer, layers, enable_nested_tensor=False
    )
    self.drop = nn.Dropout(dropout)
    self.norm = nn.LayerNorm(dim)
    self.fc = nn.Linear(dim, 1)
    self.dim = dim

  def forward(self, x):
    t, dev = x.shape[1], x.device
    pos = torch.arange(t, dtype=torch.float32, device=dev)[:, None]
    freq = torch.pow(
      10000.0, -torch.arange(0, self.dim, 2, device=dev) / self.dim
    )
    pe = torch.zeros(t, self.dim, device=dev)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    x = self.encoder(self.drop(x + pe))
    return self.fc(self.norm(x).mean(1))[:, 0]


class ASRIDTwin(nn.Module):
  """variant in {sta_new, sta_new_mix, dyn, dyn_mix, baseline}."""

  def __init__(
    self,
    variant="dyn_mix",
    num_attention=4,
    attention_dim=128,
    transformer_layers=2,
    transformer_heads=4,
    transformer_mlp_dim=256,
    dropout=0.1,
    texture_dim=64,
  ):
    super().__init__()
    self.variant = variant
    self.backbone = Backbone()
    self.baseline = variant == "baseline"
    self.mix = self.dynamic = None
    if self.baseline:
      self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(576, 1))
      return
    self.attention = Attention(num_attention, attention_dim, texture_dim)
    tokens = num_attention
    if variant.endswith("mix"):
      self.mix = Mix(576, num_attention, attention_dim)
      tokens += 1
    self.static = StaticHead(tokens, attention_dim, transformer_heads, dropout)
    if variant.startswith("dyn"):
      self.dynamic = TemporalHead(
        attention_dim,
        transformer_layers,
        transformer_heads,
        transformer_mlp_dim,
        dropout,
      )

  def forward(self, images):
    """images (B, T, 3, H, W) uint8 -> dict like the Flax model's."""
    b, t = images.shape[:2]
    x = images.flatten(0, 1).float() / 255.0
    x = (x - MEAN_T.to(x)) / STD_T.to(x)
    f = self.backbone(x)
    if self.baseline:
      return {"frame_logits": self.head(f["pooled"])[:, 0].view(b, t)}
    tokens, maps = self.attention(f["stride8"], f["stride16"])
    if self.mix is not None:
      tokens = self.mix(f["pooled"], tokens)
    logits, feats = self.static(tokens)
    out = {"frame_logits": logits.view(b, t)}
    if self.dynamic is not None:
      out["clip_logit"] = self.dynamic(feats.view(b, t, -1))
    return out


MEAN_T = torch.tensor(MEAN).view(1, 3, 1, 1)
STD_T = torch.tensor(STD).view(1, 3, 1, 1)


def asrid_loss(out, labels, static_weight=0.8):
  y = labels.float()
  static = F.binary_cross_entropy_with_logits(
    out["frame_logits"], y[:, None].expand_as(out["frame_logits"])
  )
  if "clip_logit" not in out:
    return static
  dyn = F.binary_cross_entropy_with_logits(out["clip_logit"], y)
  return static_weight * static + (1 - static_weight) * dyn


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)
