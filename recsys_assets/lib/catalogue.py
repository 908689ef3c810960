"""The product catalogue: the 2,465 Retail Demo Store products, and a rendered image per product.

Item ids are 0..2464 in file order; the product UUID stays as ``item_uuid``. ``item_gender`` is the
catalogue's gender affinity (``M``, ``F``, or ``U`` where the catalogue has none).

The real product images are not available, so :func:`render_item_image` draws one from what the catalogue
says about the product: the colour words of its name/description fill the product shape, the category picks
the silhouette and the style picks the pattern. Image embeddings therefore carry real category, style and
colour signal, deterministically.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib import resources

import numpy as np

CATALOGUE_FILE = "products.yaml"
IMAGE_SIZE = 160

# Colour words found in the catalogue's descriptions, with the RGB the renderer paints for them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25), "white": (245, 245, 245), "red": (200, 30, 40), "blue": (40, 80, 200),
    "green": (40, 150, 60), "yellow": (240, 210, 40), "orange": (240, 130, 30), "purple": (120, 50, 160),
    "pink": (240, 140, 180), "brown": (120, 75, 40), "beige": (220, 200, 160), "grey": (128, 128, 128),
    "gray": (128, 128, 128), "silver": (192, 192, 200), "gold": (212, 175, 55), "navy": (20, 30, 90),
    "teal": (0, 128, 128), "turquoise": (64, 224, 208), "mauve": (190, 140, 170), "caramel": (190, 120, 60),
    "khaki": (195, 176, 145), "ivory": (250, 245, 225), "cream": (250, 240, 200), "tan": (210, 180, 140),
    "maroon": (110, 20, 30), "burgundy": (128, 0, 32), "olive": (110, 110, 30), "lavender": (190, 170, 230),
    "coral": (250, 120, 100), "crimson": (220, 20, 60), "charcoal": (54, 69, 79), "emerald": (20, 150, 90),
    "rose": (230, 100, 130), "copper": (184, 115, 51), "bronze": (150, 100, 40), "indigo": (75, 0, 130),
    "peach": (255, 200, 160), "mint": (170, 240, 200), "aqua": (0, 220, 220), "lilac": (200, 160, 220),
    "plum": (142, 69, 133), "rust": (183, 65, 14), "amber": (255, 190, 0), "ruby": (170, 15, 50),
    "sapphire": (15, 82, 186), "walnut": (93, 67, 44), "oak": (160, 120, 70), "cherry": (150, 30, 40),
    "mahogany": (100, 40, 30), "espresso": (60, 40, 30), "chocolate": (90, 55, 30),
}
_WORD = re.compile(r"[a-z]+")


@lru_cache(maxsize=1)
def _products() -> tuple[dict, ...]:
    import yaml  # local: not every environment that imports lib needs YAML

    text = resources.files("recsys_assets.data.retail_demo_store").joinpath(CATALOGUE_FILE).read_text()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(yaml.load(text, Loader=loader))


def load_catalogue():
    """The catalogue as a DataFrame, one row per product, ``item_id`` = position in the file."""
    import pandas as pd

    rows = []
    for item_id, p in enumerate(_products()):
        text = f"{p['name']} {p.get('description') or ''}"
        rows.append(
            {
                "item_id": item_id,
                "item_uuid": p["id"],
                "name": p["name"],
                "category_l1": p["category"],
                "category_l2": p["style"],
                "price": float(p["price"]),
                "item_gender": p.get("gender_affinity") or "U",
                "description": " ".join(str(p.get("description") or p["name"]).split()),
                "colour": dominant_colour(text),
            }
        )
    df = pd.DataFrame(rows)
    df["item_id"] = df["item_id"].astype("int64")
    return df


def dominant_colour(text: str) -> str:
    """The first colour word of a text (the name comes first, so it wins), or ``""``."""
    for word in _WORD.findall(text.lower()):
        if word in COLOURS:
            return word
    return ""


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def render_item_image(category: str, style: str, colour: str, size: int = IMAGE_SIZE):
    """Draw a product picture (a PIL image) from its category, style and colour word.

    Category -> silhouette and background hue; style -> pattern; colour word -> fill colour. Items of the
    same category/style/colour render identically, which is the signal an image encoder can pick up.
    """
    from PIL import Image, ImageDraw  # local: Pillow is a pipeline-env dependency

    cat_rng = np.random.default_rng(_stable_int("category", category))
    style_rng = np.random.default_rng(_stable_int("style", category, style))
    bg = tuple(int(v) for v in 200 + cat_rng.integers(0, 56, size=3))
    fill = COLOURS.get(colour) or tuple(int(v) for v in style_rng.integers(40, 220, size=3))
    accent = tuple(int(v) for v in cat_rng.integers(0, 160, size=3))

    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    m = size // 8
    box = (m, m, size - m, size - m)
    shape = _stable_int("shape", category) % 6
    if shape == 0:
        draw.ellipse(box, fill=fill, outline=accent, width=3)
    elif shape == 1:
        draw.rectangle(box, fill=fill, outline=accent, width=3)
    elif shape == 2:
        draw.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=fill, outline=accent)
    elif shape == 3:
        draw.rounded_rectangle(box, radius=size // 5, fill=fill, outline=accent, width=3)
    elif shape == 4:
        draw.polygon([(size // 2, m), (size - m, size // 2), (size // 2, size - m), (m, size // 2)], fill=fill)
    else:
        draw.pieslice(box, start=20, end=340, fill=fill, outline=accent)

    # Style pattern: stripes at a style-specific angle and spacing, plus a few style-specific dots.
    n_lines = 2 + int(style_rng.integers(0, 6))
    vertical = bool(style_rng.integers(0, 2))
    for k in range(1, n_lines + 1):
        pos = m + k * (size - 2 * m) // (n_lines + 1)
        line = (pos, m, pos, size - m) if vertical else (m, pos, size - m, pos)
        draw.line(line, fill=accent, width=2)
    for _ in range(int(style_rng.integers(0, 5))):
        x, y = (int(v) for v in style_rng.integers(m, size - m, size=2))
        r = int(style_rng.integers(3, 9))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=accent)
    return img
