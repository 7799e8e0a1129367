"""segsuite stats2table: FreeSurfer stats files -> one tidy table (like asegstats2table/aparcstats2table)."""

from __future__ import annotations

NAME = "stats2table"
HELP = "FreeSurfer aseg/aparc/wmparc/brainvol .stats files -> one tidy TSV (a row per file and region)"
DESCRIPTION = """Reads FreeSurfer stats files (aseg.stats, wmparc.stats, brainvol.stats, ?h.aparc*.stats) into one
tidy table: subject, file, atlas, hemi, kind (structure or header measure), region, volume_mm3,
thickness_mm, surface_area_mm2, value, unit, description, then every FreeSurfer column.
The subject is the file's subjectname, or the name of the folder above stats/ with --subject-from-path.
"""


def add_arguments(parser) -> None:
    parser.add_argument("stats", nargs="+", metavar="STATS", help="FreeSurfer .stats files")
    parser.add_argument("--o", dest="output", metavar="TABLE.tsv", required=True, help="output table (.tsv or .csv)")
    parser.add_argument("--subject-from-path", action="store_true",
                        help="name each file's subject after its SUBJECTS_DIR folder (<subject>/stats/x.stats)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args) -> int:
    import os

    from ..image import OutputTransaction, check_outputs
    from ..morphometry.stats_io import tidy_table

    check_outputs([args.output], args.overwrite, inputs=args.stats)
    subjects = None
    if args.subject_from_path:
        subjects = [os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(p)))) for p in args.stats]
    table = tidy_table(args.stats, subjects)
    separator = "," if args.output.endswith(".csv") else "\t"
    with OutputTransaction(overwrite=args.overwrite, inputs=args.stats) as transaction:
        transaction.write_text(args.output, table.to_csv(sep=separator, index=False, na_rep="n/a"))
    print(f"{len(table)} rows from {len(args.stats)} files -> {args.output}")
    return 0
