"""Writes the golden fixtures of tests/test_golden.py from the PyTorch reference implementations.

Needs torch, torchvision, timm, safetensors and numpy (see README.md here); simlap and its
tests never import this file. Each fixture is one .safetensors file:

  sd/<name>         the module's state dict (PyTorch names and layouts), before any forward
  input, labels, pair_labels  the fixed inputs
  eval/<output>     outputs in eval mode (running statistics)
  train/<output>    outputs of one train-mode forward (batch statistics)
  train64/<output>  the same forward in float64: how far float32 itself is from exact there
  after/<name>      running_mean / running_var after that forward
  count/<bn name>   how many values per channel that BatchNorm averaged (B, or B*H*W)

BatchNorm affine parameters and running statistics are randomised before saving, so a zero
gamma (timm's and torchvision's zero-init of the last BN per block) cannot hide a mapping error.

    python tests/golden/make_golden.py [--out tests/golden]
"""
from __future__ import annotations

import argparse
import copy
import functools
import os

import numpy as np
import safetensors.numpy
import timm
import torch
import torchvision
from torch import nn


# ---- the authors' heads, as in erow/vitookit vitookit/models/build_model.py (build_head) and
# ---- vitookit/evaluation/simlap.py (BasicGate, SimLAP); FastSSL's model/simlap.py is the same.
def build_head(num_layers, input_dim, mlp_dim, output_dim, hidden_bn=True, activation=nn.ReLU,
               last_norm="bn"):
  mlp = []
  for i in range(num_layers):
    dim1 = input_dim if i == 0 else mlp_dim
    dim2 = output_dim if i == num_layers - 1 else mlp_dim
    mlp.append(nn.Linear(dim1, dim2, bias=i != num_layers - 1))
    if i < num_layers - 1:
      if hidden_bn:
        mlp.append(nn.BatchNorm1d(dim2))
      mlp.append(activation())
    elif last_norm == "ln":
      mlp.append(nn.LayerNorm(dim2))
  return nn.Sequential(*mlp)


class BasicGate(nn.Module):
  def __init__(self, embed_dim, num_classes=1000, in_dim=512, mlp_dim=1024):
    super().__init__()
    self.mlp = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(in_dim), nn.Linear(in_dim, mlp_dim),
                             nn.ReLU(), nn.BatchNorm1d(mlp_dim), nn.Linear(mlp_dim, embed_dim))
    self.label_embedding = nn.Embedding(num_classes, in_dim)

  def forward(self, y1, y2):
    return self.mlp((self.label_embedding(y1) + self.label_embedding(y2)) / 2).sigmoid()


class AuthorsSimLAP(nn.Module):
  """The parameter-holding part of the authors' SimLAP: backbone, projector, filter, cls_head."""

  def __init__(self, backbone, feat_dim, mlp_dim, out_dim, num_classes, gate_in, gate_mlp):
    super().__init__()
    self.backbone = backbone
    self.projector = build_head(2, feat_dim, mlp_dim, out_dim, last_norm="ln")
    self.filter = BasicGate(out_dim, num_classes=num_classes, in_dim=gate_in, mlp_dim=gate_mlp)
    self.cls_head = nn.Linear(feat_dim, num_classes)


class NarrowTorchvisionResNet(torchvision.models.resnet.ResNet):
  """torchvision's ResNet with every width divided by `div` (its own blocks, init and forward;
  torchvision has no width argument for the stem and the stages)."""

  def __init__(self, div, *args, **kwargs):
    self._div = div
    super().__init__(*args, **kwargs)
    self.fc = nn.Identity()  # features, as simlap's backbone returns them

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    if planes == 64:  # called right after the stem is built: build it narrow too
      self.inplanes = 64 // self._div
      self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
      self.bn1 = self._norm_layer(self.inplanes)
    return super()._make_layer(block, planes // self._div, blocks, stride, dilate)


def moco_sincos_position_embedding(model, temperature=10000.0):
  """MoCo-v3's `build_2d_sincos_position_embedding` (vits.py), for a timm 1.0 ViT."""
  h, w = model.patch_embed.grid_size
  grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32),
                                  torch.arange(h, dtype=torch.float32))
  pos_dim = model.embed_dim // 4
  omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
  out_w = torch.einsum("m,d->md", [grid_w.flatten(), omega])
  out_h = torch.einsum("m,d->md", [grid_h.flatten(), omega])
  pos_emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)],
                      dim=1)[None, :, :]
  pe_token = torch.zeros([1, 1, model.embed_dim], dtype=torch.float32)
  return nn.Parameter(torch.cat([pe_token, pos_emb], dim=1), requires_grad=False)


class MoCoEncoder(nn.Module):
  """Holds a ViT as MoCo-v3's `base_encoder`, so the state dict carries that prefix."""

  def __init__(self, vit):
    super().__init__()
    self.base_encoder = vit


# ---- helpers
def randomise_bn(model, gen):
  for m in model.modules():
    if isinstance(m, nn.modules.batchnorm._BatchNorm):  # noqa: SLF001
      n = m.num_features
      m.weight.data = torch.rand(n, generator=gen) + 0.5
      m.bias.data = 0.1 * torch.randn(n, generator=gen)
      m.running_mean.data = 0.1 * torch.randn(n, generator=gen)
      m.running_var.data = torch.rand(n, generator=gen) + 0.5
    if isinstance(m, nn.LayerNorm):
      m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
      m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=gen)


