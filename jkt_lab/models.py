"""Models with named feature taps: paper-style VGG teacher/student, WRN, tiny CPU nets, ResNets.

Every model is a :class:`TapModel`. It takes float images ``(N, C, H, W)`` in ``[0, 1]`` and
normalises them with its own per-channel ``mean``/``std`` buffers as its first operation, so
input Jacobians (the paper's ``dT/dx``, ``dS/dx``) are taken with respect to ``[0, 1]`` pixels.
``forward`` returns logits; ``forward_features`` also returns the intermediate feature maps
named in ``feature_taps`` (in depth order), used for attention transfer (Zagoruyko & Komodakis)
and the paper's attention-map Jacobians (Section 4).

Models: ``tiny`` (CPU quick mode), ``vgg4`` (student), ``vgg9`` (teacher), ``wrn``
(wide ResNet, also ``"wrn-16-2"`` = depth 16, width factor 2), ``resnet18``/``resnet34``
(torchvision adapters, optionally ImageNet-pretrained for transfer learning).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_int

__all__ = [
    "MODELS",
    "TapModel",
    "TinyNet",
    "VGG",
    "WideResNet",
    "TorchvisionResNet",
    "MultiHead",
    "build_model",
    "count_parameters",
    "head_parameters",
    "replace_head",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

MODELS: tuple[str, ...] = ("tiny", "vgg4", "vgg9", "wrn", "resnet18", "resnet34")

#: ``width`` when not given: base channel count (tiny, vgg4, vgg9) or widening factor (wrn).
DEFAULT_WIDTH = {"tiny": 16, "vgg4": 32, "vgg9": 64, "wrn": 2}
DEFAULT_WRN_DEPTH = 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GENERIC_MEAN = 0.5  # maps [0, 1] pixels to [-1, 1] when the data's statistics are not given
_GENERIC_STD = 0.5
_WRN_NAME = re.compile(r"^wrn-(\d+)-(\d+)$")


# --------------------------------------------------------------------------- base class


class TapModel(nn.Module):
    """Base class: normalise ``[0, 1]`` input with buffers ``mean``/``std``, return logits.

    Subclasses build ``self.head`` (an ``nn.Linear``: embedding -> logits) and implement
    ``_body(z) -> (embedding, {tap_name: feature_map})`` on the *normalised* input ``z``.
    """

    feature_taps: tuple[str, ...] = ()

    def __init__(self, num_classes: int, in_channels: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).clone())

    # -- input -------------------------------------------------------------------------
    def check_input(self, x) -> None:
        """Cheap shape/dtype check (no data-dependent test, so it works under ``torch.func``)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point images in [0, 1] (e.g. float32), got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have {self.in_channels} channel(s) (shape (N, {self.in_channels}, H, W)), "
                f"got shape {tuple(x.shape)}"
            )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``: the model's first operation."""
        self.check_input(x)
        return (x - self.mean) / self.std

    # -- forward -----------------------------------------------------------------------
    def _body(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``x`` in ``[0, 1]``."""
        embedding, _ = self._body(self.normalize(x))
        return self.head(embedding)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, {tap: feature map (N, C, H, W)})`` with taps in ``feature_taps`` order."""
        embedding, features = self._body(self.normalize(x))
        return self.head(embedding), features

    @property
    def embedding_dim(self) -> int:
        """Size of the vector the (last, linear) head reads."""
        return self.head.in_features


# --------------------------------------------------------------------------- building blocks


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def _init_weights(module: nn.Module) -> None:
    """He init for convolutions, BN at identity; linear layers keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- tiny


class TinyNet(TapModel):
    """Three conv-BN-ReLU layers (widths w, 2w, 4w) with 2x2 max-pools between them, global pool, linear.

    Made for CPU quick mode. Taps ``block1..block3`` are the three layers' outputs.
    """

    feature_taps = ("block1", "block2", "block3")

    def __init__(self, num_classes, in_channels, mean, std, width: int = 16):
        super().__init__(num_classes, in_channels, mean, std)
        w = width
        self.block1 = _conv_bn_relu(in_channels, w)
        self.block2 = _conv_bn_relu(w, 2 * w)
        self.block3 = _conv_bn_relu(2 * w, 4 * w)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * w, num_classes)
        _init_weights(self)

    def _body(self, z):
        f1 = self.block1(z)
        f2 = self.block2(F.max_pool2d(f1, 2, ceil_mode=True))
        f3 = self.block3(F.max_pool2d(f2, 2, ceil_mode=True))
        return self.pool(f3).flatten(1), {"block1": f1, "block2": f2, "block3": f3}


# --------------------------------------------------------------------------- VGG


class VGG(TapModel):
    """VGG-style net: stages of conv-BN-ReLU separated by 2x2 max-pools, global average pool,
    optional hidden FC layer, linear head.

    Tap ``block<i>`` is stage i's output (before the following max-pool). The global average
    pool lets the same net run on 8x8, 32x32 and 64x64 inputs.
    """

    def __init__(self, num_classes, in_channels, mean, std, stages, hidden: int | None = None):
        super().__init__(num_classes, in_channels, mean, std)
        blocks, cin = [], in_channels
        for widths in stages:
            layers = []
            for cout in widths:
                layers.extend(_conv_bn_relu(cin, cout))
                cin = cout
            blocks.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(blocks)
        self.feature_taps = tuple(f"block{i + 1}" for i in range(len(blocks)))
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        if hidden:
            self.fc = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU())
            cin = hidden
        else:
            self.fc = nn.Identity()
        self.head = nn.Linear(cin, num_classes)
        _init_weights(self)

    def _body(self, z):
        features, h = {}, z
        for i, (name, stage) in enumerate(zip(self.feature_taps, self.stages)):
            if i:
                h = self.pool(h)
            h = stage(h)
            features[name] = h
        return self.fc(self.gap(h).flatten(1)), features


def _vgg9(num_classes, in_channels, mean, std, width):
    """Teacher: 7 conv (w,w | 2w,2w | 4w,4w | 8w) + 2 FC (8w hidden) = 9 weight layers."""
    w = width
    return VGG(num_classes, in_channels, mean, std, [[w, w], [2 * w, 2 * w], [4 * w, 4 * w], [8 * w]], hidden=8 * w)


def _vgg4(num_classes, in_channels, mean, std, width):
    """Student: 3 conv (w | 2w | 4w) + 1 FC = 4 weight layers."""
    w = width
    return VGG(num_classes, in_channels, mean, std, [[w], [2 * w], [4 * w]], hidden=None)


# --------------------------------------------------------------------------- wide ResNet


class _WideBasic(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv twice) with a 1x1 projection when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(TapModel):
    """WRN-depth-width (Zagoruyko & Komodakis 2016): depth = 6n + 4, groups of widths
    16k, 32k, 64k. Taps ``group1..group3`` are the three groups' outputs (as in attention transfer).
    """

    feature_taps = ("group1", "group2", "group3")

    def __init__(self, num_classes, in_channels, mean, std, depth: int = 16, width: int = 2):
        super().__init__(num_classes, in_channels, mean, std)
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        cin, groups = 16, []
        for cout, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for b in range(n):
                blocks.append(_WideBasic(cin, cout, stride if b == 0 else 1))
                cin = cout
            groups.append(nn.Sequential(*blocks))
        self.group1, self.group2, self.group3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        _init_weights(self)

    def _body(self, z):
        g1 = self.group1(self.conv1(z))
        g2 = self.group2(g1)
        g3 = self.group3(g2)
        out = self.pool(F.relu(self.bn(g3))).flatten(1)
        return out, {"group1": g1, "group2": g2, "group3": g3}


# --------------------------------------------------------------------------- torchvision ResNet


def _torchvision_resnet(arch: str, pretrained: bool) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, arch)
    if not pretrained:
        return builder(weights=None)
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        return builder(weights=weights)
    except Exception as err:  # URLError, OSError, RuntimeError, ... depending on how it failed
        raise RuntimeError(
            f"pretrained=True needs the ImageNet weights for {arch}, which torchvision downloads "
            f"once into {torch.hub.get_dir()}/checkpoints; that needs a network connection "
            f"(or a copy of {weights.url.rsplit('/', 1)[-1]} placed there). The download failed: {err}"
        ) from err


class TorchvisionResNet(TapModel):
    """torchvision ResNet with a new ``num_classes`` head and taps ``layer1..layer4``.

    The forward pass is written out (conv1, bn1, relu, maxpool, layer1-4, avgpool, head) so
    every tap is a plain intermediate tensor.
    """

    feature_taps = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, arch, num_classes, in_channels, mean, std, pretrained: bool = False):
        super().__init__(num_classes, in_channels, mean, std)
        net = _torchvision_resnet(arch, pretrained)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool
        # ImageNet weights with 1000 outputs keep ImageNet's classifier (the old task, for LwF)
        self.head = net.fc if pretrained and num_classes == net.fc.out_features else \
            nn.Linear(net.fc.in_features, num_classes)

    def _body(self, z):
        h = self.maxpool(self.relu(self.bn1(self.conv1(z))))
        l1 = self.layer1(h)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return self.avgpool(l4).flatten(1), {"layer1": l1, "layer2": l2, "layer3": l3, "layer4": l4}


# --------------------------------------------------------------------------- two heads (LwF)


class MultiHead(TapModel):
    """A backbone that keeps its original (old-task) head and gains a new-task head.

    For Learning without Forgetting (Li & Hoiem; paper Section 4): ``forward(x)`` returns the
    NEW head's logits, ``forward_heads(x)`` returns ``(new_logits, old_logits, features)``.
    The old head is ``backbone.head`` itself (shared, not copied); ``mean``/``std`` and
    ``feature_taps`` are the backbone's.
    """

    def __init__(self, backbone: TapModel, num_new_classes: int, seed: int | None = None):
        if not isinstance(backbone, TapModel):
            raise TypeError(f"backbone must be a TapModel (from build_model), got {type(backbone).__name__}")
        num_new_classes = check_int(num_new_classes, "num_new_classes", minimum=1)
        seed = _check_seed(seed)
        nn.Module.__init__(self)
        self.backbone = backbone
        self.in_channels = backbone.in_channels
        self.feature_taps = tuple(backbone.feature_taps)
        self.old_num_classes = backbone.num_classes
        self.num_classes = num_new_classes
        self.head = _new_linear(backbone.head, num_new_classes, seed)

    @property
    def mean(self) -> torch.Tensor:
        return self.backbone.mean

    @property
    def std(self) -> torch.Tensor:
        return self.backbone.std

    @property
    def old_head(self) -> nn.Linear:
        """The backbone's original head (old task)."""
        return self.backbone.head

    def _body(self, z):
        return self.backbone._body(z)

    def forward_heads(self, x: torch.Tensor):
        """``(new_logits, old_logits, {tap: feature map})`` from one pass through the backbone."""
        embedding, features = self._body(self.normalize(x))
        return self.head(embedding), self.backbone.head(embedding), features


# --------------------------------------------------------------------------- helpers


def _check_seed(seed):
    return None if seed is None else check_int(seed, "seed", minimum=0)


@contextmanager
def _seeded(seed: int | None):
    """Seed the CPU generator inside the block only (the global RNG state is restored after)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _new_linear(like: nn.Linear, out_features: int, seed: int | None) -> nn.Linear:
    with _seeded(seed):
        layer = nn.Linear(like.in_features, out_features)
    return layer.to(device=like.weight.device, dtype=like.weight.dtype)


def _stats(value, name: str, in_channels: int, default, *, positive: bool) -> torch.Tensor:
    if value is None:
        value = default
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a sequence of {in_channels} numbers, got bool")
    if isinstance(value, Real):
        t = torch.full((in_channels,), float(value), dtype=torch.float32)
    else:
        try:
            t = torch.as_tensor(value.detach().cpu() if isinstance(value, torch.Tensor) else list(value),
                                dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"{name} must be a number or a sequence of {in_channels} numbers (one per channel), "
                f"got {type(value).__name__}"
            ) from err
        if t.numel() != in_channels:
            raise ValueError(
                f"{name} must have one value per input channel (in_channels={in_channels}), got {t.numel()}"
            )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    if positive and bool((t <= 0).any()):
        raise ValueError(f"{name} must be > 0 for every channel, got {t.tolist()}")
    return t


def _parse_name(name) -> tuple[str, int | None, int | None]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (one of {', '.join(MODELS)}), got {type(name).__name__}")
    key = name.strip().lower()
    if key in MODELS:
        return key, None, None
    match = _WRN_NAME.match(key)
    if match:
        return "wrn", int(match.group(1)), int(match.group(2))
    raise ValueError(
        f"name must be one of {', '.join(map(repr, MODELS))} or 'wrn-<depth>-<width>' "
        f"such as 'wrn-16-2'; got {name!r}"
    )


def build_model(
    name: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    mean=None,
    std=None,
    width: int | None = None,
    depth: int | None = None,
    pretrained: bool = False,
    seed: int | None = None,
) -> TapModel:
    """Build a model by name (see ``MODELS``; also ``"wrn-<depth>-<width>"``).

    ``width``: base channel count for tiny/vgg4/vgg9 (defaults 16/32/64), widening factor for
    wrn (default 2). ``depth``: wrn only (6n+4, default 16). ``mean``/``std``: per-channel input
    statistics (a number or one value per channel); default ImageNet's for 3-channel resnets,
    0.5/0.5 otherwise. ``pretrained``: resnets only, loads ImageNet weights (downloads once;
    needs a network connection). ``seed``: same seed, same initial weights; the global RNG is
    left untouched.
    """
    arch, name_depth, name_width = _parse_name(name)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    in_channels = check_int(in_channels, "in_channels", minimum=1)
    seed = _check_seed(seed)
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {type(pretrained).__name__}")
    if width is not None:
        width = check_int(width, "width", minimum=1)
    if depth is not None:
        depth = check_int(depth, "depth", minimum=1)
    for given, parsed, what in ((depth, name_depth, "depth"), (width, name_width, "width")):
        if given is not None and parsed is not None and given != parsed:
            raise ValueError(f"{what}={given} contradicts the name {name!r} ({what} {parsed})")
    depth = depth if depth is not None else name_depth
    width = width if width is not None else name_width

    is_resnet = arch.startswith("resnet")
    if depth is not None and arch != "wrn":
        raise ValueError(f"depth is only used by 'wrn' (6n+4 layers); {arch!r} has a fixed depth, got depth={depth}")
    if width is not None and is_resnet:
        raise ValueError(f"width is not used by {arch!r} (torchvision's fixed widths), got width={width}")
    if pretrained and not is_resnet:
        raise ValueError(f"pretrained=True is only available for resnet18/resnet34, not {arch!r}")
    if pretrained and in_channels != 3:
        raise ValueError(f"pretrained=True needs in_channels=3 (ImageNet weights), got in_channels={in_channels}")
    if arch == "wrn":
        depth = DEFAULT_WRN_DEPTH if depth is None else depth
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 for a wide ResNet (10, 16, 22, 28, 40, ...), got {depth}")
    if width is None and not is_resnet:
        width = DEFAULT_WIDTH[arch]

    imagenet = is_resnet and in_channels == 3
    mean_t = _stats(mean, "mean", in_channels, IMAGENET_MEAN if imagenet else _GENERIC_MEAN, positive=False)
    std_t = _stats(std, "std", in_channels, IMAGENET_STD if imagenet else _GENERIC_STD, positive=True)

    with _seeded(seed):
        if arch == "tiny":
            model = TinyNet(num_classes, in_channels, mean_t, std_t, width=width)
        elif arch == "vgg4":
            model = _vgg4(num_classes, in_channels, mean_t, std_t, width)
        elif arch == "vgg9":
            model = _vgg9(num_classes, in_channels, mean_t, std_t, width)
        elif arch == "wrn":
            model = WideResNet(num_classes, in_channels, mean_t, std_t, depth=depth, width=width)
        else:
            model = TorchvisionResNet(arch, num_classes, in_channels, mean_t, std_t, pretrained=pretrained)
    model.spec = {
        "name": arch, "num_classes": num_classes, "in_channels": in_channels,
        "width": width, "depth": depth, "pretrained": pretrained,
    }
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def head_parameters(model: TapModel) -> list[nn.Parameter]:
    """Parameters of the model's (new) head, e.g. for a larger learning rate when fine-tuning."""
    if not isinstance(model, TapModel):
        raise TypeError(f"model must be a TapModel (from build_model), got {type(model).__name__}")
    return list(model.head.parameters())


def replace_head(model: TapModel, num_classes: int, seed: int | None = None) -> TapModel:
    """Give ``model`` a freshly initialised head with ``num_classes`` outputs (in place; returns it).

    For transfer learning to a target task; use :class:`MultiHead` to keep the old head (LwF).
    """
    if not isinstance(model, TapModel):
        raise TypeError(f"model must be a TapModel (from build_model), got {type(model).__name__}")
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    seed = _check_seed(seed)
    model.head = _new_linear(model.head, num_classes, seed)
    model.num_classes = num_classes
    if isinstance(getattr(model, "spec", None), dict):
        model.spec["num_classes"] = num_classes
    return model
