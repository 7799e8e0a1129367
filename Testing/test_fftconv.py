"""The tiled FFT convolution (overlap-save) against torch's direct conv3d."""

import pytest
import torch
import torch.nn.functional as F

from segsuite.nets.fftconv import (DFTConv3d, FFTConv3d, dft_conv3d_valid, dft_kernel_spectrum, dft_stages,
                                   fft_conv3d, kernel_spectrum)


@pytest.mark.parametrize("cin, cout, shape, kernel, tile, batch_bytes", [
    (3, 4, (13, 17, 11), 5, 6, 1 << 30),   # odd sizes, no size a multiple of the tile
    (5, 2, (12, 12, 12), 5, 4, 1 << 30),   # sizes an exact multiple of the tile
    (2, 3, (9, 20, 7), 3, 5, 1 << 12),     # 3^3 kernel; one x-row of tiles per batch
    (4, 4, (3, 4, 5), 5, 8, 1 << 30),      # volume smaller than one tile and than the kernel
    (6, 5, (30, 8, 9), 5, 7, 1 << 16),     # several batches of rows, a short last batch
])
def test_fft_conv3d_equals_conv3d(cin, cout, shape, kernel, tile, batch_bytes):
    """Every output voxel, tile edges and volume borders included, within 2e-5 of the float64
    direct convolution relative to the output's magnitude (float32 FFT rounding, ~1e-6)."""
    torch.manual_seed(cin * 7 + cout)
    x = torch.randn((1, cin) + shape).contiguous(memory_format=torch.channels_last_3d)
    weight, bias = torch.randn(cout, cin, kernel, kernel, kernel), torch.randn(cout)
    expected = F.conv3d(x.double(), weight.double(), bias.double(), padding=kernel // 2)
    got = fft_conv3d(x, kernel_spectrum(weight, tile + kernel - 1), bias, kernel, tile,
                     max_batch_bytes=batch_bytes)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last_3d)
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error < 2e-5, error


def test_fft_conv_module_follows_weight_changes_and_plain_layout():
    conv = torch.nn.Conv3d(3, 2, 5, padding=2)
    fft = FFTConv3d(conv, tile=6)
    x = torch.randn(1, 3, 10, 9, 11)  # plain (not channels-last) input
    with torch.no_grad():
        assert torch.allclose(fft(x), conv(x), atol=1e-4)
        conv.weight.mul_(-2)  # reloaded weights: the cached kernel spectrum must follow
        assert torch.allclose(fft(x), conv(x), atol=1e-4)
    with pytest.raises(ValueError, match="same"):
        FFTConv3d(torch.nn.Conv3d(3, 2, 5, padding=1), tile=6)
    with pytest.raises(ValueError, match="one input"):
        FFTConv3d([conv, torch.nn.Conv3d(4, 2, 5, padding=2)], tile=6)


def test_stacked_layers_of_one_input():
    first, second = torch.nn.Conv3d(3, 2, 5, padding=2), torch.nn.Conv3d(3, 4, 5, padding=2)
    x = torch.randn(1, 3, 11, 7, 9).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        both = FFTConv3d([first, second], tile=5)(x)
        assert torch.allclose(both[:, :2], first(x), atol=1e-4) and torch.allclose(both[:, 2:], second(x), atol=1e-4)


