"""segsuite group: per-subject tables -> wide table, TIV-corrected tables, QC flags and ranking, HTML report."""

from __future__ import annotations

NAME = "group"
HELP = "per-subject morphometry tables -> group tables (TIV-corrected two ways), QC flags, worst-first ranking"
DESCRIPTION = """Reads the per-subject tables of `segsuite morphometry` (*_morphometry.tsv) or of `segsuite stats2table`
and writes into --o: group_volumes.tsv (participant_id, session_id, TIV, structures),
group_volumes_tiv-proportional.tsv (volume / TIV * 1.5 L), group_volumes_tiv-residual.tsv (residuals of
each region regressed on TIV over the cohort) with group_tiv-residual_fit.tsv (slope, intercept per
region), group_quality.tsv, group_qc_flags.tsv and group_qc_ranking.tsv (flagged subjects first: SynthSeg QC below
--qc-threshold, metrics beyond --mad MADs of the cohort median, ScLimbic |z| > --z).
"""


def add_arguments(parser) -> None:
    parser.add_argument("tables", nargs="+", metavar="TABLE", help="per-subject tables (.tsv/.csv)")
    parser.add_argument("--o", dest="output", metavar="OUTDIR", required=True, help="output folder")
    parser.add_argument("--qc-threshold", type=float, default=0.65, help="flag SynthSeg QC scores below this (0.65)")
    parser.add_argument("--mad", type=float, default=3.0, help="flag metrics beyond this many MADs (3)")
    parser.add_argument("--z", type=float, default=3.0, help="flag ScLimbic |z| above this (3)")
    parser.add_argument("--report", action="store_true",
                        help="also write group_qc_report.html (self-contained; mosaics from beside the tables)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    import os
    import sys

    from ..image import check_outputs
    from ..morphometry.group import (GROUP_FILES, build_group_tables, read_subject_tables,
                                     write_morphometry_group_tables)

    from ..morphometry.report import write_report
    from ..morphometry.subject import mosaic_beside

    report = os.path.join(args.output, "group_qc_report.html")
    check_outputs([os.path.join(args.output, name) for name in GROUP_FILES.values()] + ([report] if args.report else []),
                  args.overwrite, inputs=args.tables)
    frame = read_subject_tables(args.tables)
    tables = build_group_tables(frame, args.qc_threshold, args.mad, args.z)
    write_morphometry_group_tables(tables, args.output, overwrite=args.overwrite, inputs=args.tables)
    for warning in tables.warnings:
        print(f"segsuite group: warning: {warning}", file=sys.stderr)
    if args.report:
        mosaics = {}
        for path in args.tables:
            picture = mosaic_beside(os.path.abspath(path))
            if picture is not None:
                ids = read_subject_tables([path])[["participant_id", "session_id"]].fillna("").astype(str).iloc[0]
                mosaics[(ids["participant_id"], ids["session_id"])] = picture
        size = write_report(report, tables, mosaics)
        print(f"report {report}: {size / 1e6:.2f} MB, {len(mosaics)} mosaics")
    flagged = int((tables.flags["n_flags"] > 0).sum())
    print(f"{len(tables.wide)} subjects, {len(tables.volume_columns)} regions, {flagged} flagged -> {args.output}")
    return 0
