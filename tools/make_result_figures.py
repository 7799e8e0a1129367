"""Render real results on real scans into Screenshots/ (needs ../shared and matplotlib).

- sclimbic_t1_crop.png: the trained ScLimbic model (../shared/models) on the real T1.
- samseg_brain_mask.png: our brain mask from a real SAMSEG segmentation against the mask that
  unpatched fMRIPrep (refine_aseg on every non-zero label) builds from it.
These are renderings of engine outputs, not screenshots of the Slicer GUI.

    python tools/make_result_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "Screenshots"
sys.path.insert(0, str(ROOT / "SegmentationSuite"))


def overlay(ax, image, labels, table, title):
    from matplotlib.colors import ListedColormap

    ax.imshow(image.T, cmap="gray", origin="lower")
    values = [v for v in table.values if v != 0]
    lookup = np.zeros(int(max(values)) + 1, dtype=np.int32)
    lookup[values] = np.arange(1, len(values) + 1)
    colours = [(0, 0, 0, 0)] + [tuple(c / 255 for c in table.color(v)) + (0.75,) for v in values]
    ax.imshow(np.ma.masked_equal(lookup[labels].T, 0), cmap=ListedColormap(colours), origin="lower",
              vmin=0, vmax=len(values), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def ras_canonical(data, affine):
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asanyarray(image.dataobj)


def sclimbic_figure():
    import matplotlib.pyplot as plt
    import nibabel as nib

    from segsuite.sclimbic import ScLimbicEngine

    t1_path = SHARED / "data" / "t1" / "t1_crop.nii.gz"
    engine = ScLimbicEngine(model=SHARED / "models" / "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5", device="cpu", threads=2)
    result = engine.segment(str(t1_path))
    t1 = nib.load(t1_path)
    image = ras_canonical(np.asanyarray(t1.dataobj).astype(np.float32), t1.affine)
    labels = ras_canonical(result.labels.astype(np.int32), result.affine)
    centre = np.round(np.argwhere(labels > 0).mean(axis=0)).astype(int)
    pad = 40
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=110)
    i, j, k = centre
    overlay(axes[0], image[i, j - pad:j + pad, k - pad:k + pad], labels[i, j - pad:j + pad, k - pad:k + pad],
            result.label_table, "sagittal")
    overlay(axes[1], image[i - pad:i + pad, j, k - pad:k + pad], labels[i - pad:i + pad, j, k - pad:k + pad],
            result.label_table, "coronal")
    overlay(axes[2], image[i - pad:i + pad, j - pad:j + pad, k], labels[i - pad:i + pad, j - pad:j + pad, k],
            result.label_table, "axial")
    names = ", ".join(f"{name} {volume:.0f}" for name, volume in list(result.volumes.items())[:6])
    fig.suptitle(f"ScLimbic (trained FreeSurfer model, PyTorch port) on a real 1 mm T1\nvolumes mm3: {names} ...",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "sclimbic_t1_crop.png")
    plt.close(fig)


def samseg_figure():
    import matplotlib.pyplot as plt
    import nibabel as nib

    from segsuite.labels import Label, LabelTable
    from segsuite.samseg import SamsegBrainMask

    seg_path = SHARED / "data" / "samseg" / "t1_crop_1mm" / "seg.mgz"
    ours = SamsegBrainMask().segment(str(seg_path))
    naive = SamsegBrainMask(preset="none", closing_may_include=()).segment(str(seg_path))
    t1 = nib.load(SHARED / "data" / "t1" / "t1_crop.nii.gz")
    image = ras_canonical(np.asanyarray(t1.dataobj).astype(np.float32), t1.affine)
    mask_ours = ras_canonical(ours.images["brain_mask"].astype(np.uint8), ours.affine)
    mask_naive = ras_canonical(naive.images["brain_mask"].astype(np.uint8), naive.affine)
    both = np.where(mask_ours > 0, 1, np.where(mask_naive > 0, 2, 0)).astype(np.int32)
    table = LabelTable([Label(0, "none", (0, 0, 0)), Label(1, "brain mask (ours)", (40, 200, 90)),
                        Label(2, "extra in unpatched fMRIPrep mask", (230, 60, 50))])
    centre = np.array(both.shape) // 2
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8), dpi=110)
    overlay(axes[0], image[:, centre[1], :], both[:, centre[1], :], table, "coronal")
    overlay(axes[1], image[centre[0], :, :], both[centre[0], :, :], table, "sagittal")
    voxel = float(np.prod(nib.affines.voxel_sizes(ours.affine)))
    fig.suptitle(f"SAMSEG label filter on a real SAMSEG output: ours {mask_ours.sum() * voxel / 1e3:.0f} cm3 (green), "
                 f"unpatched refine_aseg {mask_naive.sum() * voxel / 1e3:.0f} cm3 (green + red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "samseg_brain_mask.png")
    plt.close(fig)


if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    OUT.mkdir(exist_ok=True)
    samseg_figure()
    sclimbic_figure()
    print("written:", *sorted(p.name for p in OUT.glob("*.png")))
