"""segsuite stats2table: FreeSurfer stats files -> one tidy table (like asegstats2table/aparcstats2table)."""

from __future__ import annotations

NAME = "stats2table"
HELP = "FreeSurfer .stats files (any version, 5.3 to 8) -> one tidy TSV (a row per file and region)"
DESCRIPTION = """Reads FreeSurfer stats files of versions 5.3 to 8 (aseg, wmparc, brainvol, ?h.aparc, a2009s,
DKTatlas, pial, BA_exvivo, sclimbic, samseg, and the hippocampal-subfield/amygdala volume .txt files)
into one tidy table: subject, file, atlas, hemi, kind (structure or header measure), region,
volume_mm3, thickness_mm, surface_area_mm2, value, unit, description, then every FreeSurfer column.
A line it cannot read is reported (file and line) and skipped; the rest of the table is written.
The subject is the file's subjectname (a file without one, e.g. brainvol.stats, takes that of the
files beside it); with --subject-from-path it is <subject> in SUBJECTS_DIR/<subject>/stats/<file>,
as asegstats2table --subjects reads them (--subdir for another folder name than stats).
"""


def add_arguments(parser) -> None:
    parser.add_argument("stats", nargs="+", metavar="STATS", help="FreeSurfer .stats files")
    parser.add_argument("--o", dest="output", metavar="TABLE.tsv", required=True, help="output table (.tsv or .csv)")
    parser.add_argument("--subject-from-path", action="store_true",
                        help="name each file's subject after its SUBJECTS_DIR folder (<subject>/stats/x.stats)")
    parser.add_argument("--subdir", default="stats", metavar="NAME",
                        help="with --subject-from-path: the stats folder's name (default stats, as asegstats2table's --subdir)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args) -> int:
    import sys

    from ..image import OutputTransaction, check_outputs
    from ..morphometry.stats_io import tidy_table

    check_outputs([args.output], args.overwrite, inputs=args.stats)
    warnings: list[str] = []
    table = tidy_table(args.stats, warnings=warnings, from_path=args.subject_from_path, subdir=args.subdir)
    for warning in warnings:
        print(f"segsuite stats2table: warning: {warning}", file=sys.stderr)
    separator = "," if args.output.endswith(".csv") else "\t"
    with OutputTransaction(overwrite=args.overwrite, inputs=args.stats) as transaction:
        transaction.write_text(args.output, table.to_csv(sep=separator, index=False, na_rep="n/a"))
    print(f"{len(table)} rows from {len(args.stats)} files -> {args.output}")
    return 0
