"""Screenshots of the QC review report on real segmentations, into Screenshots/ (needs ../shared,
headless Chromium with chromedriver and selenium).

- review_report_engines.png, review_report_sclimbic_enlarged.png, review_report_samseg.png: a two-subject
  BIDS dataset (../shared's t1_crop with its real SAMSEG outputs as --derivatives, and the left-hemisphere
  stroke T1) through `segsuite bids ... participant --models sclimbic samseg-filter` with ScLimbic's real
  model, then `segsuite bids ... group`.
- review_report_morphometry.png: `segsuite morphometry` on FreeSurfer's fsaverage brain and aseg (a real
  FreeSurfer aseg at 1 mm) and on the mne sample subject's T1 and aseg, then `segsuite group --report`.

    python tools/make_review_screenshots.py [WORK_DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "Screenshots"


def segsuite(*arguments) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentationSuite"))
    done = subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", *map(str, arguments)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"segsuite {' '.join(map(str, arguments[:3]))} failed:\n{done.stderr[-3000:]}")
    print(done.stdout.strip(), done.stderr.strip()[-600:], sep="\n")


def engines_cohort(work: Path) -> Path:
    raw, samseg, output = work / "raw", work / "samseg", work / "out"
    if (output / "group_qc_report.html").is_file():
        return output
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "review", "BIDSVersion": "1.10.0"}))
    (raw / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    for subject, scan in (("sub-01", "t1_crop.nii.gz"), ("sub-02", "stroke_T1_brainextracted.nii.gz")):
        (raw / subject / "anat").mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / "data" / "t1" / scan, raw / subject / "anat" / f"{subject}_T1w.nii.gz")
    (samseg / "sub-01").mkdir(parents=True, exist_ok=True)
    (samseg / "dataset_description.json").write_text(json.dumps(
        {"Name": "SAMSEG", "BIDSVersion": "1.10.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "samseg"}]}))
    if not (samseg / "sub-01" / "seg.mgz").exists():
        os.symlink(SHARED / "data" / "samseg" / "t1_crop_1mm" / "seg.mgz", samseg / "sub-01" / "seg.mgz")
    segsuite("bids", raw, output, "participant", "--models", "sclimbic", "samseg-filter", "--skip-bids-validation",
             "--nprocs", "1", "--sclimbic-model", SHARED / "models" / "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5",
             "--derivatives", f"samseg={samseg}", "-w", work / "work")
    segsuite("bids", raw, output, "group")
    return output


def morphometry_cohort(work: Path) -> Path:
    group = work / "morph" / "group"
    if (group / "group_qc_report.html").is_file():
        return group
    freesurfer = SHARED / "data" / "freesurfer"
    tables = []
    for subject, image, seg in (("sub-fsaverage", "fsaverage_brain.mgz", "fsaverage_aseg.mgz"),
                                ("sub-mnesample", "mne_sample_T1.mgz", "mne_sample_aseg.mgz")):
        folder = work / "morph" / subject
        segsuite("morphometry", "--i", freesurfer / image, "--seg", freesurfer / seg, "--o", folder, "--prefix", subject,
                 "--participant", subject, "--overwrite")
        tables.append(folder / f"{subject}_morphometry.tsv")
    segsuite("group", *tables, "--o", group, "--report", "--overwrite")
    return group


def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--disable-gpu", "--window-size=1400,1100", "--hide-scrollbars"):
        options.add_argument(argument)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def shoot(driver, url: str, name: str, script: str = "", wait: float = 1.5) -> None:
    driver.get(url)
    time.sleep(wait)
    if script:
        driver.execute_script(script)
        time.sleep(wait)
    driver.save_screenshot(str(OUT / name))
    print("wrote", OUT / name)


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="segsuite-review-"))
    engines = engines_cohort(work)
    morph = morphometry_cohort(work)
    driver = browser()
    try:
        report = (engines / "group_qc_report.html").as_uri()
        shoot(driver, report, "review_report_engines.png",
              "document.getElementById('thumb').value='640';document.getElementById('thumb').dispatchEvent(new Event('change'));"
              "window.scrollTo(0, document.querySelector('#subjects').offsetTop-60);")
        shoot(driver, report, "review_report_sclimbic_enlarged.png",
              "var p=document.querySelector('.panel[data-engine=sclimbic] .stack');p.click();")
        shoot(driver, report, "review_report_samseg.png",
              "document.getElementById('engine').value='samseg';document.getElementById('engine').dispatchEvent(new Event('input'));"
              "document.getElementById('thumb').value='640';document.getElementById('thumb').dispatchEvent(new Event('change'));"
              "window.scrollTo(0, document.querySelector('#subjects').offsetTop-60);")
        shoot(driver, (morph / "group_qc_report.html").as_uri(), "review_report_morphometry.png",
              "document.getElementById('mode').value='fill';document.getElementById('mode').dispatchEvent(new Event('change'));"
              "window.scrollTo(0, document.querySelector('#subjects').offsetTop-60);")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
