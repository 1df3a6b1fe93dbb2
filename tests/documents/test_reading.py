import random

import numpy as np
import pytest
from PIL import Image

from donut_hole.documents.canvas import rotate_points, scan, scan_points
from donut_hole.documents.reading import LEVELS, reading_page, word


def test_rotate_points_matches_pillow():
    image = Image.new("L", (200, 100), 0)
    image.putpixel((170, 30), 255)
    turned = np.asarray(image.rotate(17, resample=Image.Resampling.BICUBIC))
    y, x = np.unravel_index(turned.argmax(), turned.shape)
    [(px, py)] = rotate_points([(170.5, 30.5)], angle=17, size=(200, 100))  # the pixel's centre
    assert abs(px - (x + 0.5)) <= 1 and abs(py - (y + 0.5)) <= 1


def test_scan_points_draws_as_scan_does():
    page = Image.new("RGB", (120, 80), (250, 250, 250))
    plain = scan(page, random.Random(3), paper=(250, 250, 250))
    with_points, moved = scan_points(page, random.Random(3), paper=(250, 250, 250), points=[(60, 40)])
    assert plain.tobytes() == with_points.tobytes()
    assert moved == [pytest.approx((60, 40))]  # the centre does not move


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_reading_page_centres_sit_on_ink(level):
    for seed in range(3):
        page = reading_page(random.Random(seed), size=(448, 448), level=LEVELS[level])
        assert len(page.centres) == len(page.text) and page.text.strip() == page.text
        gray = np.asarray(page.image.convert("L"), dtype=np.float32)
        paper = np.median(gray)
        inked = 0
        located = [(ch, c) for ch, c in zip(page.text, page.centres, strict=True) if c and ch.isalnum()]
        for _, (x, y) in located:
            patch = gray[int(y) - 6 : int(y) + 7, int(x) - 5 : int(x) + 6]
            inked += patch.min() < paper - 60
        assert inked >= 0.9 * len(located)  # a character's centre has dark print right beside it
        joins = [i for i, c in enumerate(page.centres) if c is None]
        assert all(page.text[i] == " " for i in joins)


def test_reading_page_is_seeded():
    a = reading_page(random.Random(7), size=(320, 320), level=LEVELS["medium"])
    b = reading_page(random.Random(7), size=(320, 320), level=LEVELS["medium"])
    assert a.text == b.text and a.image.tobytes() == b.image.tobytes()


def test_words_stay_in_the_alphabet():
    from donut_hole.model.tokens import BASE_ALPHABET

    rng = random.Random(0)
    assert all(set(word(rng)) <= set(BASE_ALPHABET) for _ in range(500))
