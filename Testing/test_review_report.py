"""The reviewer's report driven in headless Chromium through chromedriver (Selenium): open a subject,
enlarge its views, rate three subjects with the keys, export, reload, import, read the exported TSV;
then `segsuite group --qc-ratings` with that file leaves the failed subject out of the tables and fits."""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from segsuite.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/lib/chromium/chromedriver"
                                                if os.path.exists("/usr/lib/chromium/chromedriver") else None)
SUBJECTS = 6
LOW_QC = {3, 4, 5, 6}  # their SynthSeg QC is below 0.65: flagged by the automatic rules


def _phantom_scan(seed: int, scale: float):
    """A head with GM shell, WM core, a ventricle and a left hippocampus; ``scale`` sets its size."""
    rng = np.random.default_rng(seed)
    shape = (64, 72, 60)
    grid = np.indices(shape).astype(np.float64) - (np.array(shape)[:, None, None, None] - 1) / 2
    radius = np.sqrt((grid ** 2).sum(axis=0)) / scale
    labels = np.zeros(shape, dtype=np.int32)
    labels[radius < 22] = 3
    labels[radius < 15] = 2
    labels[(radius < 7) & (grid[0] > 0)] = 4
    labels[(np.abs(grid[0] + 9) < 3) & (np.abs(grid[1]) < 6) & (np.abs(grid[2] + 2) < 3)] = 17  # patient's left
    image = rng.normal(0, 4, shape)
    image[radius < 27] += 40
    for value, mean in ((3, 60), (2, 110), (4, 20), (17, 70)):
        image[labels == value] = mean + rng.normal(0, 4, int((labels == value).sum()))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -np.array(shape) / 2
    return image.astype(np.float32), labels, affine


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six subjects through `segsuite morphometry`, then `segsuite group --report`."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("review")
    tables = []
    for number in range(1, SUBJECTS + 1):
        image, labels, affine = _phantom_scan(number, 0.9 + 0.04 * number)
        folder = root / f"sub-{number:02d}"
        folder.mkdir()
        nib.save(nib.Nifti1Image(image, affine), str(folder / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(folder / "seg.nii.gz"))
        qc = folder / "qc.csv"
        score = 0.4 if number in LOW_QC else 0.9
        qc.write_text(f"subject,general white matter,general grey matter\nsub-{number:02d},{score},{score}\n")
        assert main(["morphometry", "--i", str(folder / "t1.nii.gz"), "--seg", str(folder / "seg.nii.gz"), "--qc", str(qc),
                     "--o", str(folder), "--prefix", f"sub-{number:02d}", "--participant", f"sub-{number:02d}"]) == 0
        tables.append(str(folder / f"sub-{number:02d}_morphometry.tsv"))
    assert main(["group", *tables, "--o", str(root / "group"), "--report"]) == 0
    return {"root": root, "tables": tables, "report": root / "group" / "group_qc_report.html"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--disable-gpu", "--window-size=1400,1000", "--no-first-run",
                     f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(argument)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(60)
    yield driver, downloads
    driver.quit()


def _wait(condition, timeout=20.0, what="the page"):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _progress(driver) -> tuple[int, int]:
    element = driver.find_element("id", "progress")
    return int(element.get_attribute("data-done")), int(element.get_attribute("data-total"))


def test_rate_export_reload_import_in_chromium_and_the_group_step_obeys(cohort, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver, downloads = browser
    driver.get(cohort["report"].as_uri())
    _wait(lambda: driver.find_element("tag name", "body").get_attribute("data-ready") == "yes")
    assert not [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert _progress(driver) == (0, SUBJECTS)
    assert "Radiological convention" in driver.find_element("class name", "convention").text
    driver.find_element("id", "rater").send_keys("tester")

    # open the first subject's views enlarged: the image at its own resolution, zoomed whole
    panel = driver.find_elements("css selector", "#subjects .panel")[0]
    first_id = panel.find_element("xpath", "./ancestor::section").get_attribute("data-id")
    panel.find_element("css selector", ".stack").click()
    modal = driver.find_element("id", "modal")
    assert "open" in modal.get_attribute("class")
    base = modal.find_element("css selector", "img.base")
    _wait(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", base), what="the view")
    natural = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", base)
    shown = driver.execute_script("var r=arguments[0].getBoundingClientRect();return [r.width, r.height]", base)
    assert natural[0] >= 3 * 60 and shown[0] >= natural[0] and abs(shown[0] / natural[0] - shown[1] / natural[1]) < 0.02
    assert modal.find_elements("css selector", "img.ov") and "Left-Hippocampus" in modal.text  # overlay and legend
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    assert "open" not in driver.find_element("id", "modal").get_attribute("class")

    # rate three subjects with the keys: Fail (+ a note), Pass, Artifact
    keys = ActionChains(driver)
    keys.send_keys("f").send_keys("k").send_keys("n").perform()
    ActionChains(driver).send_keys("ghosting").send_keys(Keys.ENTER).perform()
    ActionChains(driver).send_keys("j").send_keys("p").send_keys("a").perform()
    assert _progress(driver) == (3, SUBJECTS)
    statuses = [e.text for e in driver.find_elements("css selector", "#subjects .panel .status")]
    assert statuses[:4] == ["fail", "pass", "artifact", "unrated"]
    ids = [e.get_attribute("data-id") for e in driver.find_elements("css selector", "#subjects section.card")]
    assert ids[0] == first_id

    # next unrated jumps to the fourth
    ActionChains(driver).send_keys("u").perform()
    current = driver.find_element("css selector", "#subjects .panel.current")
    assert current.find_element("xpath", "./ancestor::section").get_attribute("data-id") == ids[3]

    driver.find_element("id", "export").click()
    exported = _wait(lambda: next(iter(downloads.glob("*_ratings.tsv")), None), what="the exported TSV")
    _wait(lambda: exported.stat().st_size > 0 and not list(downloads.glob("*.crdownload")), what="the download")
    with open(exported, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["participant_id", "session_id", "engine", "rating", "note", "rater", "time"]
    assert [(r["participant_id"], r["rating"]) for r in rows] == list(zip(ids[:3], ["fail", "pass", "artifact"]))
    assert rows[0]["note"] == "ghosting" and all(r["rater"] == "tester" and r["engine"] == "morphometry" for r in rows)
    assert all(r["session_id"] == "n/a" and r["time"].endswith("Z") for r in rows)

    # kept in the browser across a reload; gone from a fresh browser store; back by import
    driver.refresh()
    _wait(lambda: driver.find_element("tag name", "body").get_attribute("data-ready") == "yes")
    assert _progress(driver) == (3, SUBJECTS)
    driver.execute_script("localStorage.clear()")
    driver.refresh()
    _wait(lambda: driver.find_element("tag name", "body").get_attribute("data-ready") == "yes")
    assert _progress(driver) == (0, SUBJECTS)
    driver.find_element("id", "import").send_keys(str(exported))
    _wait(lambda: _progress(driver) == (3, SUBJECTS), what="the import")
    statuses = [e.text for e in driver.find_elements("css selector", "#subjects .panel .status")]
    assert statuses[:3] == ["fail", "pass", "artifact"]
    assert driver.find_elements("css selector", "#subjects .panel")[0].find_element(
        "css selector", "input.note").get_attribute("value") == "ghosting"

    # the group step obeys the ratings
    ratings = tmp_path / "ratings.tsv"
    shutil.copy(exported, ratings)
    out = tmp_path / "group"
    assert main(["group", *cohort["tables"], "--o", str(out), "--qc-ratings", str(ratings)]) == 0
    check_tables_obey(out, cohort["tables"], failed=ids[0], kept=ids[1:3])


def check_tables_obey(out: Path, table_paths, failed: str, kept) -> None:
    import pandas as pd

    from segsuite.morphometry.group import read_subject_tables, residual_correction

    wide = pd.read_csv(out / "group_volumes.tsv", sep="\t", na_values=["n/a"], keep_default_na=False).set_index("participant_id")
    flags = pd.read_csv(out / "group_qc_flags.tsv", sep="\t", na_values=["n/a"], keep_default_na=False).set_index("participant_id")
    fit = pd.read_csv(out / "group_tiv-residual_fit.tsv", sep="\t").set_index("region")
    residual = pd.read_csv(out / "group_volumes_tiv-residual.tsv", sep="\t", na_values=["n/a"],
                           keep_default_na=False).set_index("participant_id")
    regions = [c for c in fit.index]
    assert wide.loc[failed, "review_rating"] == "fail"
    assert wide.loc[failed, "review_status"].startswith("excluded: rated fail by tester") and "ghosting" in wide.loc[failed, "review_status"]
    assert wide.loc[failed, ["TIV"] + regions].isna().all() and residual.loc[failed, regions].isna().all()
    for name in kept:
        assert wide.loc[name, "review_status"].startswith("kept: rated") and np.isfinite(wide.loc[name, "TIV"])
    unrated_flagged = [p for p in flags.index if flags.loc[p, "n_flags"] > 0 and p not in [failed, *kept]]
    assert unrated_flagged, "the test needs a flagged subject left unrated"
    for name in unrated_flagged:
        assert wide.loc[name, "review_status"] == f"flagged by the automatic rules, not rated: {flags.loc[name, 'reasons']}"
    # the fits are the fits over the other subjects
    original = read_subject_tables(table_paths).set_index("participant_id")
    others = original.drop(index=failed)
    _, slopes, intercepts = residual_correction(others[regions].to_numpy(float), others["TIV"].to_numpy(float))
    # the intercepts are written to 0.01 mm3 (table_values)
    assert np.allclose(fit.loc[regions, "slope"], slopes, equal_nan=True)
    assert np.allclose(fit.loc[regions, "intercept"], intercepts, rtol=0, atol=0.005 + 1e-9, equal_nan=True)
    assert (fit.loc[regions, "n"] == len(others)).all()
    full = residual_correction(original[regions].to_numpy(float), original["TIV"].to_numpy(float))[1]
    assert not np.allclose(full, slopes), "leaving the failed subject out must change the fits"


def test_ratings_file_mistakes_are_one_line_errors(cohort, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("participant_id\tengine\trating\nsub-01\tmorphometry\tgreat\n")
    assert main(["group", *cohort["tables"], "--o", str(tmp_path / "g"), "--qc-ratings", str(bad)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--qc-ratings" in error[0] and "line 2" in error[0] and "pass, fail" in error[0]
    assert not (tmp_path / "g").exists()
    bad.write_text("subject\tscore\n")
    assert main(["group", *cohort["tables"], "--o", str(tmp_path / "g"), "--qc-ratings", str(bad)]) == 1
    assert "not a ratings TSV" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_report_views_are_radiological_at_native_resolution(cohort):
    """The report's view files: the hippocampus (patient's left) on the screen's right of axial views,
    the tiles at the phantom's 1 mm grid (64 x 72 x 60), orientation letters on each."""
    import io

    from PIL import Image

    from segsuite.review.page import read_page_data

    data = read_page_data(cohort["report"])
    view = data["subjects"][0]["views"][0]
    folder = cohort["report"].parent
    fill = np.asarray(Image.open(io.BytesIO((folder / view["f"]["fill"]).read_bytes())).convert("RGBA"))
    assert fill.shape[:2] == (view["h"], view["w"])
    sizes = {plane: (h, w) for plane, _, _, _, h, w in view["tiles"]}
    assert sizes == {"axial": (72, 64), "coronal": (60, 64), "sagittal": (60, 72)}
    hippocampus = np.all(fill[..., :3] == (220, 216, 20), axis=-1) & (fill[..., 3] == 255)
    for plane, _, top, left, h, w in view["tiles"]:
        found = hippocampus[top:top + h, left:left + w]
        if plane == "axial" and found.any():
            assert np.nonzero(found)[1].mean() > w / 2
    assert data["legends"]["morphometry"]["17"][0] == "Left-Hippocampus"


def test_sclimbic_z_scores_and_confidences_join_the_group_tables_and_flags(cohort, tmp_path):
    """ScLimbic's own case tables (segsuite sclimbic --write_qa_stats) given to segsuite group: z_* and
    conf_* columns per participant (cases named after the input files), |z| > --z flagged with its rule."""
    import pandas as pd

    from segsuite.sclimbic.stats import format_case_csv

    names = ["Left-Nucleus-Accumbens", "Right-Fornix"]
    zscores = tmp_path / "zqa_scores_all.csv"
    zscores.write_text(format_case_csv(names, {f"sub-{n:02d}_T1w": [4.2 if n == 2 else 0.5, -0.3] for n in range(1, 7)}))
    confidences = tmp_path / "confidences_all.csv"
    confidences.write_text(format_case_csv(names, {f"sub-{n:02d}_T1w": [0.81, 0.9] for n in range(1, 7)}))
    out = tmp_path / "group"
    assert main(["group", *cohort["tables"], str(zscores), str(confidences), "--o", str(out), "--z", "3"]) == 0
    quality = pd.read_csv(out / "group_quality.tsv", sep="\t").set_index("participant_id")
    assert quality.loc["sub-02", "z_Left-Nucleus-Accumbens"] == pytest.approx(4.2)
    assert quality.loc["sub-05", "conf_Right-Fornix"] == pytest.approx(0.9)
    wide = pd.read_csv(out / "group_volumes.tsv", sep="\t")
    assert not [c for c in wide.columns if c.startswith(("z_", "conf_"))]  # not volumes
    flags = pd.read_csv(out / "group_qc_flags.tsv", sep="\t", keep_default_na=False).set_index("participant_id")
    assert "ScLimbic |z| Left-Nucleus-Accumbens > 3 (4.2)" in flags.loc["sub-02", "reasons"]
    assert "ScLimbic" not in "".join(flags.drop(index="sub-02")["reasons"])


def test_engine_filter_selects_a_family_of_series_in_chromium(browser, tmp_path):
    """The engine menu offers `scepi` beside each `scepi[...]` series: choosing the family shows every
    series' panel and nothing else; choosing one series shows that one."""
    from segsuite.review.page import files_folder, write_review_report
    from segsuite.review.views import ViewSource, write_views

    driver, _ = browser
    report = tmp_path / "group_qc_report.html"
    image, labels, affine = _phantom_scan(1, 1.0)
    entries = [write_views(ViewSource("sub-01", "", engine, (image, affine), (labels, affine)), files_folder(report))
               for engine in ("scepi[task-a]", "scepi[task-b]", "sclimbic")]
    write_review_report(report, [{"participant_id": "sub-01", "session_id": "", "rank": 1, "n_flags": 0,
                                  "reasons": "", "values": {}, "views": entries}])
    driver.get(report.as_uri())
    _wait(lambda: driver.find_element("tag name", "body").get_attribute("data-ready") == "yes")
    options = [o.get_attribute("value") for o in driver.find_elements("css selector", "#engine option")]
    assert options == ["", "scepi", "scepi[task-a]", "scepi[task-b]", "sclimbic"]

    def shown(engine):
        driver.execute_script("var e=document.getElementById('engine');e.value=arguments[0];"
                              "e.dispatchEvent(new Event('input'));", engine)
        return [p.get_attribute("data-engine") for p in driver.find_elements("css selector", "#subjects .panel")]

    assert shown("scepi") == ["scepi[task-a]", "scepi[task-b]"]
    assert shown("scepi[task-b]") == ["scepi[task-b]"]
    assert shown("") == ["scepi[task-a]", "scepi[task-b]", "sclimbic"]
