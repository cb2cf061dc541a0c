"""The HTML report, opened in headless Chromium (Debian's package; `.ci/run` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from PIL import Image

from fedunlearn.cli import main
from tests.test_report import write_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")


def chromium(tmp_path, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_html_report_renders_its_tables_and_plots_in_a_browser(tmp_path, capsys):
    results = tmp_path / "results"
    write_results(results)
    assert main(["report", str(results), "--html"]) == 0
    page = results / "report.html"
    assert "report.html" in capsys.readouterr().out
    assert "src=\"plots/" not in page.read_text()  # self-contained: images are inside the file

    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"{page.as_uri()}#sort=backdoor_asr")
    assert 'data-images-rendered="4"' in dom  # every plot decoded and laid out
    first = dom.split("<table", 2)[1]
    assert 'data-sorted-by="backdoor_asr"' in first
    rows = re.findall(r"<tr><td>([^<]+)</td>", first)
    assert rows == ["retrain", "natural", "puf", "original"]  # mean ASR 0 < 0.225 = 0.225 < 0.9 (ties keep their order): sorted by the script
    second = dom.split("<table", 2)[2]
    assert len(re.findall(r"<tr><td>", second)) == 4 * 2  # every strategy and seed

    shot = tmp_path / "page.png"
    chromium(tmp_path, "--window-size=1200,1800", f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as img:
        assert img.size == (1200, 1800)
        assert len(set(img.convert("RGB").resize((120, 180)).getdata())) > 50  # tables and plots, not a blank page
