"""Our mriqc_* metrics against MRIQC 24.0.2's own code path: its workflow's RotationMask, Harmonize and
StructuralQC interfaces (mriqc/interfaces/anatomical.py), fed what our workflow feeds our functions.

MRIQC's workflow gets its inputs from SynthStrip, ANTs (N4, registration, Atropos) and AFNI (3dFWHMx);
those tools are not installed here, so the segmentation-derived tissue maps, head/air masks and brain
mask, our N4 bias field (SimpleITK) and our 3dFWHMx estimate (AFNI is not installable: see
test_morphometry_quality_workflow.py for its check against AFNI's documented formula) are handed to
MRIQC's interfaces as files. Everything MRIQC computes from them (the rotation mask, the harmonized
image, snr/snrd/cnr/cjv/efc/fber/wm2max, inu_*, fwhm_* in voxels, the tissue statistics) must equal ours
within 1e-6. It needs numpy < 2 (requirements-compat-tests.txt; .ci/run builds that venv and runs this
file there); elsewhere it skips, saying which package is missing.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import numpy as np
import pytest

from segsuite.morphometry import mriqc_workflow, quality, tissues


def _mriqc_interfaces():
    """mriqc.interfaces.anatomical without the package's __init__ (which imports niworkflows, not
    installed here: MRIQC's --no-deps install)."""
    mriqc = pytest.importorskip("mriqc", reason="MRIQC is not installed here (it needs numpy<2: see "
                                "requirements-compat-tests.txt)")
    pytest.importorskip("SimpleITK", reason="SimpleITK (our N4) is not installed here")
    if "mriqc.interfaces" not in sys.modules:
        package = types.ModuleType("mriqc.interfaces")
        package.__path__ = [os.path.join(os.path.dirname(mriqc.__file__), "interfaces")]
        sys.modules["mriqc.interfaces"] = package
    return importlib.import_module("mriqc.interfaces.anatomical")


def _stand_in_labels(data):
    """A 3-class stand-in segmentation of a scan that has none (the inputs only need to be the same on
    both sides): the head's core split at its intensity terciles into CSF (24), GM (3) and WM (2)."""
    from scipy import ndimage

    foreground = data > quality.otsu_threshold(data[data > 0])
    components, _ = ndimage.label(foreground)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    core = ndimage.binary_erosion(ndimage.binary_fill_holes(components == largest), iterations=12)
    low, high = np.percentile(data[core], [33.3, 66.7])
    labels = np.zeros(data.shape, dtype=np.int32)
    labels[core & (data <= low)] = 24
    labels[core & (data > low) & (data <= high)] = 3
    labels[core & (data > high)] = 2
    return labels


def _cases(shared):
    import nibabel as nib

    # conformed to RAS first, as MRIQC's ConformImage does before anything else
    scan = nib.as_closest_canonical(nib.load(str(shared("data", "t1", "t1_crop.nii.gz"))))
    seg = nib.as_closest_canonical(nib.load(str(shared("data", "samseg", "t1_crop_1mm", "seg.mgz"))))
    yield "t1_crop", np.asarray(scan.dataobj, dtype=np.float32), np.asarray(seg.dataobj).astype(np.int32), scan.affine
    scan = nib.as_closest_canonical(nib.load(str(shared("data", "t1", "seg3d_MR_T1_clinical.nii.gz"))))
    data = np.asarray(scan.get_fdata(), dtype=np.float32)
    yield "seg3d_MR_T1_clinical", data, _stand_in_labels(data), scan.affine


def test_mriqc_workflow_metrics_equal_mriqcs_interfaces_on_two_real_scans(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("NIPYPE_NO_ET", "1")  # no update check over the network
    anatomical = _mriqc_interfaces()
    import logging

    import nibabel as nib
    from mriqc import config

    monkeypatch.setattr(config.loggers, "interface", logging.getLogger("mriqc.interface"), raising=False)
    monkeypatch.chdir(tmp_path)
    for name, data, labels, affine in _cases(shared):
        def save(stem, array, dtype=np.float32):
            path = str(tmp_path / f"{name}_{stem}.nii.gz")
            image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
            image.header.set_data_dtype(dtype)
            nib.save(image, path)
            return path

        # ours, composed as compute_morphometry composes it
        maps, _ = tissues.tissue_maps_from_labels(labels)
        dseg = tissues.dseg_from_maps(maps)
        brain = dseg > 0
        head, air = quality.head_and_air_masks(data, brain)
        bias = mriqc_workflow.n4_bias_field(data, brain, affine)
        corrected = (data / bias).astype(np.float32)
        harmonized = mriqc_workflow.harmonize(corrected, maps["WM"])
        rotation = mriqc_workflow.rotation_mask(data)
        ours, our_stats = quality.image_quality_metrics(data, maps, dseg, brain, head, air,
                                                        mriqc_image=harmonized, rotation_mask=rotation)
        ours.update({f"mriqc_{k}": v for k, v in mriqc_workflow.inu_metrics(bias, brain).items()})
        ours.update({f"mriqc_{k}": v for k, v in mriqc_workflow.fwhm_metrics(data, brain, affine).items()})
        sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
        fwhm_mm = [float(f"{v:.6g}") for v in mriqc_workflow.fwhm_classic(data, brain, sizes)]

        # MRIQC's interfaces on the same inputs
        in_file = save("T1w", data)
        rot_file = anatomical.RotationMask(in_file=in_file).run().outputs.out_file
        assert rotation.any(), name  # both scans have zero-filled backgrounds
        assert np.array_equal(np.asarray(nib.load(rot_file).dataobj) > 0, rotation), name
        pvms = [save(f"label-{t}_probseg", maps[t]) for t in ("CSF", "GM", "WM")]
        harmonized_file = anatomical.Harmonize(in_file=save("desc-n4_T1w", corrected),
                                               wm_mask=pvms[2]).run().outputs.out_file
        assert np.array_equal(np.asarray(nib.load(harmonized_file).dataobj), harmonized), name
        measures = anatomical.StructuralQC(
            in_file=in_file, in_noinu=harmonized_file, in_segm=save("dseg", dseg, np.uint8),
            in_bias=save("bias", bias), head_msk=save("head", head, np.uint8), air_msk=save("air", air, np.uint8),
            rot_msk=rot_file, artifact_msk=save("art", np.zeros_like(head), np.uint8), in_pvms=pvms,
            mni_tpms=pvms, in_fwhm=fwhm_mm + [float(np.cbrt(np.prod(fwhm_mm)))]).run().outputs.out_qc
        compared = 0
        for key, value in measures.items():
            if f"mriqc_{key}" in ours:
                assert ours[f"mriqc_{key}"] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
                compared += 1
        for tissue in ("csf", "gm", "wm", "bg"):
            for key in ("mean", "median", "p95", "p05", "stdv", "mad", "n"):
                assert our_stats[tissue][key] == pytest.approx(measures[f"summary_{tissue}_{key}"], rel=1e-6,
                                                               abs=1e-9), (name, tissue, key)
        # every metric of ours named after MRIQC's was compared: snr x4, snrd x4, cnr, cjv, efc, fber,
        # wm2max, inu x2, fwhm x4
        assert compared == len([key for key in ours if key.startswith("mriqc_")]) == 19, (name, compared)
        # the rotation mask matters on these zero-background scans: fber is no longer -1
        assert ours["mriqc_fber"] > 1 and 0.5 < ours["mriqc_efc"] < 1, name