@pytest.mark.parametrize("cin, cout, shape, kernel, tile, batch_bytes", [
    (3, 4, (13, 17, 11), 5, 6, 1 << 30),   # odd sizes, no size a multiple of the tile
    (5, 2, (12, 12, 12), 5, 4, 1 << 30),   # sizes an exact multiple of the tile
    (2, 3, (9, 20, 7), 3, 5, 1 << 12),     # 3^3 kernel; one y-row of tiles per batch
    (4, 4, (5, 6, 7), 5, 8, 1 << 30),      # output smaller than one tile
    (6, 5, (10, 30, 9), 5, 7, 1 << 17),    # several batches of y-rows, a short last batch
])
def test_dft_conv3d_valid_equals_unpadded_conv3d(cin, cout, shape, kernel, tile, batch_bytes):
    """The matrix-product transforms: every output voxel of the unpadded convolution of a window
    within 2e-5 of float64 conv3d relative to the output's magnitude; the window's extra zeros
    past what the tiles need feed only discarded outputs."""
    torch.manual_seed(cin * 5 + cout)
    reach = [-(-(n - kernel + 1) // tile) * tile + kernel - 1 for n in shape]
    source = torch.zeros(tuple(reach) + (cin,))
    source[: shape[0], : shape[1], : shape[2]] = torch.randn(shape + (cin,))
    weight = torch.randn(cout, cin, kernel, kernel, kernel)
    x = source[: shape[0], : shape[1], : shape[2]].permute(3, 0, 1, 2)[None].double()
    expected = F.conv3d(x, weight.double())[0].permute(1, 2, 3, 0)
    window = tile + kernel - 1
    out = torch.full(expected.shape, float("nan"))
    dft_conv3d_valid(source, dft_kernel_spectrum(weight, window), dft_stages(window, tile, kernel), kernel, tile,
                     out, max_batch_bytes=batch_bytes)
    error = (out.double() - expected).abs().max() / expected.abs().max()
    assert error < 2e-5, error
    with pytest.raises(ValueError, match="smaller"):
        dft_conv3d_valid(source[:-1], dft_kernel_spectrum(weight, window), dft_stages(window, tile, kernel),
                         kernel, tile, out)


def test_dft_conv_module_equals_conv_and_follows_weight_changes():
    first, second = torch.nn.Conv3d(3, 2, 5, padding=2), torch.nn.Conv3d(3, 4, 5, padding=2)
    dft = DFTConv3d([first, second], tile=6)
    x = torch.randn(1, 3, 13, 9, 11).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        both = dft(x)
        assert both.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.allclose(both[:, :2], first(x), atol=1e-4) and torch.allclose(both[:, 2:], second(x), atol=1e-4)
        second.weight.mul_(-2)  # reloaded weights: the cached kernel spectrum must follow
        assert torch.allclose(dft(x)[:, 2:], second(x), atol=1e-4)


@pytest.mark.parametrize("module", [DFTConv3d, FFTConv3d])
def test_fourier_conv_of_a_net_built_in_inference_mode(module):
    """Layers made under torch.inference_mode hold inference tensors, which keep no version counter
    (the benchmark's oneDNN pass built its QC net that way and crashed): the module still runs,
    and a reload into new tensors still refreshes the cached spectrum."""
    with torch.inference_mode():
        conv = torch.nn.Conv3d(3, 2, 5, padding=2)
        fourier = module([conv], 6)
        x = torch.randn(1, 3, 9, 8, 7).contiguous(memory_format=torch.channels_last_3d)
        assert torch.allclose(fourier(x), conv(x), atol=1e-4)
        conv.weight = torch.nn.Parameter(conv.weight * -2, requires_grad=False)
        assert torch.allclose(fourier(x), conv(x), atol=1e-4)


@pytest.mark.parametrize("table", [
    # level 0 and level 1 by matrix-product transforms, level 1's second conv by torch.fft
    {"conv_downarm_0_1": ("matmul", 8), "conv_downarm_1_0": ("matmul", 8),
     "expand_down_merge_1": ("matmul", 8), "conv_downarm_1_1": ("fft", 8)},
    # level 0 direct (torch.fft has no level-0 path), level 1 by torch.fft; odd tiles
    {"conv_downarm_0_1": ("fft", 8), "conv_downarm_1_0": ("fft", 7), "expand_down_merge_1": ("fft", 7),
     "conv_downarm_1_1": ("matmul", 5)},
])
def test_qc_fast_path_with_fourier_layers_equals_plain_forward(monkeypatch, table):
    """With small tiles, so that several tiles and tile edges occur, the fast QC path equals the
    plain forward within 1e-5."""
    from segsuite.nets import qc

    monkeypatch.setattr(qc, "FFT_TILES", table)
    torch.manual_seed(3)
    net = qc.KerasQCNet()
    for conv in net.modules():
        if isinstance(conv, torch.nn.Conv3d):
            conv.bias.data.uniform_(-0.05, 0.05)
    labels = torch.randint(0, 9, (22, 19, 24))
    with torch.inference_mode():
        fast = net.scores(labels)
        plain = net(F.one_hot(labels, 9).permute(3, 0, 1, 2).float()[None])[0]
    assert "_fft_convs" in net.__dict__ and float(plain.abs().max()) > 1e-3
    assert torch.allclose(fast, plain, rtol=0, atol=1e-5), (fast - plain).abs().max()


def test_default_fft_table_runs_levels_zero_to_three_as_fourier_and_equals_plain_forward():
    """The shipped table (matrix-product transforms at levels 0-3, tiles 28, 14 and 4) is what the
    fast path uses, and it still equals the plain forward within 1e-5."""
    from segsuite.nets import qc

    # every 5x5x5 layer but level 0's first two (look-ups)
    assert set(qc.FFT_TILES) == {"conv_downarm_0_1"} | {name.format(level) for level in (1, 2, 3) for name in
                                                        ("conv_downarm_{}_0", "expand_down_merge_{}", "conv_downarm_{}_1")}
    torch.manual_seed(5)
    net = qc.KerasQCNet()
    labels = torch.randint(0, 9, (34, 30, 26))
    with torch.inference_mode():
        fast = net.scores(labels)
        plain = net(F.one_hot(labels, 9).permute(3, 0, 1, 2).float()[None])[0]
    convs = net.__dict__["_fft_convs"]
    assert set(convs) == {("conv_downarm_0_1",)} | {(f"conv_downarm_{level}_0", f"expand_down_merge_{level}")
                                                    for level in (1, 2, 3)} | {(f"conv_downarm_{level}_1",) for level in (1, 2, 3)}
    assert all(isinstance(conv, DFTConv3d) for conv in convs.values())
    assert float(plain.abs().max()) > 1e-3
    assert torch.allclose(fast, plain, rtol=0, atol=1e-5), (fast - plain).abs().max()
