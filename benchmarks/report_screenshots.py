"""A screenshot of a study's report.html as a browser shows it, to check by eye that the plots read well.

    python benchmarks/report_screenshots.py STUDY_DIR [--height 5000]
        # -> results/report_<study name>.png and results/report_<study name>.json

Renders with Debian's headless Chromium (`apt-get install -y chromium`; no browser is downloaded) at 1200 px wide;
the page is cut at --height px. The JSON records the command, the machine, the study and the file name.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import command, machine

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH = 1200


def chromium() -> str:
    found = shutil.which("chromium") or (Path("/usr/bin/chromium").exists() and "/usr/bin/chromium")
    if not found:
        sys.exit("no chromium: install Debian's with `apt-get install -y chromium`")
    return found


def screenshot(page: Path, out: Path, height: int) -> list[str]:
    """Render `page` headless into the PNG `out`; returns the command line it ran."""
    with tempfile.TemporaryDirectory() as profile:  # a throwaway profile: nothing left in ~/.config
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={WIDTH},{height}",
               page.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.exists():
        sys.exit(f"chromium failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return [Path(cmd[0]).name, *cmd[1:5], "--user-data-dir=<tmp>", *cmd[6:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path, help="a study folder with report.html (and plan.json)")
    parser.add_argument("--height", type=int, default=5000, help="window height in px; the page is cut there")
    args = parser.parse_args()
    page = args.study_dir / "report.html"
    if not page.exists():
        sys.exit(f"{page}: no report; write it with `genscale study report` or analyse_study")
    plan_path = args.study_dir / "plan.json"
    name = json.loads(plan_path.read_text())["name"] if plan_path.exists() else args.study_dir.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / f"report_{slug}.png"
    browser = screenshot(page, png, args.height)
    version = subprocess.run([chromium(), "--version"], capture_output=True, text=True).stdout.strip()
    record = {"command": command(), "machine": machine(), "study": name, "study_dir": str(args.study_dir.resolve()),
              "browser": version, "browser_command": " ".join(browser), "window": [WIDTH, args.height],
              "screenshot": png.name}
    (RESULTS / f"report_{slug}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{png} ({png.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
