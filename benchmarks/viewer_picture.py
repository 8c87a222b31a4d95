"""The README's viewer picture: `neuralgs view FILE` loaded in headless Chromium, screenshotted.

    python benchmarks/viewer_picture.py neuralgs-demo/demo.ngs docs/viewer.png

Needs Debian's `chromium`. The screenshot is taken once the viewer shows its full-resolution
frame, at 900x600 CSS pixels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import CHROMIUM, HeadlessChromium, free_port, show_in_browser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path, help="what `neuralgs view` takes: a .ngs, .ply, .spz, ... or a run")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=900)
    parser.add_argument("--height", type=int, default=600)
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("viewer_picture.py: chromium is not installed (Debian: apt-get install chromium)")

    from neuralgs_ns.utils import atomic_write_bytes, png_bytes
    from neuralgs_ns.view import serve

    viewer = serve(args.scene, port=free_port(), host="127.0.0.1", forever=False)
    with tempfile.TemporaryDirectory() as profile:
        browser = HeadlessChromium(Path(profile), args.width, args.height)
        try:
            shot = show_in_browser(viewer, browser)
        finally:
            browser.close()
            viewer.stop()
    atomic_write_bytes(args.output, png_bytes((shot * 255).round().astype("uint8")))
    print(f"wrote {args.output} ({shot.shape[1]}x{shot.shape[0]})")


if __name__ == "__main__":
    main()
