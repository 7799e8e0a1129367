"""segsuite morphometry: tissue maps, masks, image-quality metrics, TIV and aseg.stats from a segmentation."""

from __future__ import annotations

import os

NAME = "morphometry"
HELP = "GM/WM/CSF maps, dseg, brain mask, SNR/CNR (spec and MRIQC), TIV and aseg.stats from existing SynthSeg outputs"
DESCRIPTION = """Per-subject morphometry on an existing segmentation (e.g. SynthSeg's --o and --post).

Without --post the tissue maps come from the hard labels. The outputs in --o use BIDS-Derivatives names:
<prefix>_label-{GM,WM,CSF}_probseg.nii.gz, <prefix>_dseg.nii.gz (1 GM, 2 WM, 3 CSF, as fMRIPrep),
<prefix>_desc-brain_mask.nii.gz, <prefix>_morphometry.tsv (the row `segsuite group` reads),
<prefix>_morphometry.json (which definition each metric is) and <prefix>_aseg.stats.
"""


def add_arguments(parser) -> None:
    parser.add_argument("--i", dest="image", metavar="IMAGE", required=True, help="the scan the segmentation was made from")
    parser.add_argument("--seg", metavar="LABELS", required=True, help="the label map (FreeSurfer values)")
    parser.add_argument("--post", metavar="POSTERIORS", help="SynthSeg posteriors (4D, one channel per label)")
    parser.add_argument("--qc", metavar="CSV", help="SynthSeg QC scores CSV (its row joins the table)")
    parser.add_argument("--etiv", type=float, metavar="MM3", help="an eTIV to use as TIV (e.g. ScLimbic's)")
    parser.add_argument("--o", dest="output", metavar="OUTDIR", required=True, help="output folder")
    parser.add_argument("--prefix", help="file name prefix (default: the image name without extension)")
    parser.add_argument("--participant", help="participant_id in the table (default: the prefix)")
    parser.add_argument("--session", default="", help="session_id in the table")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    from ..image import check_outputs, strip_image_suffix
    from ..morphometry.files import result_from_files
    from ..morphometry.subject import compute_morphometry, output_paths, write_morphometry

    prefix = args.prefix or os.path.basename(strip_image_suffix(args.image))
    check_outputs(list(output_paths(args.output, prefix).values()), args.overwrite,
                  inputs=[p for p in (args.image, args.seg, args.post, args.qc) if p])
    result = result_from_files(args.seg, args.post, args.qc, args.etiv, subject=prefix)
    morphometry = compute_morphometry(args.image, result, subject=prefix)
    paths = write_morphometry(morphometry, args.output, prefix, overwrite=args.overwrite,
                              inputs=[args.image, args.seg], result=result,
                              participant_id=args.participant, session_id=args.session,
                              sources={"image": args.image, "segmentation": args.seg})
    print(f"TIV {morphometry.tiv:.0f} mm3 ({morphometry.tiv_source}); SNR (spec) {morphometry.metrics['spec_snr']:.2f}, "
          f"CNR (spec) {morphometry.metrics['spec_cnr']:.2f}; wrote {len(paths)} files to {args.output}")
    return 0
