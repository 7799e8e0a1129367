"""segsuite group: per-subject tables -> wide table, TIV-corrected tables, QC flags and ranking, HTML report."""

from __future__ import annotations

NAME = "group"
HELP = "per-subject morphometry tables -> group tables (TIV-corrected two ways), QC flags, worst-first ranking"
DESCRIPTION = """Reads the per-subject tables of `segsuite morphometry` (*_morphometry.tsv) or of `segsuite stats2table`
and writes into --o: group_volumes.tsv (participant_id, session_id, TIV, structures),
group_volumes_tiv-proportional.tsv (volume / TIV * 1.5 L), group_volumes_tiv-residual.tsv (residuals of
each region regressed on TIV over the cohort) with group_tiv-residual_fit.tsv (slope, intercept per
region), group_quality.tsv, group_qc_flags.tsv and group_qc_ranking.tsv (flagged subjects first: SynthSeg QC below
--qc-threshold, metrics beyond --mad MADs of the cohort median, ScLimbic |z| > --z; ScLimbic's
zqa_scores_all.csv and confidences_all.csv may be given among the tables: their z_* and conf_* columns join).
--report writes group_qc_report.html, the reviewer's page: per subject the three planes at three levels
(radiological, at the image's own resolution) of the segmentation over the image its morphometry sidecar
names, ratings kept in the browser and exported as a TSV. --qc-ratings FILE (that TSV) leaves the subjects
rated fail for the engine "morphometry" out of the volume columns and the TIV fits, and every table says
why (review_rating, review_status).
"""


ENGINE = "morphometry"  # the engine name of these tables' rows in the review report and the ratings


def add_arguments(parser) -> None:
    parser.add_argument("tables", nargs="+", metavar="TABLE", help="per-subject tables (.tsv/.csv)")
    parser.add_argument("--o", dest="output", metavar="OUTDIR", required=True, help="output folder")
    parser.add_argument("--qc-threshold", type=float, default=0.65, help="flag SynthSeg QC scores below this (0.65)")
    parser.add_argument("--mad", type=float, default=3.0, help="flag metrics beyond this many MADs (3)")
    parser.add_argument("--z", type=float, default=3.0, help="flag ScLimbic |z| above this (3)")
    parser.add_argument("--report", action="store_true",
                        help="also write group_qc_report.html and its _files folder of views (the reviewer's page)")
    parser.add_argument("--qc-ratings", metavar="FILE",
                        help="the ratings TSV exported from the report: rows rated fail leave the analysis columns and fits")
    parser.add_argument("--nprocs", type=int, default=1, help="processes making the report's views (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    import os
    import sys

    from ..image import check_outputs
    from ..morphometry.group import (GROUP_FILES, build_group_tables, read_subject_tables,
                                     write_morphometry_group_tables)

    from ..review.ratings import read_ratings

    report = os.path.join(args.output, "group_qc_report.html")
    check_outputs([os.path.join(args.output, name) for name in GROUP_FILES.values()] + ([report] if args.report else []),
                  args.overwrite, inputs=args.tables)
    ratings = read_ratings(args.qc_ratings) if args.qc_ratings else None  # its mistakes before any work
    frame = read_subject_tables(args.tables)
    tables = build_group_tables(frame, args.qc_threshold, args.mad, args.z, ratings=ratings, engine=ENGINE)
    write_morphometry_group_tables(tables, args.output, overwrite=args.overwrite, inputs=args.tables)
    for warning in tables.warnings:
        print(f"segsuite group: warning: {warning}", file=sys.stderr)
    if args.report:
        from ..review.build import build_review, morphometry_sources

        paths = [os.path.abspath(path) for path in args.tables if str(path).endswith("morphometry.tsv")]
        own = read_subject_tables(paths) if paths else frame.iloc[:0]
        sources, missing = morphometry_sources(paths, own, ENGINE)
        built = build_review(report, sources, tables, title="SegmentationSuite QC review", workers=args.nprocs,
                             missing=missing)
        print(f"report {report}: {built['bytes'] / 1e6:.2f} MB page + {built['views_bytes'] / 1e6:.2f} MB of views "
              f"in {built['folder'].name}/ ({built['per_subject'] / 1e3:.0f} kB per subject), {built['entries']} views")
    if ratings is not None:
        failed = int((tables.wide["review_rating"] == "fail").sum())
        print(f"--qc-ratings: {failed} subject(s) rated fail left out of the volumes and TIV fits")
    flagged = int((tables.flags["n_flags"] > 0).sum())
    print(f"{len(tables.wide)} subjects, {len(tables.volume_columns)} regions, {flagged} flagged -> {args.output}")
    return 0
