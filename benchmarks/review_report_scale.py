"""How the review report scales: page size per subject, and headless Chromium's time to open it, show a
page, filter and jump to the next unrated, for N subjects (default 1,000 and 40,000).

Twenty synthetic subjects' views are written once; N subjects (two engines each) refer to them in turn,
so the page's JSON is the size it has for N real subjects, and the view files are what one subject
costs. Needs chromium, chromedriver and selenium.

    python benchmarks/review_report_scale.py [N ...]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SegmentationSuite"))


def _views(folder: Path) -> list[dict]:
    from segsuite.review.views import ViewSource, write_views

    rng = np.random.default_rng(0)
    entries = []
    shape = (160, 192, 160)  # a 1 mm head
    grid = np.indices(shape, dtype=np.float32) - (np.array(shape, dtype=np.float32)[:, None, None, None] - 1) / 2
    radius = np.sqrt((grid ** 2).sum(axis=0))
    del grid
    for number in range(20):
        labels = np.zeros(shape, np.int32)
        labels[radius < 70] = 3
        labels[radius < 55] = 2
        labels[(radius < 15) & (np.arange(shape[0])[:, None, None] > 80)] = 4
        image = (rng.normal(0, 6, shape) + np.choose(np.clip(labels, 0, 4), [10, 10, 110, 60, 25])).astype(np.float32)
        for engine in ("synthseg", "sclimbic"):
            source = ViewSource(f"sub-{number:05d}", "", engine, (image, np.eye(4)), (labels, np.eye(4)),
                                style=engine)
            entries.append(write_views(source, folder))
    return entries


def main(counts) -> None:
    from selenium import webdriver

    from segsuite.review.page import files_folder, write_review_report

    work = Path(tempfile.mkdtemp(prefix="review-scale-"))
    try:
        report = work / "group_qc_report.html"
        started = time.perf_counter()
        entries = _views(files_folder(report))
        views_bytes = sum(entry["bytes"] for entry in entries) / 20
        print(f"views: {views_bytes / 1e3:.0f} kB per subject (2 engines, 1 mm 160x192x160 head), "
              f"{(time.perf_counter() - started) / 40:.2f} s per view set")
        options = webdriver.ChromeOptions()
        for argument in ("--headless=new", "--disable-gpu", "--window-size=1400,1000", "--enable-precise-memory-info"):
            options.add_argument(argument)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            options.add_argument("--no-sandbox")
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(
            executable_path=shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"))
        for count in counts:
            subjects = []
            for number in range(count):
                pair = entries[2 * (number % 20): 2 * (number % 20) + 2]
                subjects.append({"participant_id": f"sub-{number:05d}", "session_id": "", "rank": number + 1,
                                 "n_flags": int(number % 17 == 0), "reasons": "spec_snr beyond 3 MADs" if number % 17 == 0 else "",
                                 "values": {"TIV": 1.4e6 + number, "spec_snr": 12.5}, "views": pair})
            size = write_review_report(report, subjects, columns=("TIV", "spec_snr"))
            clock = time.perf_counter()
            driver.get(report.as_uri())
            while driver.find_element("tag name", "body").get_attribute("data-ready") != "yes":
                time.sleep(0.05)
            opened = time.perf_counter() - clock
            clock = time.perf_counter()
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            driver.execute_script("return document.querySelectorAll('#subjects img').length")
            scrolled = time.perf_counter() - clock
            clock = time.perf_counter()
            driver.execute_script("document.getElementById('next').click()")
            paged = time.perf_counter() - clock
            clock = time.perf_counter()
            driver.execute_script("var b=document.getElementById('flagged-only');b.checked=true;b.dispatchEvent(new Event('input'))")
            filtered = time.perf_counter() - clock
            shown = driver.find_element("id", "shown").text
            clock = time.perf_counter()
            driver.execute_script("document.getElementById('next-unrated').click()")
            unrated = time.perf_counter() - clock
            memory = driver.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : 0")
            print(f"{count} subjects: page {size / 1e6:.1f} MB ({size / count:.0f} B per subject + {views_bytes / 1e3:.0f} kB "
                  f"of views); open {opened:.2f} s, scroll a page of 50 {scrolled:.2f} s, next page {paged:.2f} s, "
                  f"'flagged only' ({shown}) {filtered:.2f} s, next unrated {unrated:.2f} s, JS heap {memory / 1e6:.0f} MB")
        driver.quit()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 40000])
