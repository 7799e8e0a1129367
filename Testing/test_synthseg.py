"""SynthSeg engine pieces that need nothing from ../shared: loader, geometry, flips, postprocessing, CLI errors."""

from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segsuite import cli
from segsuite.errors import InputError, ModelError
from segsuite.nets.keras_h5 import load_keras_weights, read_keras_h5
from segsuite.nets.qc import KerasQCNet
from segsuite.nets.unet import KerasUNet
from segsuite.nets.upconv import conv3d_of_upsampled
from segsuite.synthseg import labels as L
from segsuite.synthseg.engine import qc_crop, reslice_nearest, resolve_weights
from segsuite.synthseg.outputs import csv_text, plan_outputs
from segsuite.synthseg.postprocess import (blur_weights, channel_argmax, gaussian_blur_, hard_labels, largest_component,
                                           postprocess_segmentation, soft_volumes)
from segsuite.synthseg.preprocess import (centre_crop_indices, pad_shape_for, pad_volume, prepare, ras_alignment,
                                          resample_to_1mm)
from synthseg_helpers import randomise_batch_norm, write_keras_h5, write_random_synthseg_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- Keras .h5 loader -----------------------------------------------------------------------------
def small_unet(**kwargs):
    return KerasUNet("unet", 1, 4, n_levels=2, n_features=2, **kwargs)


def test_loader_round_trip(tmp_path):
    source = small_unet()
    randomise_batch_norm(source)
    path = tmp_path / "w.h5"
    write_keras_h5(path, source.keras_layers())
    target = small_unet()
    load_keras_weights(target.keras_layers(), read_keras_h5(path), prefixes=["unet"])
    for name, module in source.keras_layers().items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, target.keras_layers()[name].state_dict()[key]), (name, key)
    x = torch.rand(1, 1, 8, 8, 8)
    assert torch.allclose(source(x), target(x))


def test_loader_rejects_misshaped_layer(tmp_path):
    source = small_unet()
    path = tmp_path / "bad.h5"
    write_keras_h5(path, source.keras_layers(),
                   overrides={"unet_conv_downarm_1_0": {"kernel": np.zeros((3, 3, 3, 2, 5)), "bias": np.zeros(5)}})
    with pytest.raises(ModelError, match="unet_conv_downarm_1_0"):
        load_keras_weights(small_unet().keras_layers(), read_keras_h5(path), prefixes=["unet"])


def test_loader_rejects_missing_and_extra_layers(tmp_path):
    layers = small_unet().keras_layers()
    missing = {k: v for k, v in layers.items() if k != "unet_likelihood"}
    write_keras_h5(tmp_path / "missing.h5", missing)
    with pytest.raises(ModelError, match="unet_likelihood"):
        load_keras_weights(layers, read_keras_h5(tmp_path / "missing.h5"), prefixes=["unet"])
    write_keras_h5(tmp_path / "extra.h5", layers,
                   overrides={"unet_conv_uparm_9_0": {"kernel": np.zeros((3, 3, 3, 2, 2)), "bias": np.zeros(2)}})
    with pytest.raises(ModelError, match="unet_conv_uparm_9_0"):
        load_keras_weights(layers, read_keras_h5(tmp_path / "extra.h5"), prefixes=["unet"])


def test_qc_net_layer_names_and_output():
    net = KerasQCNet()
    names = set(net.keras_layers())
    for level in range(4):
        assert {f"qc_conv_downarm_{level}_0", f"qc_conv_downarm_{level}_1", f"qc_expand_down_merge_{level}",
                f"qc_bn_down_{level}"} <= names
    assert {"qc_final_conv_0", "qc_final_conv_1"} <= names
    assert net.layers["qc_final_conv_0"].weight.shape == (9, 192, 5, 5, 5)
    with torch.inference_mode():
        out = net(F.one_hot(torch.randint(0, 9, (1, 32, 32, 32)), 9).permute(0, 4, 1, 2, 3).float())
    assert out.shape == (1, 9) and torch.all(out >= 0)


