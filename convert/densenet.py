"""DenseNet in plain torch with torchvision's module names (so its state dicts load as-is).

torchvision itself is not a dependency: PyPI's build pulls a multi-gigabyte CUDA stack
and does not import beside the CPU torch the converter uses.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class _DenseLayer(nn.Module):
    def __init__(self, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, in_features: int, bn_size: int, growth: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}", _DenseLayer(in_features + i * growth, growth, bn_size)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_features, out_features, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    """torchvision.models.DenseNet's layout; DenseNet-121 is (32, (6, 12, 24, 16), 64, 4)."""

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        num_classes: int = 14,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(num_init_features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        n = num_init_features
        for i, layers in enumerate(block_config):
            self.features.add_module(
                f"denseblock{i + 1}", _DenseBlock(layers, n, bn_size, growth_rate)
            )
            n += layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(n, n // 2))
                n //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(n))
        self.classifier = nn.Linear(n, num_classes)
        self.num_features = n

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1)
        return self.classifier(pooled)


class CamHead(nn.Module):
    """What the fused graph needs from the CAM network, for a subset of its classes.

    CAM of class c = classifier row c . last feature map (Zhou et al.), so each finding has
    its own map; the probabilities are the network's own sigmoid outputs.
    """

    def __init__(self, net: DenseNet, class_indices: list[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("indices", torch.tensor(class_indices, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.net.feature_map(x)
        logits = self.net.classifier(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
        probs = torch.sigmoid(logits).index_select(1, self.indices)
        weights = self.net.classifier.weight.index_select(0, self.indices)  # [k, C]
        n, c, h, w = fmap.shape
        cams = torch.matmul(weights, fmap.reshape(n, c, h * w)).reshape(n, -1, h, w)
        return probs, cams


_OLD_STYLE = re.compile(r"\.(norm|relu|conv)\.(\d+)\.")


def normalise_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the common CheXNet checkpoint layouts onto torchvision's key names.

    Handles a `module.` (DataParallel) and `densenet121.` wrapper, a classifier wrapped
    in Sequential(Linear, Sigmoid) (`classifier.0.*`), and the old `norm.1`/`conv.1` names.
    """
    out = {}
    for key, value in state.items():
        k = key
        for prefix in ("module.", "densenet121.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        k = k.replace("classifier.0.", "classifier.")
        k = _OLD_STYLE.sub(r".\1\2.", k)
        out[k] = value
    return out
