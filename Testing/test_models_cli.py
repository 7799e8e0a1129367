"""``segsuite models ...`` in-process, with test registries (SEGSUITE_REGISTRY) and a local server."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from model_server import ModelServer, file_entry, tiny_registry, write_registry
from segsuite.cli import main
from segsuite.models import Registry, ensure

BODY = os.urandom(50_000)


@pytest.fixture
def server():
    server = ModelServer()
    yield server
    server.close()


@pytest.fixture
def tiny(tmp_path, monkeypatch, server):
    """A test registry (model 'tiny' = w.h5 from the local server) made the default one."""
    server.add("/w.h5", BODY)
    data = tiny_registry([file_entry("w.h5", BODY, [server.url("/w.h5")])])
    monkeypatch.setenv("SEGSUITE_REGISTRY", str(write_registry(tmp_path / "registry.json", data)))
    (Path(os.environ["SEGSUITE_CONFIG"])).write_text(json.dumps({"download": {"retries": 1, "backoff": 0.01}}))
    return Path(os.environ["SEGSUITE_HOME"])


def test_list_on_a_fresh_install_shows_every_model_not_installed(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines()[1:] if line.strip() and not line.startswith("Cache folder")]
    ids = [spec.id for spec in Registry.load()]
    assert [line.split()[0] for line in lines] == ids
    assert all("not installed" in line for line in lines)
    assert os.environ["SEGSUITE_HOME"] in out
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in listed] == ids and not any(m["installed"] for m in listed)
    assert next(m for m in listed if m["id"] == "sc-epi")["check"].startswith("first use")


def test_install_of_a_file_with_the_wrong_hash_fails_and_installs_nothing(tiny, tmp_path, capsys):
    wrong = tmp_path / "w.h5"
    wrong.write_bytes(bytes(len(BODY)))
    assert main(["--progress", "none", "models", "install", "tiny", "--from", str(wrong)]) == 1
    error = capsys.readouterr().err
    assert "w.h5 for tiny was refused (nothing was installed)" in error
    assert "does not match" in error and hashlib.sha256(BODY).hexdigest() in error
    assert not (tiny / "models" / "tiny").exists()
    assert not [p for p in (tiny / "models").rglob("*") if p.is_file()]


def test_install_from_file_folder_and_zip_then_verify_path_remove(tiny, tmp_path, capsys):
    given = tmp_path / "downloaded-elsewhere.h5"          # any name for a one-file model
    given.write_bytes(BODY)
    assert main(["--progress", "none", "models", "install", "tiny", "--from", str(given)]) == 0
    installed = tiny / "models" / "tiny" / "w.h5"
    assert installed.read_bytes() == BODY
    assert main(["models", "path", "tiny"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(installed.parent))
    assert main(["models", "verify"]) == 0
    assert "tiny: ok" in capsys.readouterr().out

    installed.write_bytes(BODY[:-1] + bytes([BODY[-1] ^ 0xFF]))  # corruption is found (last byte always changes)
    assert main(["models", "verify", "tiny"]) == 1
    assert "FAILED" in capsys.readouterr().out

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "w.h5").write_bytes(BODY)
    assert main(["--progress", "none", "models", "install", "tiny", "--from", str(folder)]) == 0
    assert main(["models", "verify", "tiny"]) == 0

    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("bundle/w.h5", BODY)
    assert main(["--progress", "none", "models", "install", "tiny", "--from", str(archive)]) == 0
    assert installed.read_bytes() == BODY

    assert main(["models", "remove", "tiny"]) == 0
    assert "tiny: removed" in capsys.readouterr().out
    assert not installed.parent.exists()
    assert main(["models", "path", "tiny"]) == 1
    assert "not installed; run `segsuite models download tiny`" in capsys.readouterr().err


def test_install_from_a_folder_without_the_file(tiny, tmp_path, capsys):
    assert main(["--progress", "none", "models", "install", "tiny", "--from", str(tmp_path)]) == 1
    assert "does not hold w.h5" in capsys.readouterr().err


def test_download_and_ensure(tiny, server, capsys):
    assert main(["--progress", "json", "models", "download", "tiny"]) == 0
    captured = capsys.readouterr()
    assert "SEGSUITE_PROGRESS" in captured.err and str(tiny / "models" / "tiny") in captured.out
    assert ensure("tiny") == tiny / "models" / "tiny"
    assert len(server.httpd.routes["/w.h5"].requests) == 1
    assert main(["--progress", "none", "models", "download", "tiny", "--force"]) == 0
    assert len(server.httpd.routes["/w.h5"].requests) == 2


def test_download_failure_prints_urls_and_offline_command(tiny, server, capsys):
    server.httpd.routes["/w.h5"].statuses = [404]
    assert main(["--progress", "none", "models", "download", "tiny"]) == 1
    error = capsys.readouterr().err
    assert server.url("/w.h5") + ": HTTP 404" in error
    assert "segsuite models install tiny --from FILE" in error


def test_import_freesurfer(tiny, tmp_path, monkeypatch, capsys):
    freesurfer = tmp_path / "freesurfer"
    (freesurfer / "models").mkdir(parents=True)
    monkeypatch.setenv("FREESURFER_HOME", str(freesurfer))
    assert main(["models", "import-freesurfer"]) == 1
    assert "no model files were found" in capsys.readouterr().err
    (freesurfer / "models" / "w.h5").write_bytes(BODY)
    assert main(["models", "import-freesurfer"]) == 0
    assert "tiny: imported" in capsys.readouterr().out
    assert (tiny / "models" / "tiny" / "w.h5").read_bytes() == BODY
    assert main(["models", "import-freesurfer", str(freesurfer)]) == 0
    assert "already installed" in capsys.readouterr().out
    (freesurfer / "models" / "w.h5").write_bytes(bytes(len(BODY) + 1))
    assert main(["models", "import-freesurfer", str(freesurfer)]) == 1
    assert "tiny: failed" in capsys.readouterr().out


def test_import_freesurfer_needs_a_folder(monkeypatch, capsys):
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    assert main(["models", "import-freesurfer"]) == 1
    assert "FREESURFER_HOME is not set" in capsys.readouterr().err


def test_info_shows_licence_citation_and_sources(capsys):
    assert main(["models", "info", "synthseg-robust-2.0"]) == 0
    out = capsys.readouterr().out
    assert "FreeSurfer Software License" in out and "PNAS" in out and "/187/db4/" in out


@pytest.mark.parametrize("argv", [["models"], ["models", "download"], ["models", "remove", "tiny", "--all"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2


def test_unknown_model_is_an_error(capsys):
    assert main(["--progress", "none", "models", "download", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_shipped_entries_install_from_the_real_files(tmp_path, capsys):
    """The shipped registry's sha256 values and archive member paths match the real files
    (the ScLimbic model as a plain file, the MNI template as a member of a wheel-like zip)."""
    from conftest import shared_path

    sclimbic = shared_path("models", "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5")
    template = shared_path("data", "templates", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    wheel = tmp_path / "nilearn-0.14.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(template, "nilearn/datasets/data/" + template.name)
        archive.writestr("nilearn/__init__.py", "")

    assert main(["models", "install", "mni-icbm152-2009a", "--from", str(wheel)]) == 0
    installed = ensure("mni-icbm152-2009a") / template.name
    assert installed.read_bytes() == template.read_bytes()

    folder = tmp_path / "fs_models"
    folder.mkdir()
    for name in ("sclimbic.ctab", "sclimbic.volstats.csv"):
        (folder / name).write_bytes(shared_path("models", name).read_bytes())
    (folder / sclimbic.name).write_bytes(sclimbic.read_bytes())
    assert main(["models", "install", "sclimbic", "--from", str(folder)]) == 0
    assert (ensure("sclimbic") / sclimbic.name).stat().st_size == sclimbic.stat().st_size
    assert main(["models", "verify"]) == 0
