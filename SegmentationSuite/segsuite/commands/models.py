"""``segsuite models``: list, download, install offline, import from FreeSurfer, verify, remove."""

from __future__ import annotations

import json

from ..errors import ModelError, UsageError

NAME = "models"
HELP = "manage model weights (list, download, install offline, verify, remove)"
DESCRIPTION = """Manage the model weights that the segmentation commands use.

Weights are downloaded on first use into the cache folder ($SEGSUITE_HOME, the "home" setting,
or the platform's user data folder) and checked against their sha256. Examples:
  segsuite models list
  segsuite models download synthseg-2.0
  segsuite models install synthseg-2.0 --from ~/Downloads/synthseg_2.0.h5
  segsuite models import-freesurfer /usr/local/freesurfer/8.1.0
  segsuite models verify"""


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="every model: installed or not, size, checks, folder")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    download = actions.add_parser("download", help="download models now (otherwise done on first use)")
    download.add_argument("model_ids", nargs="*", metavar="ID")
    download.add_argument("--all", action="store_true", help="every model in the registry")
    download.add_argument("--force", action="store_true", help="download again even if installed")

    install = actions.add_parser("install", help="install a model from a local file, archive or folder (offline)")
    install.add_argument("model_id", metavar="ID")
    install.add_argument("--from", dest="source", required=True, metavar="FILE_OR_DIR",
                         help="the model's file, a folder holding its files, or the archive it is published in "
                              "(`segsuite models info ID` names them); every file is checked against its sha256")

    freesurfer = actions.add_parser("import-freesurfer",
                                    help="copy the models of a FreeSurfer installation ($FREESURFER_HOME/models)")
    freesurfer.add_argument("freesurfer_home", nargs="?", metavar="FREESURFER_HOME",
                            help="default: $FREESURFER_HOME")
    freesurfer.add_argument("--model", dest="model_ids", action="append", metavar="ID",
                            help="only this model (repeatable)")

    verify = actions.add_parser("verify", help="re-check the sha256 of installed models")
    verify.add_argument("model_ids", nargs="*", metavar="ID", help="default: every installed model")

    remove = actions.add_parser("remove", help="delete installed models")
    remove.add_argument("model_ids", nargs="*", metavar="ID")
    remove.add_argument("--all", action="store_true", help="every installed model")
    remove.add_argument("--forget", action="store_true",
                        help="also forget sha256 values recorded on first use (to accept a changed upstream file)")

    path = actions.add_parser("path", help="print the folder of an installed model (or the cache folder)")
    path.add_argument("model_id", nargs="?", metavar="ID")
    path.add_argument("--file", action="store_true",
                      help="the model's file instead of its folder (one-file models, e.g. sample-t1)")

    info = actions.add_parser("info", help="a model's files, sources, licence and citations")
    info.add_argument("model_id", metavar="ID")


