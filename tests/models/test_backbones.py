"""build_backbone: names -> (trunk, dim), small-image stem, any nn.Module; heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_cropmix.models.backbones import build_backbone
from ssl_cropmix.models.heads import asym_moco_projection_head


@pytest.mark.parametrize("name", ["resnet18", "timm/resnet18"])
def test_named_resnet_small_image(name):
    m, dim = build_backbone(name, small_image=True)
    assert dim == 512
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 512)


def test_resnet50_dim_and_standard_stem():
    m, dim = build_backbone("resnet50")
    assert dim == 2048 and m.conv1.kernel_size == (7, 7) and isinstance(m.fc, nn.Identity)


def test_custom_module_dim_found_and_flattened():
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1))
    m, dim = build_backbone(net)
    assert dim == 6
    assert m(torch.randn(3, 3, 8, 8)).shape == (3, 6)


def test_bad_backbones():
    with pytest.raises(ValueError, match="'vgg11'"):
        build_backbone("vgg11")
    with pytest.raises(TypeError, match="int"):
        build_backbone(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="small_image"):
        build_backbone(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1)), small_image=True)


def test_projection_head_layout():
    head = asym_moco_projection_head(512, 2048, 128)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 2048), (2048, 2048), (2048, 128)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 1 and bns[0].num_features == 2048  # BN only after the first layer
    relus = [m for m in head.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2  # none on the output
    assert head(torch.randn(4, 512)).shape == (4, 128)
    with pytest.raises(ValueError, match="output_dim"):
        asym_moco_projection_head(8, 8, 0)
