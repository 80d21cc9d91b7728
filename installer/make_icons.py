"""Draw Mend's application icon and write resources/icons/mend-app.{png,ico,icns}.

A rounded square with a blue-to-teal gradient, a white photo frame with a mountain, and a
gold sparkle for "fixed". Drawn at 1024 px with Pillow and scaled down; deterministic.
Run: python installer/make_icons.py
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
ICON_DIR = ROOT / "resources" / "icons"
SIZE = 1024


def draw(size: int = SIZE) -> Image.Image:
    s = size / 1024
    # vertical gradient
    top, bottom = (38, 84, 190), (20, 160, 150)
    grad = Image.new("RGBA", (size, size))
    px = grad.load()
    for y in range(size):
        t = y / (size - 1)
        c = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)) + (255,)
        for x in range(size):
            px[x, y] = c
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rounded_rectangle((40 * s, 40 * s, 984 * s, 984 * s), radius=200 * s,
                                           fill=255)
    icon = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    icon.paste(grad, (0, 0), mask)
    d = ImageDraw.Draw(icon)
    # photo frame
    frame = (210 * s, 260 * s, 814 * s, 764 * s)
    d.rounded_rectangle(frame, radius=40 * s, fill=(255, 255, 255, 255))
    inner = (250 * s, 300 * s, 774 * s, 724 * s)
    d.rectangle(inner, fill=(200, 226, 245, 255))
    # mountains and sun
    d.polygon([(250 * s, 724 * s), (430 * s, 470 * s), (560 * s, 640 * s), (640 * s, 540 * s),
               (774 * s, 724 * s)], fill=(52, 120, 90, 255))
    d.ellipse((610 * s, 340 * s, 700 * s, 430 * s), fill=(255, 196, 60, 255))
    # sparkle (four-pointed star) at the top right, with a soft glow
    cx, cy, r, w = 800 * s, 250 * s, 150 * s, 38 * s
    star = [(cx, cy - r), (cx + w, cy - w), (cx + r, cy), (cx + w, cy + w), (cx, cy + r),
            (cx - w, cy + w), (cx - r, cy), (cx - w, cy - w)]
    glow = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(glow).polygon(star, fill=(255, 230, 120, 200))
    icon = Image.alpha_composite(icon, glow.filter(ImageFilter.GaussianBlur(18 * s)))
    ImageDraw.Draw(icon).polygon(star, fill=(255, 214, 64, 255))
    return icon


def main() -> int:
    ICON_DIR.mkdir(parents=True, exist_ok=True)
    big = draw()
    big.resize((512, 512), Image.Resampling.LANCZOS).save(ICON_DIR / "mend-app.png", optimize=True)
    big.save(ICON_DIR / "mend-app.ico",
             sizes=[(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])
    big.save(ICON_DIR / "mend-app.icns")
    for name in ("mend-app.png", "mend-app.ico", "mend-app.icns"):
        print(f"wrote {ICON_DIR / name} ({(ICON_DIR / name).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
