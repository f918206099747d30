"""The peer of step_bench.py: the same two-view SimLAP train step in PyTorch + timm.

  python benchmarks/peer_step.py --net=authors_cifar --batch=64 [--steps=5] [--warmup=1]
  python benchmarks/peer_step.py --net=resnet50 --batch=32

Runs only where torch and timm are installed (simlap depends on neither; a separate virtualenv
will do, see docs/performance.md); says so and exits otherwise. The step mirrors simlap's
`train_step` for `configs/cifar10.py` (or `configs/in1k.py` for --net=resnet50): both views
of B images through the backbone in one 2B pass (BatchNorm in train mode), the projector
(Dense-BN-ReLU per hidden layer, Dense without bias, LayerNorm), the gate table on B class
pairs, the symmetric SimLAP loss with cosine-in-subspace logits computed by two B x 2B matmuls
(as simlap's fused loss, never B x N x D), the online probe (BN without affine, Linear) on the
detached features, backward, and Adam with coupled L2 (torch's Adam weight_decay, simlap's
"adam_l2") on all weights. float32, eager PyTorch. Prints one Markdown row: median step ms.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

try:
  import timm
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError as e:
  print(f"peer_step: needs torch and timm ({e}); simlap itself does not. Install them in a "
        "separate virtualenv (see docs/performance.md) and run this file with its python.")
  sys.exit(0)

# net -> (timm kwargs, image size, projector hidden widths, classes).
NETS = {
    "authors_cifar": (dict(model_name="resnet18", stem_type="deep", output_stride=8), 32,
                      (2048,), 10),
    "resnet50": (dict(model_name="resnet50"), 224, (2048, 2048), 1000),
}


class Peer(nn.Module):
  def __init__(self, net: str, dim: int = 256, embed_dim: int = 512, hidden_dim: int = 1024):
    super().__init__()
    kwargs, _, hidden, classes = NETS[net]
    self.backbone = timm.create_model(num_classes=0, **kwargs)
    width = self.backbone.num_features
    layers, d = [], width
    for h in hidden:
      layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU()]
      d = h
    self.projector = nn.Sequential(*layers, nn.Linear(d, dim, bias=False), nn.LayerNorm(dim))
    self.embedding = nn.Embedding(classes, embed_dim)
    nn.init.normal_(self.embedding.weight)
    self.gate = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(embed_dim),
                              nn.Linear(embed_dim, hidden_dim), nn.ReLU(),
                              nn.BatchNorm1d(hidden_dim), nn.Linear(hidden_dim, dim))
    self.probe = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, classes))
    self.classes = classes


def simlap_loss(z, k, g, y1, y2, yk, scale=10.0):
  """Cosine-in-subspace SimLAP loss, "anchor" reduction, as simlap.losses.simlap_loss."""
  g2 = g * g
  num = (z * g2) @ k.T
  znorm = torch.sqrt((g2 * z * z).sum(1, keepdim=True) + 1e-12)
  knorm = torch.sqrt(g2 @ (k * k).T + 1e-12)
  logits = scale * num / (znorm * knorm)
  pos = yk[None, :] == y2[:, None]
  excluded = pos | (yk[None, :] == y1[:, None])
  neg_lse = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1, keepdim=True)
  per_pos = F.softplus(neg_lse - logits) * pos  # log(exp(l_p) + sum_neg exp(l_n)) - l_p
  npos = pos.sum(1)
  per_anchor = per_pos.sum(1) / npos.clamp(min=1)
  return torch.where(npos > 0, per_anchor, torch.zeros_like(per_anchor)).mean()


def step(model, opt, view1, view2, labels):
  b = labels.shape[0]
  feats = model.backbone(torch.cat([view1, view2]))
  z = model.projector(feats)
  z1, z2 = z[:b], z[b:]
  pairs = labels[torch.randperm(b)]
  g = torch.sigmoid(model.gate((model.embedding(labels) + model.embedding(pairs)) / 2))
  loss = 0.5 * (simlap_loss(z1, z2, g, labels, pairs, labels)
                + simlap_loss(z2, z1, g, labels, pairs, labels))
  probe = F.cross_entropy(model.probe(feats.detach()), torch.cat([labels, labels]))
  opt.zero_grad(set_to_none=True)
  (loss + probe).backward()
  opt.step()
  return loss


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--net", choices=sorted(NETS), default="authors_cifar")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's choice")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = Peer(args.net).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
  size = NETS[args.net][1]
  view1 = torch.rand(args.batch, 3, size, size)
  view2 = torch.rand(args.batch, 3, size, size)
  labels = torch.randint(0, model.classes, (args.batch,))
  for _ in range(args.warmup):
    step(model, opt, view1, view2, labels)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    step(model, opt, view1, view2, labels)
    times.append(time.perf_counter() - t0)
  ms = 1e3 * statistics.median(times)
  print(f"# peer_step {time.strftime('%Y-%m-%d')} {platform.node()} | torch {torch.__version__}"
        f", timm {timm.__version__}, {torch.get_num_threads()} threads | `{' '.join(sys.argv)}`")
  print(f"| {args.net} | {size}x{size}x3 | {args.batch} | float32 | {ms:.1f} | "
        f"{2 * args.batch / (ms / 1e3):.0f} |")


if __name__ == "__main__":
  main()
