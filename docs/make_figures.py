"""Regenerate the README figures from a demo work dir: `python docs/make_figures.py demo_out`."""

import sys
from pathlib import Path

import cv2
import numpy as np

from resail.pipeline.guidance import open_composer, preview_distort
from resail.pipeline.labels.classes import palette_lut


def main(out: Path) -> None:
    work = out / "work"
    rows = []
    for image_row in (1, 4):
        panels = []
        for mode in ("clean", "official"):
            comp = open_composer(work, "val", size=(192, 192))
            comp.mode = mode
            if mode == "clean":
                panels.append(comp.label_preview(image_row, palette_lut("ade20k", 65536)))
            panels.append(comp.compose(image_row))
            photo = comp.photo(image_row)
            comp.close()
        rows.append(np.concatenate(panels + [photo], axis=1))
    grid = np.concatenate(rows, axis=0)
    cv2.imwrite("docs/img/guidance.png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    preview_distort(work, Path("docs/img/distortion.png"), n=2, seed=1, size=(192, 192))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
