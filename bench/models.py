"""Small timm-style models for the training-step benchmark (timm and torchvision are not
dependencies, so the blocks are written here, following timm's code):

- `ResNetLike`: timm's ResNet BasicBlock (conv-BN-ReLU-conv-BN, drop_path on the residual branch
  before the add), three stages.
- `ConvNeXtLike`: timm's ConvNeXtBlock (7x7 depthwise conv, LayerNorm and the MLP in channels-last,
  layer scale, then `x.permute(0, 3, 1, 2)` into drop_path, so drop_path sees a permuted,
  non-contiguous tensor exactly as in timm), patchify stem, LayerNorm + 2x2 conv downsampling.
- `Dropout2dCNN`: conv-BN-ReLU-Dropout2d-maxpool blocks, global pooling, a linear head.

Every model takes its stochastic layers from `drop_layers(kind)`, so the same architecture is built
with torch's modules ("torch": `nn.Dropout2d` and `TorchDropPath`, timm's drop_path in torch ops),
fastdrop's ("fastdrop": `fastdrop.nn.DropPath`, `fastdrop.nn.Dropout2d`), the floor of a Function
route ("bare": a bare autograd.Function around the same kernel, no validation or dispatch; fastdrop's
small grouped calls under autograd now take torch's multiply instead, docs/cpu_kernels.md) or none
("none": `nn.Identity`, the cost of the step without dropout). As in timm, drop-path rates grow linearly
over the blocks from 0 to `drop_path_rate`, and a block with rate 0 gets `nn.Identity`.

    model = build("resnet", "fastdrop")
    step = train_step(model, *example_batch("resnet", 16))
    step()  # forward, cross-entropy, backward, SGD step
"""
import torch
from torch import nn
import torch.nn.functional as F

KINDS = ("torch", "fastdrop", "bare", "none")
NUM_CLASSES = 10


class TorchDropPath(nn.Module):
    """timm's DropPath (timm.layers.drop.drop_path) written with torch ops: one Bernoulli(keep)
    draw per sample, scaled by 1/keep, broadcast over the other dims."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        r = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            r.div_(keep)
        return x * r

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class _BareGrouped(torch.autograd.Function):
    """The floor of the Function route inside a model: a bare autograd.Function around fastdrop's
    one-launch grouped kernel on the tensor's memory (seed from torch's generator, mask
    regenerated in backward, nothing saved), with none of the library's validation, dispatch or
    other layouts (a tensor whose groups are not contiguous runs of memory is copied first)."""

    @staticmethod
    def forward(ctx, x, p, group_ndim):
        from fastdrop._seeds import draw_torch_seed
        ctx.args = (p, draw_torch_seed(), group_ndim)
        return _BareGrouped.run(x.detach(), *ctx.args)

    @staticmethod
    def backward(ctx, g):
        return _BareGrouped.run(g, *ctx.args), None, None

    @staticmethod
    def run(x, p, seed, group_ndim):
        from fastdrop._grouped import grouped_runs
        from fastdrop._cpu import groups_flat_into
        runs = grouped_runs(x, group_ndim)
        if runs is None or runs[0] != 1:
            x = x.contiguous()
        out = torch.empty_like(x)  # x's strides: the same run order
        n = x.numel()
        xn = x.as_strided((n,), (1,)).numpy()
        groups_flat_into(xn, out.as_strided((n,), (1,)).numpy(), x.shape[:group_ndim].numel(), p, seed, 0,
                         xn.dtype.type(1.0 / (1.0 - p)))
        return out


class BareDropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return _BareGrouped.apply(x, self.p, 1) if self.training and self.p > 0 else x


class BareDropout2d(BareDropPath):
    def forward(self, x):
        return _BareGrouped.apply(x, self.p, 2) if self.training and self.p > 0 else x


def drop_layers(kind):
    """(drop_path_cls, dropout2d_cls) for kind "torch", "fastdrop", "bare" (the design floor:
    `_BareGrouped`) or "none"; each takes p."""
    if kind == "torch":
        return TorchDropPath, nn.Dropout2d
    if kind == "fastdrop":
        import fastdrop
        return fastdrop.nn.DropPath, fastdrop.nn.Dropout2d
    if kind == "bare":
        return BareDropPath, BareDropout2d
    if kind == "none":
        return (lambda p: nn.Identity()), (lambda p: nn.Identity())
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _drop_paths(kind, rate, n):
    """timm's stochastic-depth schedule: rates linspace(0, rate, n); nn.Identity where 0."""
    cls = drop_layers(kind)[0]
    rates = torch.linspace(0, rate, n).tolist() if n > 1 else [rate]
    return [cls(r) if r > 0 else nn.Identity() for r in rates]


