"""A tiny nnU-Net v2 model folder with random weights, for tests and benchmarks.

It has the layout of the sc_epi release (``nnUNetTrainer__nnUNetPlans__3d_fullres/`` with
dataset.json, plans.json and ``fold_all/checkpoint_final.pth``) but a network small enough
to build in a test fixture (a 2-stage PlainConvUNet with features [4, 8] is ~21 KB).
Nothing here is used at run time by the engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _arch_kwargs(n_stages: int, features: Sequence[int], kernel: Sequence[int], strides: Sequence[Sequence[int]]) -> dict:
    return {
        "n_stages": n_stages,
        "features_per_stage": list(features),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [list(kernel)] * n_stages,
        "strides": [list(s) for s in strides],
        "n_conv_per_stage": [1] * n_stages,
        "n_conv_per_stage_decoder": [1] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def build_tiny_model(folder: str | os.PathLike,
                     labels: Optional[dict] = None,
                     patch_size: Sequence[int] = (8, 32, 32),
                     spacing: Sequence[float] = (5.0, 1.0, 1.0),
                     features: Sequence[int] = (4, 8),
                     strides: Optional[Sequence[Sequence[int]]] = None,
                     image_orientation: Optional[str] = None,
                     foreground_fraction: float = 0.3,
                     seed: int = 0,
                     checkpoint_name: str = "checkpoint_final.pth",
                     fold: str = "all") -> Path:
    """Write a model folder under ``folder``; returns ``folder`` (which holds the trainer folder).

    spacing and patch_size are in nnU-Net's (z, y, x) order. The weights are random but the
    segmentation head's bias is set so that about ``foreground_fraction`` of the voxels of a
    z-scored noise image become foreground, so outputs are neither empty nor full.
    """
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    labels = dict(labels or {"background": 0, "sc": 1})
    n_stages = len(features)
    if strides is None:
        strides = [[1, 1, 1]] + [[1, 2, 2]] * (n_stages - 1)
    arch = _arch_kwargs(n_stages, features, (3, 3, 3), strides)

    root = Path(folder)
    trainer = root / TRAINER_FOLDER
    (trainer / f"fold_{fold}").mkdir(parents=True, exist_ok=True)

    dataset = {"channel_names": {"0": "bold"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    if image_orientation:
        dataset["image_orientation"] = image_orientation
    (trainer / "dataset.json").write_text(json.dumps(dataset, indent=2))

    resampling_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": "Dataset999_TinyScEpi",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(map(float, spacing)),
        "original_median_shape_after_transp": [24, 128, 128],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1000.0, "mean": 300.0, "median": 280.0, "min": 0.0,
            "percentile_00_5": 10.0, "percentile_99_5": 900.0, "std": 120.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": list(map(int, patch_size)),
            "median_image_size_in_voxels": [24, 128, 128],
            "spacing": list(map(float, spacing)),
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling_kwargs,
            "resampling_fn_seg_kwargs": {**resampling_kwargs, "is_seg": True, "order": 1},
            "resampling_fn_probabilities_kwargs": {**resampling_kwargs, "order": 1},
            "batch_dice": False,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": arch,
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
        }},
    }
    (trainer / "plans.json").write_text(json.dumps(plans, indent=2))

    import pydoc

    kwargs = {key: (pydoc.locate(value) if key in arch and key in plans["configurations"]["3d_fullres"]["architecture"]["_kw_requires_import"] and value else value)
              for key, value in arch.items()}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        network = PlainConvUNet(input_channels=1, num_classes=len(labels), deep_supervision=False, **kwargs)
        network.eval()
        with torch.no_grad():
            noise = torch.randn((1, 1, *patch_size))
            logits = network(noise)
            foreground = logits[:, 1:].amax(dim=1) - logits[:, 0]
            # Shift the foreground heads so the wanted fraction of voxels wins.
            shift = torch.quantile(foreground.flatten(), 1.0 - float(foreground_fraction))
            head = network.decoder.seg_layers[-1]
            head.bias[1:] -= shift
    finally:
        torch.random.set_rng_state(generator_state)

    checkpoint = {
        "network_weights": network.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "3d_fullres", "fold": fold},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, trainer / f"fold_{fold}" / checkpoint_name)
    return root
