"""The QC mosaic, and the review report built from a 20-subject cohort of ../shared scans (real SAMSEG and
FreeSurfer segmentations), rendered by headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from morphometry_cohort import make_cohort, morphometry_of_cohort  # noqa: E402

from segsuite.morphometry.group import build_group_tables  # noqa: E402
from segsuite.morphometry.report import subject_mosaic  # noqa: E402
from segsuite.review.build import build_review  # noqa: E402
from segsuite.review.page import read_page_data  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(*arguments, timeout=120):
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    command = [CHROMIUM, "--headless", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
               "--no-first-run", "--user-data-dir=" + os.environ.get("TMPDIR", "/tmp") + f"/segsuite-chromium-{os.getpid()}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run(command + list(arguments), capture_output=True, text=True, timeout=timeout)


def test_mosaic_shows_the_outline_in_freesurfer_colours():
    labels = np.zeros((30, 30, 30), dtype=np.int32)
    labels[8:22, 8:22, 8:22] = 17  # Left-Hippocampus: (220, 216, 20)
    image = np.random.default_rng(0).uniform(0, 100, labels.shape).astype(np.float32)
    mime, data = subject_mosaic(image, labels, np.eye(4), size=60, image_format="png")
    from PIL import Image
    import io

    picture = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert mime == "image/png" and picture.shape == (60, 180, 3)
    assert np.any(np.all(picture == (220, 216, 20), axis=-1))


@pytest.mark.slow
def test_report_of_20_shared_scans_renders_in_headless_chromium(shared, tmp_path):
    shared("data", "samseg", "t1_crop_2mm")
    shared("fixtures", "synthseg", "runs")
    import pandas as pd

    rows, sources = morphometry_of_cohort(make_cohort(shared("")))
    tables = build_group_tables(pd.DataFrame(rows))
    report = tmp_path / "qc.html"
    built = build_review(report, sources, tables)
    size = built["bytes"]
    assert size == report.stat().st_size and size < 2_000_000
    assert built["entries"] == 20 and built["per_subject"] < 400_000
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    # flagged first: the heavy-noise subjects and the low SynthSeg QC are at the top
    data = read_page_data(report)
    ranked = [s["p"] for s in data["subjects"]]
    flagged = tables.ranking[tables.ranking["n_flags"] > 0]["participant_id"].tolist()
    assert flagged and sorted(ranked[:len(flagged)]) == sorted(flagged) and "sub-014mnesample" in flagged
    dom = _chromium("--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="yes"' in dom.stdout  # the page's script ran to its end
    assert dom.stdout.count('loading="lazy"') >= 20  # the views load when seen
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    screenshot = tmp_path / "qc.png"
    shot = _chromium("--window-size=1400,1800", f"--screenshot={screenshot}", report.as_uri())
    assert shot.returncode == 0 and screenshot.stat().st_size > 50_000, shot.stderr[-2000:]