# ------------------------------------------------------------------------------------------ ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, drop_path):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))
        self.drop_path = drop_path

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(self.drop_path(y) + shortcut)


class ResNetLike(nn.Module):
    """3x3 stem, three stages of `depth` BasicBlocks (widths w, 2w, 4w; strides 1, 2, 2)."""

    def __init__(self, kind, width=16, depth=2, drop_path_rate=0.1, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        dps = _drop_paths(kind, drop_path_rate, 3 * depth)
        blocks, cin = [], width
        for s, stride in enumerate((1, 2, 2)):
            cout = width * 2 ** s
            for d in range(depth):
                blocks.append(BasicBlock(cin, cout, stride if d == 0 else 1, dps[s * depth + d]))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


# ---------------------------------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of NCHW input (timm's LayerNorm2d)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, drop_path, ls_init_value=1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value))
        self.drop_path = drop_path

    def forward(self, x):
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtLike(nn.Module):
    """4x4/4 patchify stem, three stages of `depth` ConvNeXt blocks (dims w, 2w, 4w), LayerNorm2d +
    2x2/2 conv between stages, global average pool, LayerNorm, linear head."""

    def __init__(self, kind, width=32, depth=2, drop_path_rate=0.1, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 4, 4), LayerNorm2d(width, eps=1e-6))
        dps = _drop_paths(kind, drop_path_rate, 3 * depth)
        layers, dim = [], width
        for s in range(3):
            if s > 0:
                layers += [LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, 2 * dim, 2, 2)]
                dim *= 2
            layers += [ConvNeXtBlock(dim, dps[s * depth + d]) for d in range(depth)]
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.stages(self.stem(x)).mean((2, 3))))


# -------------------------------------------------------------------------------------- Dropout2d
class Dropout2dCNN(nn.Module):
    """Three conv-BN-ReLU-Dropout2d(p)-maxpool blocks (w, 2w, 4w channels), pool, linear head."""

    def __init__(self, kind, width=32, p=0.1, num_classes=NUM_CLASSES):
        super().__init__()
        drop2d = drop_layers(kind)[1]
        layers, cin = [], 3
        for s in range(3):
            cout = width * 2 ** s
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), drop2d(p), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


# ------------------------------------------------------------------------------------ entry points
MODELS = {"resnet": ResNetLike, "convnext": ConvNeXtLike, "cnn_dropout2d": Dropout2dCNN}
IMAGE_SIZE = {"resnet": 32, "convnext": 64, "cnn_dropout2d": 32}  # input H = W


def build(name, kind, seed=0, **kw):
    """Model `name` with `kind`'s stochastic layers, weights from torch.manual_seed(seed): the
    same seed gives the same weights for every kind (the drop layers hold no parameters)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")
    torch.manual_seed(seed)
    return MODELS[name](kind, **kw)


def example_batch(name, batch, image_size=None, seed=0):
    """(images, labels) of the model's input size, from a private generator."""
    g = torch.Generator().manual_seed(seed)
    s = image_size or IMAGE_SIZE[name]
    return (torch.randn(batch, 3, s, s, generator=g),
            torch.randint(0, NUM_CLASSES, (batch,), generator=g))


def train_step(model, x, y, lr=0.01):
    """A zero-argument callable: one training step (forward, cross-entropy, backward, SGD with
    momentum) of `model` in train mode on the fixed batch (x, y)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step
