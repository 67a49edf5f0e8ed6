"""A screenshot of the search page's Duplicates view, for the README: ``docs/review-page.png``.

A real daemon (``imgwatch watch --search-page``, seeded random weights) on a small generated
library with planted copies, the view opened in Debian's headless chromium (as the browser tests
drive it), one group marked "not duplicates" so that the histogram shows a verdict, then the page
reloaded and captured. The PNG is reduced to 256 colours to stay small.

    python benchmarks/review_screenshot.py [--out docs/review-page.png]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THRESHOLD = 0.99


def library(root: Path) -> None:
    from PIL import Image, ImageFilter

    from imgwatch.samples import photo

    def save(path: Path, image: Image.Image, quality: int = 90) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=quality)

    for seed in range(1, 9):
        save(root / f"2024/scene{seed}.jpg", photo(seed, (320, 240)))
    one, two, five = photo(1, (320, 240)), photo(2, (320, 240)), photo(5, (320, 240))
    save(root / "phone/IMG_0001.jpg", one.resize((240, 180), Image.Resampling.LANCZOS))
    save(root / "phone/IMG_0002.jpg", one, quality=40)
    save(root / "backup/scene1.jpg", one)
    save(root / "phone/IMG_0007.jpg", two.filter(ImageFilter.GaussianBlur(1)))
    save(root / "backup/scene5.jpg", five)
    save(root / "backup/scene5 (copy).jpg", five)


def chromium() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "review-page.png")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.harness import start_daemon, wait_until

    base = Path(tempfile.mkdtemp(prefix="imgwatch-screenshot-"))
    try:
        root = base / "Pictures"
        library(root)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        daemon = start_daemon(base / "data", root, extra=("--search-page", f"127.0.0.1:{port}"))
        driver = chromium()
        try:
            daemon.idle()
            wait = WebDriverWait(driver, 120)
            # The address `imgwatch status` prints carries the page's token; keep its query.
            address = urllib.parse.urlsplit(daemon.status()["search_page"])
            driver.get(f"http://127.0.0.1:{port}/duplicates?threshold={THRESHOLD}&{address.query}")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#groups .group")) == 3)
            # The blurred copy's group: marked not duplicates, so the histogram shows a verdict.
            blurred = next(
                g for g in driver.find_elements(By.CSS_SELECTOR, "#groups .group") if "IMG_0007" in g.text
            )
            blurred.find_element(By.CSS_SELECTOR, "button.distinct").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#groups .group")) == 2)
            driver.refresh()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars .mark.verdict"))
            wait.until(
                lambda d: d.execute_script(
                    "const i = [...document.querySelectorAll('#groups img')];"
                    "return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0);"
                )
            )
            wait_until(lambda: "updating" not in driver.find_element(By.ID, "status").text, timeout=60)
            time.sleep(0.5)
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
            daemon.stop()
        with Image.open(io.BytesIO(png)) as shot:
            small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            small.save(args.out, optimize=True)
        print(f"{args.out}: {args.out.stat().st_size} bytes")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
