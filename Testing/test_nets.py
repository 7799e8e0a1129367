"""KerasUNet's fast paths (split merge conv, phase-decomposed up-sampling conv, single-channel first
conv, in-place decoder batch norm) against a plain forward pass written out here layer by layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segsuite.nets.unet import KerasUNet


def plain_forward(net: KerasUNet, x: torch.Tensor) -> torch.Tensor:
    """The neurite U-Net, literally: conv+ELU, BN, max-pool; up-sample, concat [skip, up], conv+ELU, BN."""
    p, layers = net.prefix, net.layers
    skips = []
    for level in range(net.n_levels):
        for conv in range(net.n_conv):
            x = F.elu(layers[f"{p}_conv_downarm_{level}_{conv}"](x))
        skips.append(x)
        x = layers[f"{p}_bn_down_{level}"](x)
        if level < net.n_levels - 1:
            x = F.max_pool3d(x, 2)
    skips.pop()
    for step in range(net.n_levels - 1):
        index = net.n_levels + step
        skip = skips.pop()
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if step < net.n_skip_levels:
            x = torch.cat([skip, x], dim=1)
        for conv in range(net.n_conv):
            x = F.elu(layers[f"{p}_conv_uparm_{index}_{conv}"](x))
        x = layers[f"{p}_bn_up_{step}"](x)
    return torch.softmax(layers[f"{p}_likelihood"](x), dim=1)


def randomised(net: KerasUNet) -> KerasUNet:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return net.eval()


@pytest.mark.parametrize("levels, kernel, skip_levels, channels", [
    (3, 3, None, 1),   # ScLimbic's shape
    (4, 3, None, 2),   # SynthSeg robust unet2 takes several channels
    (4, 5, 2, 3),      # SynthSeg's l2l: 5x5x5 kernels, skips only at the 2 deepest levels
])
def test_fast_forward_equals_the_plain_network(levels, kernel, skip_levels, channels):
    torch.manual_seed(0)
    net = randomised(KerasUNet("net", channels, 5, n_levels=levels, n_features=4, kernel_size=kernel,
                               n_skip_levels=skip_levels))
    image = torch.rand(1, channels, 16, 24, 8)
    with torch.inference_mode():
        expected = plain_forward(net, image.clone())
        got = net(image.clone())
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("negative", [False, True])
def test_encoder_batch_norm_after_pooling_equals_pooling_after_batch_norm(negative):
    """The encoder normalises the pooled tensor when every BN scale is positive (exact: the affine
    map and its rounding are monotone); a negative scale, where max and BN do not commute, takes
    the literal path."""
    torch.manual_seed(0)
    net = randomised(KerasUNet("net", 1, 5, n_levels=3, n_features=4))
    bn = net.layers["net_bn_down_0"]
    if negative:
        with torch.no_grad():
            bn.weight[1] = -0.9
    x = torch.randn(1, 4, 9, 8, 7)  # odd sizes: ceil-mode windows at the border
    with torch.inference_mode():
        literal = F.max_pool3d(bn(x), 2, ceil_mode=True)
        fast = net._bn_then_pool("net_bn_down_0", x.clone())
        swapped = bn(F.max_pool3d(x, 2, ceil_mode=True))
    assert torch.equal(fast, literal)  # the same values, bit for bit (same BN code, monotone rounding)
    assert (swapped - literal).abs().max() > 1e-2 if negative else torch.allclose(swapped, literal, atol=1e-6)
    if negative:
        image = torch.rand(1, 1, 16, 24, 8)
        with torch.inference_mode():
            torch.testing.assert_close(net(image.clone()), plain_forward(net, image.clone()), atol=2e-5, rtol=1e-4)


def test_a_wrong_layer_name_breaks_the_comparison():
    """The plain reference really depends on the weights (guards against a vacuous test)."""
    torch.manual_seed(0)
    net = randomised(KerasUNet("net", 1, 5, n_levels=3, n_features=4))
    image = torch.rand(1, 1, 8, 8, 8)
    with torch.inference_mode():
        before = net(image.clone())
        net.layers["net_conv_uparm_4_0"].weight.mul_(2)
        after = plain_forward(net, image.clone())
    assert (before - after).abs().max() > 1e-3