@pytest.mark.parametrize("shape, negative_scale", [((22, 19, 24), False), ((17, 16, 21), True)])
def test_qc_fast_path_equals_plain_forward(shape, negative_scale):
    """The look-up level 0, channels-last convs and pooled batch norms of ``scores`` give the
    plain layer-by-layer forward of the one-hot input, within 1e-5 (odd sizes: ceil pooling and
    the zero padding at every border)."""
    torch.manual_seed(3)
    net = KerasQCNet()
    randomise_batch_norm(net, seed=4)
    if negative_scale:  # a negative BN scale: the batch norm must run before the max-pool
        net.layers["qc_bn_down_1"].weight.data[::3] *= -1
    for conv in net.modules():
        if isinstance(conv, torch.nn.Conv3d):
            conv.bias.data.uniform_(-0.05, 0.05)
    labels = torch.randint(0, 9, shape)
    labels[: shape[0] // 3] = 0  # a uniform background region, as around a brain
    with torch.inference_mode():
        fast = net.scores(labels)
        plain = net(F.one_hot(labels, 9).permute(3, 0, 1, 2).float()[None])[0]
    assert fast.shape == (9,) and float(plain.abs().max()) > 1e-3
    assert torch.allclose(fast, plain, rtol=0, atol=1e-5), (fast - plain).abs().max()


@pytest.mark.parametrize("shape, brain", [((64, 70, 66), ((20, 45), (9, 60), (30, 41))),
                                          ((66, 64, 72), ((0, 30), (40, 64), (10, 72)))])
def test_qc_fast_path_skips_background_exactly(shape, brain):
    """Levels 0 and 1 convolve only the box the labels reach and copy the rest from a small
    all-background volume: equal to the plain forward within 1e-5, a brain box inside the volume
    and one touching its faces (where the zero padding and the brain meet)."""
    torch.manual_seed(5)
    net = KerasQCNet()
    randomise_batch_norm(net, seed=6)
    for conv in net.modules():
        if isinstance(conv, torch.nn.Conv3d):
            conv.bias.data.uniform_(-0.05, 0.05)
    labels = torch.zeros(shape, dtype=torch.int64)
    (a0, a1), (b0, b1), (c0, c1) = brain
    labels[a0:a1, b0:b1, c0:c1] = torch.randint(0, 9, (a1 - a0, b1 - b0, c1 - c0))
    assert net._label_box(labels) is not None  # the skipping path runs
    with torch.inference_mode():
        fast = net.scores(labels)
        plain = net(F.one_hot(labels, 9).permute(3, 0, 1, 2).float()[None])[0]
    assert float(plain.abs().max()) > 1e-3
    assert torch.allclose(fast, plain, rtol=0, atol=1e-5), (fast - plain).abs().max()


@pytest.mark.parametrize("region, slab", [(None, 2), (None, 5), (None, 6), (None, 64),
                                          ([(4, 20), (2, 30), (6, 26)], 6), ([(0, 10), (12, 24), (0, 26)], 4)])
def test_qc_level0_streamed_in_slabs_equals_plain_layers(region, slab):
    """Level 0 streamed along x (look-ups into a rolling window, unpadded convolution per slab,
    pooled slab by slab) equals the plain layers on the one-hot input, for any slab size, the
    whole volume (odd sizes: ceil pooling, zero padding) or a region inside it (even bounds)."""
    torch.manual_seed(7)
    net = KerasQCNet()
    randomise_batch_norm(net, seed=8)
    layers = net.layers
    labels = torch.randint(0, 9, (37, 30, 26))
    shape = labels.shape
    region = region or [(0, n) for n in shape]
    with torch.inference_mode():
        onehot = F.one_hot(labels, 9).permute(3, 0, 1, 2).float()[None]
        h = layers["qc_conv_downarm_0_1"](F.relu(layers["qc_conv_downarm_0_0"](onehot)))
        plain = F.max_pool3d(layers["qc_bn_down_0"](F.relu(h + F.relu(layers["qc_expand_down_merge_0"](onehot)))),
                             2, ceil_mode=True)
        plain = plain[(slice(None), slice(None)) + tuple(slice(lo // 2, -(-hi // 2)) for lo, hi in region)]
        streamed = net._level0_pooled(labels, region, slab=slab)
    assert streamed.shape == plain.shape and float(plain.abs().max()) > 1e-3
    assert torch.allclose(streamed, plain, rtol=0, atol=1e-5), (streamed - plain).abs().max()


def test_qc_box_covering_most_of_the_window_takes_the_plain_path():
    net = KerasQCNet()
    labels = torch.zeros((64, 64, 64), dtype=torch.int64)
    labels[2:62, 3:60, 1:63] = 1
    assert net._label_box(labels) is None
    labels[:] = 0
    labels[10:40, 10:40, 10:40] = 1
    assert net._label_box(labels) == [(10, 40)] * 3


def test_resolve_weights_folder_and_file(tmp_path):
    (tmp_path / "synthseg_2.0.h5").write_bytes(b"x")
    (tmp_path / "synthseg_qc_2.0.h5").write_bytes(b"x")
    assert resolve_weights(tmp_path, "synthseg-2.0", True) == tmp_path / "synthseg_2.0.h5"
    # an explicit segmentation file: companions are looked for beside it
    assert resolve_weights(tmp_path / "synthseg_2.0.h5", "synthseg-qc-2.0", False) == tmp_path / "synthseg_qc_2.0.h5"
    with pytest.raises(ModelError, match="synthseg_parc_2.0.h5"):
        resolve_weights(tmp_path, "synthseg-parc-2.0", False)


# ---- fast exact convolutions ------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [3, 5])
def test_conv_of_upsampled_equals_upsample_then_conv(kernel):
    x = torch.randn(1, 5, 5, 6, 3, dtype=torch.float64)
    weight = torch.randn(4, 5, kernel, kernel, kernel, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    expected = F.conv3d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=kernel // 2)
    assert torch.allclose(conv3d_of_upsampled(x, weight, bias), expected, atol=1e-10)


def test_unet_with_partial_skips_matches_naive_graph():
    net = KerasUNet("l2l", 2, 3, n_levels=3, n_features=4, kernel_size=5, n_skip_levels=1)
    randomise_batch_norm(net)
    x = torch.rand(1, 2, 12, 8, 16)
    layers = net.layers
    with torch.inference_mode():
        h = x
        skips = []
        for level in range(3):
            for c in range(2):
                h = F.elu(layers[f"l2l_conv_downarm_{level}_{c}"](h))
            skips.append(h)
            h = layers[f"l2l_bn_down_{level}"](h)
            if level < 2:
                h = F.max_pool3d(h, 2)
        for step in range(2):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            skip = skips[1 - step]
            if step < 1:
                h = torch.cat([skip, h], 1)
            for c in range(2):
                h = F.elu(layers[f"l2l_conv_uparm_{3 + step}_{c}"](h))
            h = layers[f"l2l_bn_up_{step}"](h)
        expected = torch.softmax(layers["l2l_likelihood"](h), 1)
        assert torch.allclose(net(x), expected, atol=1e-5)


@pytest.mark.parametrize("prefix, channels, options, shape", [
    ("unet", 1, dict(n_levels=3, n_features=3), (24, 16, 8)),  # one input channel (oneDNN's 2-channel trick)
    ("l2l", 3, dict(n_levels=3, n_features=4, kernel_size=5, n_skip_levels=1), (16, 8, 12)),  # no skip at level 0
    ("unet2", 4, dict(n_levels=2, n_features=3), (12, 8, 8)),
    ("deep", 2, dict(n_levels=3, n_features=2, n_conv_per_level=3), (20, 8, 8)),  # two convs after the merge
    ("single", 2, dict(n_levels=2, n_features=2, n_conv_per_level=1), (20, 8, 8)),  # none after the merge
])
def test_unet_level0_slabs_equal_the_whole_volume_forward(prefix, channels, options, shape):
    net = KerasUNet(prefix, channels, 3, **options)
    randomise_batch_norm(net)
    x = torch.rand((1, channels) + shape)
    with torch.inference_mode():
        expected = net.features(x)
        assert expected.abs().mean() > 0.01
        for slab in (1, 2, 3, 6, 7, 100):  # odd sizes round up to even; the last slab may be shorter
            slabs = list(net.feature_slabs(x, slab))
            starts = [start for start, _, _ in slabs]
            assert starts[0] == 0 and slabs[-1][1] == shape[0]
            assert all(stop == following for (_, stop, _), following in zip(slabs, starts[1:]))
            found = torch.cat([block for _, _, block in slabs], 2)
            assert found.shape == expected.shape
            assert torch.allclose(found, expected, atol=1e-5), f"slab {slab}"


@pytest.mark.parametrize("tile", [3, 4, 7])
def test_unet_with_fourier_layers_equals_the_direct_one(tile):
    """Every plain 5x5x5 convolution as a tiled Fourier convolution (small tiles: several per slab,
    partial tiles at the edges): the whole-volume and the slab-by-slab features equal those of
    the same weights run directly within 1e-5."""
    options = dict(n_levels=3, n_features=4, kernel_size=5, n_skip_levels=1)
    direct = KerasUNet("l2l", 3, 3, **options)
    randomise_batch_norm(direct)
    names = [name for name, layer in direct.layers.items() if isinstance(layer, torch.nn.Conv3d)
             and layer.kernel_size == (5, 5, 5) and not ("uparm" in name and name.endswith("_0"))]  # merges stay
    fourier = KerasUNet("l2l", 3, 3, fourier_tiles={name: tile for name in names}, **options)
    fourier.load_state_dict(direct.state_dict())
    x = torch.rand((1, 3, 16, 12, 8))
    with torch.inference_mode():
        expected = direct.features(x)
        assert expected.abs().mean() > 0.01
        assert torch.allclose(fourier.features(x), expected, atol=1e-5)
        for slab in (4, 10):
            found = torch.cat([block for _, _, block in fourier.feature_slabs(x, slab)], 2)
            assert torch.allclose(found, expected, atol=1e-5), f"slab {slab}"
    assert set(fourier.__dict__["_fourier_convs"]) == set(names)


def test_row_window_pads_with_zero_rows_outside_the_volume():
    from segsuite.nets.upconv import row_window

    x = (torch.arange(5.0) + 1).view(1, 1, 5, 1, 1)
    windows = {(-2, 3): [0, 0, 1, 2, 3], (-3, -1): [0, 0], (6, 8): [0, 0], (3, 7): [4, 5, 0, 0], (1, 4): [2, 3, 4]}
    for (start, stop), values in windows.items():
        assert row_window(x, start, stop).flatten().tolist() == values


@pytest.mark.parametrize("kernel", [3, 5])
def test_conv_of_upsampled_rows_equal_the_rows_of_the_whole_result(kernel):
    x = torch.randn(1, 3, 6, 4, 5, dtype=torch.float64)
    weight = torch.randn(2, 3, kernel, kernel, kernel, dtype=torch.float64)
    whole = conv3d_of_upsampled(x, weight)
    for rows in [(0, 2), (1, 4), (5, 6), (-1, 2), (4, 7)]:
        part = conv3d_of_upsampled(x, weight, rows=rows)
        inside = slice(max(2 * rows[0], 0), min(2 * rows[1], 12))
        offset = inside.start - 2 * rows[0]
        assert torch.allclose(part[:, :, offset:offset + inside.stop - inside.start], whole[:, :, inside], atol=1e-10)


# ---- geometry -----------------------------------------------------------------------------------------
def test_resample_2mm_to_1mm_keeps_world_position():
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    data = np.random.default_rng(0).random((10, 12, 8))
    volume, new_affine = resample_to_1mm(data, affine)
    assert volume.shape == (20, 24, 24)
    assert np.allclose(np.linalg.norm(new_affine[:3, :3], axis=0), 1)
    # the first input voxel's corner is the first output voxel's corner
    assert np.allclose(affine @ [-0.5, -0.5, -0.5, 1], new_affine @ [-0.5, -0.5, -0.5, 1])
    constant, _ = resample_to_1mm(np.full((6, 6, 6), 7.0), affine)
    assert np.allclose(constant, 7.0)


def test_resample_down_blurs_and_shrinks():
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    volume, new_affine = resample_to_1mm(np.random.default_rng(1).random((20, 21, 22)), affine)
    assert volume.shape == (10, 11, 11)
    assert np.allclose(np.diag(new_affine)[:3], 1)


@pytest.mark.parametrize("voxel, resampled", [(1.0, False), (1.04, False), (0.96, False), (1.06, True), (0.94, True)])
def test_resolution_tolerance(voxel, resampled):
    data = np.random.default_rng(2).random((40, 40, 40)) + 1
    prepared = prepare((data, np.diag([voxel, 1, 1, 1])))
    assert (prepared.resampled is not None) == resampled
    assert prepared.resolution[0] == pytest.approx(1.0 if resampled else voxel)


def test_padding_and_cropping_shapes():
    assert list(pad_shape_for((100, 129, 160), (128, 128, 128))) == [128, 160, 160]
    assert list(pad_shape_for((30, 30, 30), (160, 160, 160))) == [160, 160, 160]
    padded, pad_idx = pad_volume(np.ones((3, 4, 5), dtype=np.float32), (6, 4, 8))
    assert padded.shape == (6, 4, 8)
    assert list(pad_idx) == [1, 0, 1, 4, 4, 6]  # floor of the margin before, ceil after
    assert padded.sum() == 60 and padded[1:4, :, 1:6].all()
    same, idx = pad_volume(np.ones((32, 32, 32)), (32, 32, 32))
    assert same.shape == (32, 32, 32) and list(idx) == [0, 0, 0, 32, 32, 32]
    # crop sizes round up to multiples of 32; a crop larger than the image keeps the axis
    assert list(centre_crop_indices((200, 100, 170), (150, 150, 160))) == [20, 0, 5, 180, 100, 165]


def test_prepare_pads_rescales_and_aligns():
    rng = np.random.default_rng(3)
    data = rng.random((50, 70, 40)) * 100
    affine = np.array([[0, 0, -1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    prepared = prepare((data, affine))
    assert prepared.image.dtype == np.float32
    assert prepared.image.shape == (128, 128, 128)
    assert prepared.image.min() == 0 and prepared.image.max() == 1
    assert prepared.aligned_shape == (40, 50, 70)
    back = prepared.alignment.undo(prepared.alignment.apply(data))
    assert np.array_equal(back, data)


def test_alignment_brings_any_orientation_to_ras():
    rng = np.random.default_rng(4)
    for _ in range(10):
        perm = rng.permutation(3)
        signs = rng.choice([-1, 1], 3)
        affine = np.eye(4)
        affine[:3, :3] = np.eye(3)[:, perm] * signs
        alignment = ras_alignment(affine)
        data = rng.random((4, 5, 6))
        aligned = alignment.apply(data)
        # voxel (0, 0, 0) of the aligned array is the most right-posterior-inferior... i.e. minimal RAS
        corners = np.array([[i, j, k, 1] for i in (0, 3) for j in (0, 4) for k in (0, 5)])
        world = (affine @ corners.T)[:3]
        lowest = corners[np.argmin(world.sum(axis=0))][:3]
        assert aligned[0, 0, 0] == data[tuple(lowest)]
        assert np.array_equal(alignment.undo(aligned), data)


def test_reslice_nearest_identity_and_shift():
    labels = np.arange(27, dtype=np.int32).reshape(3, 3, 3)
    assert reslice_nearest(labels, np.eye(4), (3, 3, 3), np.eye(4)) is labels
    shifted = np.eye(4)
    shifted[0, 3] = 1
    out = reslice_nearest(labels, np.eye(4), (3, 3, 3), shifted)
    assert np.array_equal(out[:2], labels[1:]) and not out[2].any()


# ---- labels ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v1", [False, True])
def test_flip_indices_swap_left_and_right(v1):
    labels = L.segmentation_labels(v1)
    flip = L.flip_indices(labels)
    assert np.array_equal(flip[flip], np.arange(len(labels)))  # an involution
    for left, right in L.LEFT_RIGHT.items():
        assert labels[flip[list(labels).index(left)]] == right
    for neutral in (0, 14, 15, 16):
        index = list(labels).index(neutral)
        assert flip[index] == index
    assert len(labels) == (32 if v1 else 33)


def test_volume_and_qc_names():
    names = L.volume_names(L.segmentation_labels(), parcellation=True)
    assert names[0] == "total intracranial" and names[1] == "left cerebral white matter"
    assert len(names) == 1 + 32 + 68 and names[-1] == "ctx-rh-insula"
    assert L.volume_names(L.segmentation_labels(True), v1=True)[0] == "left cerebral white matter"
    assert L.qc_groups(L.segmentation_labels()).max() == 8


# ---- postprocessing ---------------------------------------------------------------------------------------
def test_blur_equals_3d_kernel():
    weights = blur_weights(0.5)
    assert np.allclose(weights, [0.106507, 0.786986, 0.106507], atol=1e-6)
    kernel = torch.from_numpy(np.einsum("i,j,k->ijk", weights, weights, weights)).float()
    x = torch.rand(2, 7, 6, 5)
    expected = F.conv3d(x[:, None], kernel[None, None], padding=1)[:, 0]
    assert torch.allclose(gaussian_blur_(x.clone()), expected, atol=1e-6)
    # a non-contiguous tensor is blurred in place as a whole (no per-channel view exists)
    strided = x.clone().transpose(1, 3)
    assert torch.allclose(gaussian_blur_(strided), expected.transpose(1, 3), atol=1e-6)


def synthetic_posteriors():
    labels = L.segmentation_labels()
    post = np.zeros((len(labels), 20, 20, 20), dtype=np.float32)
    post[0] = 1
    big = (slice(2, 10), slice(2, 10), slice(2, 10))
    small = (slice(14, 16), slice(14, 16), slice(14, 16))
    brain = (slice(1, 18), slice(1, 18), slice(1, 18))
    post[0][brain] = 0
    post[1][brain] = 1  # left white matter everywhere in the brain...
    hippo = list(labels).index(17)
    for region in (big, small):  # ...except two hippocampus blobs
        post[1][region] = 0.3
        post[hippo][region] = 0.7
    return labels, post, big, small, hippo


def test_topology_keeps_largest_component_per_class():
    labels, post, big, small, hippo = synthetic_posteriors()
    pad_idx = np.array([0, 0, 0, 20, 20, 20])
    out = postprocess_segmentation(post.copy(), pad_idx, fast=False, topology=L.topology_classes(labels))
    assert np.all(out[hippo][big] > 0.69)
    assert np.all(out[hippo][small] == 0)  # the smaller blob of the same class is removed
    assert np.allclose(out.sum(axis=0), 1)
    seg = labels[np.argmax(out, axis=0)]
    assert np.all(seg[small] == 2) and np.all(seg[big] == 17)


def test_topology_cleaning_on_threads_equals_the_serial_result():
    """Every class's mask is taken before any channel is zeroed, whatever the number of threads."""
    labels = L.segmentation_labels()
    topology = L.topology_classes(labels)
    rng = np.random.default_rng(3)
    post = rng.random((len(labels), 24, 24, 24)).astype(np.float32) ** 4  # many small blobs per class
    post /= post.sum(axis=0)
    pad_idx = np.array([0, 0, 0, 24, 24, 24])
    serial = postprocess_segmentation(post.copy(), pad_idx, fast=False, topology=topology, workers=1)
    threaded = postprocess_segmentation(post.copy(), pad_idx, fast=False, topology=topology, workers=4)
    assert np.array_equal(serial, threaded)
    assert (serial == 0).mean() > (post == 0).mean() + 0.1  # the cleaning removed something


def test_fast_postprocessing_thresholds_and_keeps_both_blobs():
    labels, post, big, small, hippo = synthetic_posteriors()
    post[3][2:4, 2:4, 2:4] = 0.1  # below 0.2: removed in fast mode
    pad_idx = np.array([0, 0, 0, 20, 20, 20])
    out = postprocess_segmentation(post.copy(), pad_idx, fast=True, topology=None)
    assert np.all(out[hippo][small] > 0.6)
    assert np.all(out[3] == 0)


def test_global_component_removes_detached_structures():
    labels, post, *_ = synthetic_posteriors()
    post[0][19, 19, 19] = 0
    post[5][19, 19, 19] = 1  # an isolated voxel away from the brain
    out = postprocess_segmentation(post, np.array([0, 0, 0, 20, 20, 20]), fast=True, topology=None)
    assert out[5][19, 19, 19] == 0 and out[0][19, 19, 19] == 1


def test_largest_component_of_empty_mask():
    mask = np.zeros((4, 4, 4), dtype=bool)
    assert not largest_component(mask).any()


def test_largest_component_matches_labelling_the_whole_volume():
    from scipy.ndimage import label

    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = np.zeros((30, 25, 20), dtype=bool)
        mask[5:28, 3:24, 2:19] = rng.random((23, 21, 17)) > 0.6  # many components, off-origin box
        components, _ = label(mask)
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        expected = components == np.argmax(sizes)
        result = largest_component(mask)
        assert result.shape == mask.shape and result.any()
        assert np.array_equal(result, expected)


def test_hard_labels_take_the_first_maximum_like_numpy():
    rng = np.random.default_rng(4)
    posteriors = rng.integers(0, 3, size=(6, 5, 4, 3)).astype(np.float32)  # many ties
    labels = np.array([0, 2, 3, 4, 17, 53])
    expected = labels[np.argmax(posteriors, axis=0)]
    assert np.array_equal(hard_labels(posteriors, labels), expected)
    # a strided view (the un-padded window of the padded posteriors) gives the same
    view = posteriors[:, 1:4, ::2]
    assert np.array_equal(hard_labels(view, labels), labels[np.argmax(view, axis=0)])


@pytest.mark.parametrize("block", [1, 7, 40, 1 << 18])
def test_channel_argmax_equals_torch_and_numpy_argmax(block):
    rng = np.random.default_rng(5)
    # few distinct values: ties everywhere, channel 0 among them
    values = rng.integers(0, 4, size=(33, 9, 6, 5)).astype(np.float32)
    expected = np.argmax(values, axis=0)
    for source in (values, torch.from_numpy(values), values[:, 2:8, ::2, 1:], torch.from_numpy(values).flip(1)):
        reference = torch.as_tensor(np.ascontiguousarray(np.asarray(source))).argmax(0).numpy()
        found = channel_argmax(source, block=block)
        assert found.dtype == torch.int64 and tuple(found.shape) == tuple(source.shape[1:])
        assert np.array_equal(found.numpy(), reference)
    assert np.array_equal(channel_argmax(values, block=block).numpy(), expected)
    # continuous values (SynthSeg's posteriors) and a single channel
    smooth = rng.random((5, 4, 3, 2), dtype=np.float32)
    assert np.array_equal(channel_argmax(smooth, block=block).numpy(), np.argmax(smooth, axis=0))
    assert not channel_argmax(smooth[:1], block=block).numpy().any()


def test_volumes_total_and_parcellation_scaled_to_cortex():
    labels = L.segmentation_labels()
    sums = np.arange(len(labels), dtype=float)
    volumes = soft_volumes(sums, labels, 2.0, v1=False)
    assert volumes[0] == pytest.approx(2 * sums[1:].sum())
    parc = np.ones(69)
    volumes = soft_volumes(sums, labels, 1.0, v1=False, parcellation_sums=parc)
    cortex = sums[list(labels).index(3)] + sums[list(labels).index(42)]
    assert volumes[33:].sum() == pytest.approx(cortex, abs=0.05)


def test_qc_crop_centres_the_brain():
    argmax = np.zeros((192, 240, 200), dtype=np.int64)
    argmax[50:100, 60:200, 20:40] = 5
    argmax[0:5, 0:5, 0:5] = L.QC_EXCLUDED_INDEX  # ignored when placing the window
    crop = qc_crop(argmax, 224, L.QC_EXCLUDED_INDEX)
    assert crop.shape == (224, 224, 224)
    assert (crop == 5).sum() == (argmax == 5).sum()
    where = np.argwhere(crop == 5)
    centre = (where.min(0) + where.max(0) + 1) / 2
    assert np.all(np.abs(centre - 112) <= 1)
    empty = qc_crop(np.zeros((100, 100, 100), dtype=np.int64), 224, L.QC_EXCLUDED_INDEX)
    assert empty.shape == (224, 224, 224)


# ---- output planning and CSVs ----------------------------------------------------------------------------
def test_plan_outputs_for_file_folder_and_list(tmp_path):
    image = tmp_path / "sub.nii.gz"
    image.write_bytes(b"")
    plan = plan_outputs(str(image), {"seg": str(tmp_path / "out"), "post": str(tmp_path / "p.nii.gz"),
                                     "vol": str(tmp_path / "v")})
    assert plan.jobs[0].outputs["seg"].endswith(os.path.join("out", "sub_synthseg.nii.gz"))
    assert plan.shared_csv["vol"].endswith("v.csv")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.mgz", "a.nii", "c.txt"):
        (folder / name).write_bytes(b"")
    plan = plan_outputs(str(folder), {"seg": str(tmp_path / "o"), "resample": str(tmp_path / "r")})
    assert [os.path.basename(j.outputs["seg"]) for j in plan.jobs] == ["a_synthseg.nii", "b_synthseg.mgz"]
    assert os.path.basename(plan.jobs[1].outputs["resample"]) == "b_resampled.mgz"
    listing = tmp_path / "in.txt"
    listing.write_text(f"{folder / 'a.nii'}\n\n{folder / 'b.mgz'}\n")
    outs = tmp_path / "out.txt"
    outs.write_text("x.nii.gz\ny.nii.gz\n")
    plan = plan_outputs(str(listing), {"seg": str(outs)})
    assert [os.path.basename(j.outputs["seg"]) for j in plan.jobs] == ["x.nii.gz", "y.nii.gz"]


def test_csv_text_layout():
    assert csv_text(["a", "b"], [["s", "1.0", "2.5"]], shared=True) == "subject,a,b\r\ns,1.0,2.5\r\n"
    assert csv_text(["a"], [["s", "1.0"]], shared=False) == ",a\r\ns,1.0\r\n"


# ---- command line: bad inputs give a clear error and no output ------------------------------------------
@pytest.fixture(scope="session")
def random_synthseg_model(tmp_path_factory):
    """A synthseg_2.0.h5 with random weights in the Keras layout (no download, nothing from ../shared)."""
    return write_random_synthseg_model(tmp_path_factory.mktemp("synthseg_model"))


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize("case", ["not_an_image", "2d", "4d", "nan", "zeros"])
def test_cli_rejects_bad_input_without_outputs(tmp_path, random_synthseg_model, capsys, case):
    path = tmp_path / "in.nii.gz"
    if case == "not_an_image":
        path.write_bytes(b"definitely not a NIfTI file")
    elif case == "2d":
        _save(path, np.ones((30, 30), dtype=np.float32))
    elif case == "4d":
        _save(path, np.random.default_rng(0).random((20, 20, 20, 3)).astype(np.float32))
    elif case == "nan":
        data = np.ones((20, 20, 20), dtype=np.float32)
        data[3, 3, 3] = np.nan
        _save(path, data)
    else:
        _save(path, np.zeros((20, 20, 20), dtype=np.float32))
    out = tmp_path / "out"
    status = cli.main(["--progress", "none", "synthseg", "--i", str(path), "--o", str(out / "seg.nii.gz"),
                       "--vol", str(out / "vol.csv"), "--model", str(random_synthseg_model), "--cpu"])
    error = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in error and "error:" in error
    assert not out.exists() or not any(out.iterdir())


def test_cli_refuses_existing_output_and_wrong_flag_combination(tmp_path, random_synthseg_model, capsys):
    path = _save(tmp_path / "in.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    existing = tmp_path / "seg.nii.gz"
    existing.write_bytes(b"keep")
    assert cli.main(["--progress", "none", "synthseg", "--i", str(path), "--o", str(existing),
                     "--model", str(random_synthseg_model)]) == 1
    assert existing.read_bytes() == b"keep"
    assert cli.main(["--progress", "none", "synthseg", "--i", str(path), "--o", str(tmp_path / "x.nii.gz"),
                     "--robust", "--v1"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_v1_runs_end_to_end_with_its_own_label_set_and_csv(tmp_path):
    """--v1: the 1.0 network (32 labels, no total intracranial volume) from synthseg_1.0.h5."""
    folder = tmp_path / "models"
    folder.mkdir()
    torch.manual_seed(1)
    net = KerasUNet("unet", 1, 32)
    randomise_batch_norm(net)
    write_keras_h5(folder / "synthseg_1.0.h5", net.keras_layers())
    yy, xx, zz = np.mgrid[:24, :26, :22]
    image = (((xx - 13) ** 2 + (yy - 12) ** 2 + (zz - 11) ** 2) < 80).astype(np.float32) * 100
    path = _save(tmp_path / "in.nii.gz", image + np.random.default_rng(0).random(image.shape).astype(np.float32))
    out = tmp_path / "out"
    assert cli.main(["--progress", "none", "synthseg", "--i", str(path), "--o", str(out / "seg.nii.gz"),
                     "--vol", str(out / "vol.csv"), "--v1", "--model", str(folder), "--cpu", "--threads", "1"]) == 0
    labels = L.segmentation_labels(True)
    segmentation = np.asarray(nib.load(str(out / "seg.nii.gz")).dataobj)
    assert segmentation.shape == image.shape
    assert set(np.unique(segmentation)) <= set(int(v) for v in labels)
    rows = list(csv.reader(open(out / "vol.csv")))
    assert rows[0][1:] == L.volume_names(labels, v1=True)
    assert "total intracranial" not in rows[0] and len(rows[0]) == 1 + len(labels) - 1
    assert rows[1][0] == "in" and all(float(v) >= 0 for v in rows[1][1:])


def test_engine_rejects_bad_arrays(random_synthseg_model):
    from segsuite.synthseg import SynthSegEngine

    engine = SynthSegEngine(model=random_synthseg_model, fast=True, device="cpu", threads=1)
    with pytest.raises(InputError, match="NaN or infinite"):
        engine.segment((np.full((20, 20, 20), np.inf), np.eye(4)))
    with pytest.raises(InputError, match="2D"):
        engine.segment((np.ones((20, 20)), np.eye(4)))
    with pytest.raises(InputError, match="empty"):
        engine.segment((np.zeros((20, 20, 20)), np.eye(4)))


def test_slabwise_softmax_and_flip_accumulation_match_whole_volume():
    from segsuite.synthseg.engine import SynthSegEngine

    engine = object.__new__(SynthSegEngine)  # only the helper is exercised; no weights needed
    net = KerasUNet("unet", 1, 5, n_levels=2, n_features=3)
    randomise_batch_norm(net)
    flip = np.array([0, 2, 1, 4, 3])
    x = torch.rand(1, 1, 20, 8, 12)
    with torch.inference_mode():
        expected = net(x)[0]
        flipped = net(torch.flip(x, dims=[2]))[0]
        expected_sum = expected + torch.flip(flipped[torch.from_numpy(flip)], dims=[1])
        out = engine._softmax_into(net, x, slab=3)
        assert out.is_contiguous() and torch.allclose(out, expected, atol=1e-6)
        engine._softmax_into(net, torch.flip(x, dims=[2]), out=out, flip_channels=flip, slab=7)
        assert torch.allclose(out, expected_sum, atol=1e-6)


def test_slabwise_argmax_and_one_hot_match_whole_volume():
    from segsuite.synthseg.engine import SynthSegEngine

    engine = object.__new__(SynthSegEngine)
    net = KerasUNet("l2l", 4, 4, n_levels=2, n_features=3, kernel_size=5, n_skip_levels=1)
    randomise_batch_norm(net)
    groups = torch.randint(0, 4, (12, 8, 8))
    with torch.inference_mode():
        onehot = engine._one_hot(groups, 4)
        assert onehot.shape == (1, 4, 12, 8, 8) and torch.equal(onehot.argmax(1)[0], groups)
        assert torch.equal(onehot, F.one_hot(groups, 4).permute(3, 0, 1, 2)[None].float())
        image = torch.rand((1, 1) + tuple(groups.shape))
        both = engine._one_hot(groups, 4, image=image)  # unet2's input: the image, then the one-hot
        assert both.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(both, torch.cat([image, onehot], 1))
        expected = net.logits(onehot).argmax(1)[0]
        assert torch.equal(engine._argmax(net, onehot, slab=5), expected)


def test_float32_channel_sums_equal_numpy_on_the_reference_layout():
    from segsuite.synthseg.postprocess import channel_sums
    from segsuite.synthseg.preprocess import Alignment

    rng = np.random.default_rng(5)
    posteriors = rng.random((7, 30, 40, 50)).astype(np.float32)
    alignment = Alignment(axes=(2, 0, 1), flips=(True, False, True))
    reference_layout = alignment.undo(np.ascontiguousarray(np.moveaxis(posteriors, 0, -1)))
    expected = np.sum(reference_layout, axis=(0, 1, 2))  # what SynthSeg computes (float32)
    for workers in (1, 3):
        assert np.array_equal(channel_sums(posteriors, float32=True, orient=alignment.undo, workers=workers),
                              expected)
        exact = channel_sums(posteriors, float32=False, workers=workers)
        assert exact.dtype == np.float64
        assert np.allclose(exact, posteriors.astype(np.float64).sum(axis=(1, 2, 3)))


@pytest.mark.slow
def test_cli_folder_and_list_inputs_end_to_end(tmp_path, random_synthseg_model):
    """Two small images through the real pipeline (random weights): output names, CSV rows, API parity."""
    from segsuite.synthseg import SynthSegEngine

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm: exercises the resampling to 1 mm
    for name in ("b.nii.gz", "a.nii.gz"):
        data = np.zeros((40, 44, 40), dtype=np.float32)
        data[8:32, 8:36, 8:32] = rng.random((24, 28, 24)) * 100 + 50
        _save(folder / name, data, affine)
    out = tmp_path / "out"
    status = cli.main(["--progress", "none", "synthseg", "--i", str(folder), "--o", str(out), "--fast",
                       "--vol", str(out / "vol"), "--post", str(out), "--resample", str(out), "--keepgeom",
                       "--model", str(random_synthseg_model), "--cpu", "--threads", "2"])
    assert status == 0
    rows = (out / "vol.csv").read_text().splitlines()
    assert rows[0].startswith("subject,total intracranial,left cerebral white matter")
    assert [row.split(",")[0] for row in rows[1:]] == ["a", "b"]
    for stem in ("a", "b"):
        seg = nib.load(out / f"{stem}_synthseg.nii.gz")
        assert seg.shape == (40, 44, 40) and np.allclose(seg.affine, affine)  # --keepgeom: input grid
        post = nib.load(out / f"{stem}_posteriors.nii.gz")
        assert post.shape == (80, 88, 80, 33)
        assert nib.load(out / f"{stem}_resampled.nii.gz").shape == (80, 88, 80)
    # the Python API on an (array, affine) pair gives the CSV's numbers
    engine = SynthSegEngine(model=random_synthseg_model, fast=True, device="cpu", threads=2)
    image = nib.load(folder / "a.nii.gz")
    result = engine.segment((np.asarray(image.dataobj), image.affine))
    first = rows[1].split(",")[1:]
    assert np.allclose([float(v) for v in first], list(result.volumes.values()), rtol=1e-5, atol=1e-3)
    assert result.labels.shape == (80, 88, 80) and result.label_table.name(17) == "Left-Hippocampus"


def test_ct_clipping_before_rescaling():
    from segsuite.synthseg.preprocess import rescale_intensities

    data = np.linspace(-1000, 3000, 40 ** 3).reshape(40, 40, 40)
    ct = rescale_intensities(data, ct=True)
    assert ct.min() == 0 and ct.max() == 1
    # everything above 80 HU (and above the 99.5th percentile of the clipped image) maps to 1
    assert np.all(ct[data >= 80] == 1) and np.all(ct[data <= 0] == 0)
    assert not np.array_equal(ct, rescale_intensities(data, ct=False))


def test_networks_run_without_tf32(random_synthseg_model, monkeypatch):
    """On a GPU, cuDNN's default TF32 moved 0.16% of the labels; the networks must run in IEEE float32."""
    from precision_helpers import ieee_state, record_tf32_state_in_networks, tf32_state

    from segsuite.synthseg import SynthSegEngine

    seen = record_tf32_state_in_networks(monkeypatch)
    engine = SynthSegEngine(model=random_synthseg_model, fast=True, device="cpu", threads=1)
    before = tf32_state()
    rng = np.random.default_rng(0)
    engine.segment((rng.random((24, 24, 24)).astype(np.float32), np.eye(4)))
    assert seen and all(state == ieee_state() for state in seen)
    assert tf32_state() == before


@pytest.mark.slow
def test_cli_morphometry_commits_with_the_segmentation(tmp_path_factory, tmp_path):
    """synthseg --morphometry: the morphometry of the engine's own result, written with the labels; an
    existing morphometry output stops the run before the network, and nothing is written."""
    from segsuite.morphometry.subject import compute_morphometry, output_paths, table_text
    from segsuite.synthseg import SynthSegEngine

    # channel 1 is left cerebral white matter: a brain to measure
    random_synthseg_model = write_random_synthseg_model(tmp_path_factory.mktemp("wm_model"), winning_channel=1)
    rng = np.random.default_rng(1)
    data = np.zeros((40, 44, 40), dtype=np.float32)
    data[8:32, 8:36, 8:32] = rng.random((24, 28, 24)) * 100 + 50
    image = tmp_path / "t1.nii.gz"
    _save(image, data, np.diag([2.0, 2.0, 2.0, 1.0]))
    out, morph = tmp_path / "out", tmp_path / "morph"
    common = ["--progress", "none", "synthseg", "--i", str(image), "--fast", "--model", str(random_synthseg_model),
              "--cpu", "--threads", "2", "--morphometry", str(morph)]
    assert cli.main(common + ["--o", str(out / "t1_synthseg.nii.gz")]) == 0
    paths = output_paths(str(morph), "t1")
    written = {kind for kind, path in paths.items() if os.path.exists(path)}
    assert written >= set(paths) - {"mosaic"}
    engine = SynthSegEngine(model=random_synthseg_model, fast=True, posteriors=True, device="cpu", threads=2)
    direct = compute_morphometry(str(image), engine.segment(str(image)))
    with open(paths["table"]) as handle:
        assert handle.read() == table_text([direct.table_row()])
    assert np.allclose(nib.load(paths["probseg_GM"]).get_fdata(), direct.tissue_maps["GM"], atol=1e-6)

    # a second run into a new segmentation folder, the morphometry already there: refused up front
    again = tmp_path / "again"
    assert cli.main(common + ["--o", str(again / "t1_synthseg.nii.gz")]) == 1
    assert not again.exists() or not any(again.iterdir())