def run(args) -> int:
    from ..cli import progress_for
    from ..models import manager

    action = getattr(args, "action", None)
    if action is None:
        raise UsageError("give an action: list, download, install, import-freesurfer, verify, remove, path, info")
    models = manager()
    if action in ("download", "install", "import-freesurfer"):
        from ..faults import checkpoint
        from ..image import check_writable_locations

        check_writable_locations([models.models_dir / "probe"])  # read-only or full cache: before anything
        checkpoint("before-network")
    if action == "list":
        return _list(models, args.json)
    if action == "download":
        ids = _ids(models, args.model_ids, args.all, "download")
        failed = []
        for model_id in ids:   # go on after a failure and report them all at the end
            progress, close = progress_for(args, f"Downloading {model_id}")
            try:
                folder = models.download(model_id, progress, force=args.force)
            except ModelError as error:
                if len(ids) == 1:
                    raise
                failed.append(model_id)
                print(f"{model_id}: FAILED: {error}", flush=True)
                continue
            finally:
                close()
            print(f"{model_id}: {folder}")
        if failed:
            raise ModelError(f"{len(failed)} of {len(ids)} models failed to download: {', '.join(failed)} (see above)")
        return 0
    if action == "install":
        progress, close = progress_for(args, f"Installing {args.model_id}")
        try:
            folder = models.install_from(args.model_id, args.source, progress)
        finally:
            close()
        print(f"{args.model_id}: installed and verified in {folder}")
        return 0
    if action == "import-freesurfer":
        outcomes = models.import_freesurfer(args.freesurfer_home, args.model_ids)
        for model_id, outcome in outcomes:
            print(f"{model_id}: {outcome}")
        if any(o.startswith("failed") for _, o in outcomes):
            return 1
        if not any(o.startswith(("imported", "already")) for _, o in outcomes):
            raise ModelError("no model files were found in that FreeSurfer installation's models/ folder")
        return 0
    if action == "verify":
        ids = args.model_ids or [s.spec.id for s in models.statuses() if s.path.exists()]
        if not ids:
            print("no models are installed")
            return 0
        failed = 0
        for model_id in ids:
            state = models.state(model_id)
            if state.startswith("trust"):
                print(f"{model_id}: {models.repair_hint(model_id, state)}")
                continue
            problems = models.verify(model_id)
            print(f"{model_id}: " + ("ok" if not problems else "FAILED: " + "; ".join(problems)))
            if problems:
                failed += 1
                print(f"  {models.repair_hint(model_id, 'corrupt (sha256 mismatch)')}", flush=True)
        return 1 if failed else 0
    if action == "remove":
        ids = _ids(models, args.model_ids, args.all, "remove")
        for model_id in ids:
            removed = models.remove(model_id, forget=args.forget)
            note = ""
            if not args.forget and models.state(model_id).startswith("trust"):
                note = f" (its first-use sha256 record is kept; `segsuite models remove {model_id} --forget` drops it)"
            print(f"{model_id}: " + ("removed" if removed else "was not installed") + note)
        return 0
    if action == "path":
        if args.model_id is None:
            print(models.home)
            return 0
        if not models.is_installed(args.model_id):
            raise ModelError(f"{args.model_id} is not installed; run `segsuite models download {args.model_id}`")
        if getattr(args, "file", False):
            files = models.registry.get(args.model_id).files
            if len(files) != 1:
                raise UsageError(f"{args.model_id} has {len(files)} files; --file is for one-file models")
            print(models.path(args.model_id) / files[0].name)
            return 0
        print(models.path(args.model_id))
        return 0
    if action == "info":
        return _info(models, args.model_id)
    raise UsageError(f"unknown action {action}")


def _ids(models, given, every: bool, verb: str) -> list[str]:
    if every and given:
        raise UsageError("give model ids or --all, not both")
    if every:
        return [spec.id for spec in models.registry]
    if not given:
        raise UsageError(f"name the models to {verb} (see `segsuite models list`) or use --all")
    for model_id in given:
        models.registry.get(model_id)        # unknown ids fail before anything is done
    return list(given)


def _size(n, spec=None) -> str:
    if n is None and spec is not None:   # some files' sizes are unpublished: the known part, approximately
        known = sum(f.size for f in spec.files if f.size)
        return f"~{known / 1e6:.1f} MB" if known else "?"
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def _list(models, as_json: bool) -> int:
    statuses = models.statuses()
    if as_json:
        print(json.dumps([{"id": s.spec.id, "version": s.spec.version, "title": s.spec.title,
                           "installed": s.installed, "status": models.state(s.spec.id),
                           "size": s.size, "check": s.trust, "path": str(s.path),
                           "licence": s.spec.licence.get("name", ""), "licence_url": s.spec.licence.get("url", ""),
                           "citation": " ".join(s.spec.citations)} for s in statuses], indent=1))
        return 0
    rows = [("ID", "VERSION", "STATUS", "SIZE", "CHECK", "PATH")]
    rows += [(s.spec.id, s.spec.version, models.state(s.spec.id), _size(s.size, s.spec),
              s.trust, str(s.path)) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    print(f"\nCache folder: {models.home}" + (f"   mirror: {models.mirror}" if models.mirror else ""))
    return 0


def _info(models, model_id: str) -> int:
    spec = models.registry.get(model_id)
    print(f"{spec.id} ({spec.title}), version {spec.version}")
    print(f"Licence: {spec.licence.get('name', '?')} <{spec.licence.get('url', '')}>")
    if spec.licence.get("note"):
        print(f"  {spec.licence['note']}")
    print("Cite:")
    for citation in spec.citations:
        print(f"  - {citation}")
    print("Files:")
    for file in spec.files:
        check = f"sha256 {file.sha256}" if file.sha256 else "sha256 unknown: recorded on first use"
        print(f"  {file.name} ({file.kind}, {_size(file.size)}, {check})")
        for source in file.sources:
            how = f" [{source.archive} member {source.member}]" if source.archive else ""
            print(f"    {source.url}{how}")
        if file.note:
            print(f"    note: {file.note}")
    status = models.status(model_id)
    print(f"Installed: {'yes, in ' + str(status.path) if status.installed else 'no'}")
    return 0
