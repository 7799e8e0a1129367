"""Model manager against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from model_server import ModelServer, file_entry, tiny_registry, write_registry
from segsuite.errors import ModelError
from segsuite.models import ModelManager, Registry
from segsuite.models import download as download_module
from segsuite.models.config import DownloadSettings
from segsuite.models.download import new_session
from segsuite.progress import ProgressRecorder

REPO = Path(__file__).resolve().parents[1]
FAST = DownloadSettings(retries=2, backoff=0.01, backoff_max=0.02, timeout=10, chunk_size=4096, min_free_bytes=0)
BODY = os.urandom(200_000)


@pytest.fixture
def server():
    server = ModelServer()
    yield server
    server.close()


def make_manager(tmp_path, files, mirror="", settings=FAST, **kw) -> ModelManager:
    registry = Registry.from_dict(tiny_registry(files, **kw))
    return ModelManager(home=tmp_path / "home", registry=registry, mirror=mirror, settings=settings)


def leftovers(manager: ModelManager) -> list[str]:
    """Everything in the cache except locks and first-use records."""
    return sorted(str(p.relative_to(manager.home)) for p in manager.home.rglob("*")
                  if p.is_file() and p.parent.name != "locks" and p.name != "trusted-hashes.json")


def test_success_installs_verified_file_and_reports_progress(server, tmp_path):
    route = server.add("/w.h5", BODY)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    progress = ProgressRecorder()
    folder = manager.ensure("tiny", progress)
    assert folder == manager.home / "models" / "tiny"
    assert (folder / "w.h5").read_bytes() == BODY
    assert progress.calls[-1][0] == 1.0
    assert all(0.0 <= f <= 1.0 for f, _ in progress.calls)
    assert [f for f, _ in progress.calls] == sorted(f for f, _ in progress.calls)
    manifest = json.loads((folder / ".segsuite-model.json").read_text())
    assert manifest["files"]["w.h5"]["sha256"] == route.sha256
    assert manifest["files"]["w.h5"]["origin"] == server.url("/w.h5")
    assert manager.ensure("tiny") == folder and len(route.requests) == 1     # no second download
    assert manager.verify("tiny") == []
    assert leftovers(manager) == ["models/tiny/.segsuite-model.json", "models/tiny/w.h5"]


def test_404_moves_to_the_next_url(server, tmp_path):
    good = server.add("/b/w.h5", BODY)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/a/w.h5"), server.url("/b/w.h5")])])
    assert (manager.ensure("tiny") / "w.h5").read_bytes() == BODY
    assert len(good.requests) == 1


def test_mirror_is_tried_first(server, tmp_path, monkeypatch):
    mirrored = server.add("/mirror/w.h5", BODY)
    upstream = server.add("/upstream/w.h5", BODY)
    monkeypatch.setenv("SEGSUITE_MIRROR", server.url("/mirror"))
    registry = Registry.from_dict(tiny_registry([file_entry("w.h5", BODY, [server.url("/upstream/w.h5")])]))
    manager = ModelManager(home=tmp_path / "home", registry=registry, settings=FAST)
    manager.ensure("tiny")
    assert len(mirrored.requests) == 1 and upstream.requests == []


def test_mirror_without_the_file_falls_back_to_upstream(server, tmp_path):
    upstream = server.add("/upstream/w.h5", BODY)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/upstream/w.h5")])],
                           mirror=server.url("/empty-mirror"))
    manager.ensure("tiny")
    assert len(upstream.requests) == 1


def test_500_then_success(server, tmp_path):
    route = server.add("/w.h5", BODY, statuses=[500, 503])
    sleeps = []
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    manager._sleep = sleeps.append
    assert (manager.ensure("tiny") / "w.h5").read_bytes() == BODY
    assert len(route.requests) == 3
    assert sleeps == [0.01, 0.02]          # exponential backoff, capped by backoff_max


def test_persistent_500_gives_up_and_tries_the_next_url(server, tmp_path):
    broken = server.add("/a/w.h5", BODY, statuses=[500] * 10)
    good = server.add("/b/w.h5", BODY)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/a/w.h5"), server.url("/b/w.h5")])])
    manager.ensure("tiny")
    assert len(broken.requests) == FAST.retries + 1 and len(good.requests) == 1


def test_connection_dropped_mid_body_is_resumed_with_range(server, tmp_path):
    route = server.add("/w.h5", BODY, cut_after=[70_000])
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    assert (manager.ensure("tiny") / "w.h5").read_bytes() == BODY
    assert route.requests[0] is None
    assert route.requests[1].startswith("bytes=") and int(route.requests[1][6:].rstrip("-")) > 0


def test_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    route = server.add("/w.h5", BODY)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    part = manager.home / "downloads" / "tiny--w.h5.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:12345])
    assert (manager.ensure("tiny") / "w.h5").read_bytes() == BODY
    assert route.requests == ["bytes=12345-"]
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    route = server.add("/w.h5", BODY, cut_after=[70_000], honour_range=False)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    assert (manager.ensure("tiny") / "w.h5").read_bytes() == BODY
    assert route.requests[1] is not None and route.served == 2     # asked for a range, got the whole file


def test_truncated_body_without_length_is_retried_then_fails_cleanly(server, tmp_path):
    route = server.add("/w.h5", BODY, content_length=False, honour_range=False, cut_after=[50_000] * 10)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    with pytest.raises(ModelError) as caught:
        manager.ensure("tiny")
    message = str(caught.value)
    assert server.url("/w.h5") in message and "body ended after 50000" in message
    assert "segsuite models install tiny --from FILE" in message
    assert len(route.requests) == FAST.retries + 1
    assert not manager.path("tiny").exists() and not manager.is_installed("tiny")


def test_truncated_body_of_unknown_size_fails_the_checksum(server, tmp_path):
    server.add("/w.h5", BODY, content_length=False, cut_after=[50_000] * 10)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")], size=None)])
    with pytest.raises(ModelError, match="does not match"):
        manager.ensure("tiny")
    assert leftovers(manager) == []


def test_wrong_checksum_leaves_nothing_and_no_part_is_reused(server, tmp_path):
    bad = bytes(len(BODY))                              # same size, wrong bytes
    route = server.add("/w.h5", bad)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    with pytest.raises(ModelError, match="sha256 .* does not match") as caught:
        manager.ensure("tiny")
    assert "segsuite models install tiny --from FILE" in str(caught.value)
    assert leftovers(manager) == []
    route.body = BODY                                   # the server is fixed
    assert (manager.ensure("tiny") / "w.h5").read_bytes() == BODY
    assert route.requests == [None, None]               # the second download started from zero


def test_wrong_size_is_refused(server, tmp_path):
    server.add("/w.h5", BODY + b"extra")
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    with pytest.raises(ModelError, match="expected 200000"):
        manager.ensure("tiny")
    assert leftovers(manager) == []


CONCURRENT = """
import sys
from segsuite.models import ModelManager, Registry
from segsuite.models.config import DownloadSettings
settings = DownloadSettings(retries=1, backoff=0.01, timeout=20, chunk_size=4096, min_free_bytes=0)
manager = ModelManager(home=sys.argv[1], registry=Registry.load(sys.argv[2]), mirror="", settings=settings)
print(manager.ensure("tiny"))
"""


def test_two_processes_downloading_the_same_model(server, tmp_path):
    route = server.add("/w.h5", BODY, chunk_delay=0.005)      # ~0.25 s per download: they overlap
    registry = write_registry(tmp_path / "registry.json",
                              tiny_registry([file_entry("w.h5", BODY, [server.url("/w.h5")])]))
    home = tmp_path / "home"
    env = dict(os.environ, PYTHONPATH=str(REPO / "SegmentationSuite"))
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(home), str(registry)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    assert {out.strip() for out, _ in results} == {str(home / "models" / "tiny")}
    assert (home / "models" / "tiny" / "w.h5").read_bytes() == BODY
    assert route.served == 1                     # the second process waited and reused the first's work
    manager = ModelManager(home=home, registry=Registry.load(registry), mirror="", settings=FAST)
    assert manager.verify("tiny") == []
    assert leftovers(manager) == ["models/tiny/.segsuite-model.json", "models/tiny/w.h5"]


def _zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar(members: dict, links: dict = {}) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def folder_entry(url: str, archive="zip") -> dict:
    return {"name": FOLDER, "kind": "folder", "size": None, "sha256": None, "verify": "first-use",
            "require": ["dataset.json", "plans.json", "fold_*/checkpoint_*.pth"],
            "sources": [{"url": url, "archive": archive, "member": f"*{FOLDER}"}]}


def nnunet_members(prefix="release/", weights=b"weights") -> dict:
    return {f"{prefix}{FOLDER}/dataset.json": b"{}", f"{prefix}{FOLDER}/plans.json": b"{}",
            f"{prefix}{FOLDER}/fold_all/checkpoint_final.pth": weights,
            "__MACOSX/release/._junk": b"mac"}


def test_zip_with_dotdot_member_is_rejected(server, tmp_path):
    members = nnunet_members()
    members["../escaped.txt"] = b"gotcha"
    server.add("/m.zip", _zip(members))
    manager = make_manager(tmp_path, [folder_entry(server.url("/m.zip"))])
    with pytest.raises(ModelError, match="unsafe path '../escaped.txt'"):
        manager.ensure("tiny")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert leftovers(manager) == []


@pytest.mark.parametrize("members, links, reason", [
    ({"/abs/x": b"x"}, {}, "unsafe path '/abs/x'"),
    ({}, {f"release/{FOLDER}/fold_all/link.pth": "/etc/passwd"}, "links or special files"),
])
def test_tar_with_absolute_path_or_symlink_is_rejected(server, tmp_path, members, links, reason):
    server.add("/m.tar.gz", _tar({**nnunet_members(), **members}, links))
    manager = make_manager(tmp_path, [folder_entry(server.url("/m.tar.gz"), archive="tar.gz")])
    with pytest.raises(ModelError, match=reason):
        manager.ensure("tiny")
    assert leftovers(manager) == []


def test_folder_from_zip_is_trusted_on_first_use_and_enforced_after(server, tmp_path):
    route = server.add("/m.zip", _zip(nnunet_members()))
    manager = make_manager(tmp_path, [folder_entry(server.url("/m.zip"))])
    assert "not yet recorded" in manager.status("tiny").trust
    folder = manager.ensure("tiny") / FOLDER
    assert (folder / "fold_all" / "checkpoint_final.pth").read_bytes() == b"weights"
    assert sorted(p.name for p in folder.rglob("*")) == ["checkpoint_final.pth", "dataset.json", "fold_all",
                                                         "plans.json"]
    assert "recorded" in manager.status("tiny").trust and "not yet" not in manager.status("tiny").trust
    assert not list((manager.home / "downloads").iterdir())            # the archive is not kept
    # upstream changes the weights: refused until the user forgets the first-use record
    manager.remove("tiny")
    route.body = _zip(nnunet_members(weights=b"other weights"))
    with pytest.raises(ModelError, match="first install"):
        manager.ensure("tiny")
    assert not manager.path("tiny").exists()
    manager.remove("tiny", forget=True)
    assert (manager.ensure("tiny") / FOLDER / "fold_all" / "checkpoint_final.pth").read_bytes() == b"other weights"


def test_verify_detects_a_changed_folder(server, tmp_path):
    server.add("/m.zip", _zip(nnunet_members()))
    manager = make_manager(tmp_path, [folder_entry(server.url("/m.zip"))])
    folder = manager.ensure("tiny") / FOLDER
    (folder / "fold_all" / "extra.pth").write_bytes(b"x")
    assert manager.verify("tiny")


def test_folder_lacking_required_files_is_refused(server, tmp_path):
    members = nnunet_members()
    del members[f"release/{FOLDER}/plans.json"]
    server.add("/m.zip", _zip(members))
    manager = make_manager(tmp_path, [folder_entry(server.url("/m.zip"))])
    with pytest.raises(ModelError, match="lacks plans.json"):
        manager.ensure("tiny")


def test_tar_member_verified_by_its_known_checksum(server, tmp_path):
    """Like ScLimbic: the tarball has no checksum, the .h5 inside has one; two files from one download."""
    tarball = server.add("/sclimbic.tar.gz", _tar({"sclimbic/models/w.h5": BODY, "sclimbic/models/w.ctab": b"0 Unknown",
                                                  "sclimbic/bin/tool": b"binary"}))
    archive = {"url": server.url("/sclimbic.tar.gz"), "archive": "tar.gz"}
    files = [{"name": "w.h5", "size": len(BODY), "sha256": file_entry("w.h5", BODY, [])["sha256"],
              "sources": [{"url": server.url("/missing.h5")}, {**archive, "member": "*models/w.h5"}]},
             {"name": "w.ctab", "size": None, "sha256": None, "verify": "first-use",
              "sources": [{**archive, "member": "*models/w.ctab"}]}]
    manager = make_manager(tmp_path, files)
    folder = manager.ensure("tiny")
    assert (folder / "w.h5").read_bytes() == BODY and (folder / "w.ctab").read_bytes() == b"0 Unknown"
    assert tarball.served == 1
    assert sorted(p.name for p in folder.iterdir()) == [".segsuite-model.json", "w.ctab", "w.h5"]


def test_tar_member_with_wrong_checksum_is_refused(server, tmp_path):
    server.add("/t.tar.gz", _tar({"models/w.h5": bytes(len(BODY))}))
    files = [file_entry("w.h5", BODY, [])]
    files[0]["sources"] = [{"url": server.url("/t.tar.gz"), "archive": "tar.gz", "member": "*models/w.h5"}]
    manager = make_manager(tmp_path, files)
    with pytest.raises(ModelError, match="does not match"):
        manager.ensure("tiny")
    assert leftovers(manager) == []


def test_not_enough_disk_space_is_a_clear_error(server, tmp_path, monkeypatch):
    server.add("/w.h5", BODY)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/w.h5")])])
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(ModelError, match="not enough free disk space .*SEGSUITE_HOME"):
        manager.ensure("tiny")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied")])
def test_write_failure_is_a_clear_error_and_not_retried(server, tmp_path, monkeypatch, code, words):
    route = server.add("/a/w.h5", BODY)
    other = server.add("/b/w.h5", BODY)
    manager = make_manager(tmp_path, [file_entry("w.h5", BODY, [server.url("/a/w.h5"), server.url("/b/w.h5")])])

    def failing_open(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[0]))

    monkeypatch.setattr(download_module, "open", failing_open, raising=False)
    with pytest.raises(ModelError, match=f"cannot write .*{words}.*SEGSUITE_HOME"):
        manager.ensure("tiny")
    assert len(route.requests) == 1 and other.requests == []      # a local problem: no other URL helps


def test_unwritable_cache_folder_is_a_clear_error(server, tmp_path):
    server.add("/w.h5", BODY)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    registry = Registry.from_dict(tiny_registry([file_entry("w.h5", BODY, [server.url("/w.h5")])]))
    manager = ModelManager(home=blocker / "home", registry=registry, mirror="", settings=FAST)
    with pytest.raises(ModelError, match="cannot write .*SEGSUITE_HOME"):
        manager.ensure("tiny")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_cache_folder_is_a_clear_error(server, tmp_path):
    server.add("/w.h5", BODY)
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    try:
        registry = Registry.from_dict(tiny_registry([file_entry("w.h5", BODY, [server.url("/w.h5")])]))
        manager = ModelManager(home=home, registry=registry, mirror="", settings=FAST)
        with pytest.raises(ModelError, match="permission denied"):
            manager.ensure("tiny")
    finally:
        home.chmod(0o700)


def test_sessions_take_proxies_from_the_environment():
    assert new_session().trust_env is True