def bn_counts(model):
  """Hooks recording, per BatchNorm, the values per channel it averages in train mode."""
  counts, handles = {}, []
  for name, m in model.named_modules():
    if isinstance(m, nn.modules.batchnorm._BatchNorm):  # noqa: SLF001
      handles.append(m.register_forward_pre_hook(
          lambda mod, inp, name=name: counts.__setitem__(name, inp[0].numel() // mod.num_features)))
  return counts, handles


def numpy_dict(prefix, tensors):
  return {f"{prefix}{k}": v.detach().float().numpy().copy() for k, v in tensors.items()}


def record(model, run, inputs, out):
  """Eval outputs, then one train-mode forward: its outputs, running stats and counts.

  `run(model, **inputs)` -> {output name: tensor}; `inputs` are saved under their own names.
  """
  tensors = {"sd/" + k: v for k, v in numpy_dict("", model.state_dict()).items()}
  tensors.update(numpy_dict("", inputs))
  model.eval()
  with torch.no_grad():
    tensors.update(numpy_dict("eval/", run(model, **inputs)))
  model64 = copy.deepcopy(model).double().train()
  model.train()
  counts, handles = bn_counts(model)
  with torch.no_grad():
    tensors.update(numpy_dict("train/", run(model, **inputs)))
    inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    tensors.update({f"train64/{k}": v.numpy().copy()
                    for k, v in run(model64, **inputs64).items()})
  for h in handles:
    h.remove()
  tensors.update(numpy_dict("after/", {k: v for k, v in model.state_dict().items()
                                       if k.endswith(("running_mean", "running_var"))}))
  tensors.update({f"count/{k}": np.asarray(v, np.int64) for k, v in counts.items()})
  safetensors.numpy.save_file(tensors, out, metadata={
      "torch": torch.__version__, "timm": timm.__version__,
      "torchvision": torchvision.__version__})
  return sum(v.nbytes for v in tensors.values())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  out = parser.parse_args().out
  torch.manual_seed(0)  # module initialisers
  gen = torch.Generator().manual_seed(0)  # inputs and BatchNorm randomisation
  sizes = {}

  def save(name, model, run, **inputs):
    sizes[name] = record(model, run, inputs, os.path.join(out, f"{name}.safetensors"))

  # The authors' CIFAR network at 1/8 width: timm resnet18, deep stem, output stride 8.
  net = timm.create_model("resnet18", stem_type="deep", output_stride=8, num_classes=0,
                          channels=(8, 16, 32, 64), stem_width=8)
  randomise_bn(net, gen)
  save("timm_resnet18_deep_os8", net, lambda m, input: {"features": m(input)},
       input=torch.randn(4, 3, 32, 32, generator=gen))

  # torchvision ResNet-50 (v1.5, zero_init_residual) at 1/16 width.
  net50 = NarrowTorchvisionResNet(16, torchvision.models.resnet.Bottleneck, [3, 4, 6, 3],
                                  zero_init_residual=True)
  randomise_bn(net50, gen)
  save("torchvision_resnet50", net50, lambda m, input: {"features": m(input)},
       input=torch.randn(2, 3, 64, 64, generator=gen))

  # The authors' projector + gate + linear head at batch 64 (features 64 -> 128 -> 32; gate
  # embeddings 64 -> 128 -> 32; 10 classes).
  heads = AuthorsSimLAP(nn.Identity(), 64, 128, 32, 10, 64, 128)
  randomise_bn(heads, gen)
  labels = torch.randint(0, 10, (64,), generator=gen)
  save("authors_heads", heads,
       lambda m, input, labels, pair_labels: {"embeddings": m.projector(input),
                                              "gates": m.filter(labels, pair_labels),
                                              "probe_logits": m.cls_head(input)},
       input=torch.randn(64, 64, generator=gen), labels=labels,
       pair_labels=labels[torch.randperm(64, generator=gen)])

  # A whole authors'-format model, tiny: 1/16-width timm resnet18 (deep, OS 8) on 1 channel.
  backbone = timm.create_model("resnet18", stem_type="deep", output_stride=8, num_classes=0,
                               channels=(4, 8, 16, 32), stem_width=4, in_chans=1)
  model = AuthorsSimLAP(backbone, 32, 64, 16, 10, 16, 32)
  randomise_bn(model, gen)

  def full(m, input, labels):
    feats = m.backbone(input)
    return {"features": feats, "embeddings": m.projector(feats),
            "probe_logits": m.cls_head(feats), "gates": m.filter(labels, labels)}

  save("authors_simlap_tiny", model, full, input=torch.randn(4, 1, 16, 16, generator=gen),
       labels=torch.arange(4))
  # A MoCo-v3 ViT (timm's VisionTransformer with MoCo-v3's fixed sin-cos position embedding),
  # simlap's vit_tiny size: patch 4, width 32, depth 2, 2 heads, on 28 x 28 x 1.
  vit = timm.models.vision_transformer.VisionTransformer(
      img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
      qkv_bias=True, num_classes=0, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))
  vit.pos_embed = moco_sincos_position_embedding(vit)
  nn.init.normal_(vit.cls_token, std=0.1)  # MoCo's 1e-6 would hide a mapping error
  moco = MoCoEncoder(vit)
  randomise_bn(moco, gen)
  save("moco_vit_tiny", moco, lambda m, input: {"features": m.base_encoder(input)},
       input=torch.randn(2, 1, 28, 28, generator=gen))
  print({k: f"{v / 2**10:.0f} KiB" for k, v in sizes.items()})


if __name__ == "__main__":
  main()
