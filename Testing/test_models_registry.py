"""The shipped model registry, git-annex URL computation, settings resolution."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SHARED
from segsuite.errors import ModelError, SegSuiteError
from segsuite.models import ModelManager, Registry, annex_key, annex_url
from segsuite.models.config import config_path, download_settings, mirror_url, model_home
from segsuite.models.registry import REGISTRY_PATH, annex_extension

REPO = Path(__file__).resolve().parents[1]
ANNEX = "https://surfer.nmr.mgh.harvard.edu/pub/dist/freesurfer/repo/annex.git/annex/objects"
# The table of /work/shared/reference/synthseg.md (file, bytes, sha256, dir).
SYNTHSEG_TABLE = [
    ("synthseg_2.0.h5", 53079152, "f190bfd742f450ef3ca2c9df9ed4d2e0232b3a74471da5e51b7770bacdf80c3e", "bee/241"),
    ("synthseg_parc_2.0.h5", 53090840, "83bb1de76fb6f173c6dacacd433f81209fc6abb1dbc179a930ec06ecabbeb684", "c04/403"),
    ("synthseg_qc_2.0.h5", 49878004, "fb92e37daa0842bdd8a03bc06a3b36b0d38810e31c714659cedd09119c0abfb7", "3ac/fe4"),
    ("synthseg_robust_2.0.h5", 214606800, "7bc30bf5c3d204f20c4a6cb5a283aedbcab6af1de927cda783f59b67d19cb01c", "187/db4"),
]
MODEL_IDS = ["synthseg-2.0", "synthseg-parc-2.0", "synthseg-qc-2.0", "synthseg-robust-2.0", "synthseg-1.0",
             "sclimbic", "sc-epi", "mni-icbm152-2009a", "sample-t1"]


@pytest.mark.parametrize("name, size, sha256, folder", SYNTHSEG_TABLE)
def test_annex_url_reproduces_the_reference_table(name, size, sha256, folder):
    key = annex_key(name, size, sha256)
    assert key == f"SHA256E-s{size}--{sha256}.0.h5"       # git-annex keeps ".0.h5" for "..._2.0.h5"
    assert annex_url(ANNEX, key) == f"{ANNEX}/{folder}/{key}/{key}"


def test_table_above_matches_the_reference_document():
    reference = SHARED / "reference" / "synthseg.md"
    if not reference.exists():
        pytest.skip(f"needs {reference}")
    rows = re.findall(r"^\| (synthseg\S*\.h5) \| (\d+) \| ([0-9a-f]{64}) \| (\w{3}/\w{3}) \|$",
                      reference.read_text(), flags=re.M)
    assert [(n, int(s), h, d) for n, s, h, d in rows] == SYNTHSEG_TABLE


@pytest.mark.parametrize("name, extension", [
    ("synthseg_2.0.h5", ".0.h5"),
    ("sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5", ".h5"),     # "nstd32-50" is too long and not alphanumeric
    ("model.tar.gz", ".tar.gz"),
    ("a.b.c.d", ".c.d"),                                      # at most two extensions
    ("README", ""),
    ("weights.checkpoint", ""),                               # longer than 4 characters
])
def test_annex_extension_rule(name, extension):
    assert annex_extension(name) == extension


def test_shipped_registry_has_every_model_with_licence_citation_and_checks():
    registry = Registry.load()
    assert [spec.id for spec in registry] == MODEL_IDS
    for spec in registry:
        assert spec.licence.get("name") and spec.licence.get("url", "").startswith("https://"), spec.id
        assert spec.citations and all("doi:" in c for c in spec.citations), spec.id
        for file in spec.files:
            assert file.sources and all(s.url.startswith("https://") for s in file.sources)
            assert file.sha256 or file.note, f"{spec.id}/{file.name}: an unknown sha256 must be explained"


def test_shipped_registry_urls_for_synthseg_2_use_the_computed_annex_dirs():
    registry = Registry.load()
    urls = {f.name: f.sources[0].url for spec in registry for f in spec.files}
    for name, size, sha256, folder in SYNTHSEG_TABLE:
        assert urls[name] == f"{ANNEX}/{folder}/SHA256E-s{size}--{sha256}.0.h5/SHA256E-s{size}--{sha256}.0.h5"


def test_standard_file_names_engines_rely_on():
    registry = Registry.load()
    names = {spec.id: [f.name for f in spec.files] for spec in registry}
    assert names["synthseg-2.0"] == ["synthseg_2.0.h5"]
    assert names["synthseg-1.0"] == ["synthseg_1.0.h5"]
    assert names["sclimbic"] == ["sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5", "sclimbic.ctab", "sclimbic.volstats.csv"]
    assert names["sc-epi"] == ["nnUNetTrainer__nnUNetPlans__3d_fullres"]
    sclimbic = registry.get("sclimbic").files[0]
    assert sclimbic.sha256 == "38ce0c0982d38a7039b5ed27286bbed9d3320718c7e7cdee5f42f2bc521d3e82"
    assert sclimbic.size == 3296904
    tarball = [s for s in sclimbic.sources if s.archive]
    assert tarball and tarball[0].url.endswith("sclimbic-linux-20210725.tar.gz")


def test_sclimbic_h5_in_shared_models_matches_the_registry(shared):
    from segsuite.models.download import sha256_of

    path = shared("models", "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5")
    spec = Registry.load().get("sclimbic").files[0]
    assert path.stat().st_size == spec.size and sha256_of(path) == spec.sha256


def test_registry_is_package_data():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'segsuite = \[[^\]]*"models/\*\.json"', text)
    assert REGISTRY_PATH.parent.name == "models" and REGISTRY_PATH.exists()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(sha256=None), "verify"),
    (lambda f: f.update(sha256="ABC"), "64 lowercase hex"),
    (lambda f: f.update(name="../evil"), "bad file name"),
    (lambda f: f.update(sources=[]), "no sources"),
    (lambda f: f["sources"][0].update(archive="rar", member="x"), "archive must be"),
    (lambda f: f["sources"][0].update(archive="zip"), "needs a member"),
])
def test_invalid_registries_are_refused(change, message):
    entry = {"name": "w.h5", "size": 1, "sha256": "0" * 64, "sources": [{"url": "http://127.0.0.1/w.h5"}]}
    change(entry)
    with pytest.raises(ModelError, match=message):
        Registry.from_dict({"models": [{"id": "x", "files": [entry]}]})


def test_unknown_model_id_names_the_known_ones():
    with pytest.raises(ModelError, match="unknown model 'nope'; known models: synthseg-2.0"):
        Registry.load().get("nope")


def test_home_from_environment_then_config_then_platform(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSUITE_HOME", str(tmp_path / "env-home"))
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"home": str(tmp_path / "config-home"), "mirror": "https://mirror.example/m"}))
    monkeypatch.setenv("SEGSUITE_CONFIG", str(config))
    assert config_path() == config
    assert model_home() == tmp_path / "env-home"
    monkeypatch.delenv("SEGSUITE_HOME")
    assert model_home() == tmp_path / "config-home"
    assert ModelManager().home == tmp_path / "config-home"
    assert mirror_url() == "https://mirror.example/m"
    monkeypatch.setenv("SEGSUITE_MIRROR", "https://other.example")
    assert mirror_url() == "https://other.example"
    config.write_text("{}")
    assert model_home().name == "segsuite"          # platformdirs' user data folder


def test_download_settings_from_config(tmp_path, monkeypatch):
    config = tmp_path / "settings.json"
    monkeypatch.setenv("SEGSUITE_CONFIG", str(config))
    assert download_settings().retries == 3
    config.write_text(json.dumps({"download": {"retries": 1, "backoff": 0.5}}))
    settings = download_settings()
    assert (settings.retries, settings.backoff) == (1, 0.5)
    assert ModelManager().settings == settings
    config.write_text(json.dumps({"download": {"retry": 1}}))
    with pytest.raises(SegSuiteError, match="unknown download settings"):
        download_settings()
    config.write_text("{not json")
    with pytest.raises(SegSuiteError, match="cannot read the settings file"):
        download_settings()
