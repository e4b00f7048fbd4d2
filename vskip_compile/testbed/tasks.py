"""The testbed's synthetic visual question answering task: seeded scenes, questions, answers.

Numpy and PIL only, so samples can be made (and splits checked) without torch.

Two kinds of 48 x 48 scenes, in 8 x 8 patches (36 image tokens for the testbed model):

* a grid of 3 x 3 cells of 16 x 16 pixels, each empty or holding one object (a square, a
  circle or a triangle of 8 to 12 pixels in one of :data:`COLORS`), which every cell
  question is about;
* one large seven-segment digit (about 16 x 28 pixels, so it covers six or more patches
  and no single patch tells it), in a random colour, stroke and offset.

Four question types, each needing a different amount of visual processing:

==========  ==================================================  ====================  ===============
type        question                                            answer                needs
==========  ==================================================  ====================  ===============
``color``   what color is the object in row R column C ?        a colour              one cell (lookup)
``count``   how many red objects are there ?                    ``0`` ... ``4``       every cell (aggregation)
``left``    is the red object left of the blue object ?         ``yes`` / ``no``      two cells compared
``digit``   what digit is shown ?                               ``0`` ... ``9``       several patches combined
==========  ==================================================  ====================  ===============

Every answer is one word of :data:`VOCABULARY`, so it is one token of the testbed's
word-level tokenizer and the answer distribution is one softmax. Answers are balanced by
construction: the answer is drawn first and the scene made to fit it.

Splits: a sample belongs to the split its key (question type, scene, question) hashes to
(:func:`split_of`), 80% train, 10% validation, 10% test, so no scene-and-question pair is
in two splits whatever seeds are used; :func:`samples` draws candidates from a seeded
generator and keeps the ones of the requested split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..core.errors import VskipError

IMAGE_SIZE = 48
GRID = 3
CELL = IMAGE_SIZE // GRID
#: The vision tower's patch: a cell is 2 x 2 patches, so no object straddles two cells' patches.
PATCH_SIZE = 8

#: Colour words and their RGB values: far apart, so colour is never the hard part.
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
          "purple": (170, 60, 210)}
SHAPES = ("square", "circle", "triangle")
QUESTION_TYPES = ("color", "count", "left", "digit")
MAX_COUNT = 4
DIGITS = tuple(str(d) for d in range(10))

SPLITS = ("train", "validation", "test")
# Hash buckets out of 100 per split: 80 / 10 / 10.
_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}

#: Every word a prompt or an answer uses; the tokenizer has exactly these (plus specials).
VOCABULARY = (
    "question", "answer", ":", "?", "what", "color", "is", "the", "object", "in", "row", "column",
    "how", "many", "objects", "are", "there", "left", "of", "digit", "shown", "yes", "no",
    *COLORS, *DIGITS,
)

# Seven-segment layout: segment -> (x0, y0, x1, y1) in a 4 x 7 box of units.
_SEGMENTS = {"a": (0, 0, 4, 1), "b": (3, 0, 4, 4), "c": (3, 3, 4, 7), "d": (0, 6, 4, 7),
             "e": (0, 3, 1, 7), "f": (0, 0, 1, 4), "g": (0, 3, 4, 4)}
_DIGIT_SEGMENTS = {"0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd",
                   "6": "afgedc", "7": "abc", "8": "abcdefg", "9": "abcdfg"}


@dataclass(frozen=True)
class Sample:
    """One question about one scene; ``key`` is what the split is decided on."""

    image: Image.Image
    question: str
    answer: str
    question_type: str
    key: str


def prompt(question: str, marker: str = "<image>") -> str:
    """The exact text given to the processor for ``question``: the image first, as in
    LLaVA-1.5's prompts; the answer is the next token after it."""
    return f"{marker}\nquestion : {question}\nanswer :"


def split_of(key: str) -> str:
    """The split a sample key belongs to (a stable hash, the same on every machine)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % 100
    return next(name for name, buckets in _BUCKETS.items() if bucket in buckets)


def samples(split: str, n: int, seed: int = 0, types: tuple[str, ...] = QUESTION_TYPES) -> list[Sample]:
    """``n`` samples of ``split``, question types in turn (``types`` order), from ``seed``.

    The same arguments give the same samples; the first ``k`` samples of ``n`` are the
    ``k`` samples of a shorter call, so a small subset is a prefix of a larger one.
    """
    if split not in SPLITS:
        raise VskipError(f"unknown split {split!r}: choose {', '.join(SPLITS)}")
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown or not types:
        raise VskipError(f"unknown question type {unknown[0] if unknown else '(none)'!r}: "
                         f"choose from {', '.join(QUESTION_TYPES)}")
    # One stream per split, so another split's seed never shares its candidates.
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    out: list[Sample] = []
    while len(out) < n:
        kind = types[len(out) % len(types)]
        scene, question, answer = _MAKERS[kind](rng)
        key = f"{kind}|{scene!r}|{question}"
        if split_of(key) == split:
            out.append(Sample(_render(scene), question, answer, kind, key))
    return out


# --- scenes -----------------------------------------------------------------------------

def _object(rng, color: str) -> tuple:
    size = int(rng.integers(8, 13))
    slack = CELL - size
    return (color, SHAPES[int(rng.integers(len(SHAPES)))], size, int(rng.integers(0, slack + 1)),
            int(rng.integers(0, slack + 1)))


def _grid(rng, colors: dict[int, str]) -> tuple:
    """A grid scene: cell index (row * GRID + column) -> object, None where empty."""
    return ("grid", tuple(_object(rng, colors[c]) if c in colors else None for c in range(GRID * GRID)))


def _others(rng, exclude: set[str]) -> list[str]:
    return [c for c in COLORS if c not in exclude]


def _color_question(rng):
    cells = rng.permutation(GRID * GRID)[:int(rng.integers(3, 8))]
    names = list(COLORS)
    colors = {int(c): names[int(rng.integers(len(names)))] for c in cells}
    asked = int(cells[0])
    row, column = divmod(asked, GRID)
    return _grid(rng, colors), f"what color is the object in row {row + 1} column {column + 1} ?", colors[asked]


def _count_question(rng):
    names = list(COLORS)
    target = names[int(rng.integers(len(names)))]
    count = int(rng.integers(0, MAX_COUNT + 1))
    others = int(rng.integers(max(0, 2 - count), GRID * GRID - count - 1))
    cells = rng.permutation(GRID * GRID)
    pool = _others(rng, {target})
    colors = {int(c): target for c in cells[:count]}
    colors.update({int(c): pool[int(rng.integers(len(pool)))] for c in cells[count:count + others]})
    return _grid(rng, colors), f"how many {target} objects are there ?", str(count)


def _left_question(rng):
    names = list(COLORS)
    first, second = (names[i] for i in rng.permutation(len(names))[:2])
    while True:
        a, b = (int(c) for c in rng.integers(0, GRID * GRID, 2))
        if a % GRID != b % GRID:  # different columns: "left of" is never a tie
            break
    colors = {a: first, b: second}
    pool = _others(rng, {first, second})
    free = [c for c in rng.permutation(GRID * GRID) if int(c) not in colors]
    for c in free[:int(rng.integers(0, 5))]:
        colors[int(c)] = pool[int(rng.integers(len(pool)))]
    answer = "yes" if a % GRID < b % GRID else "no"
    return _grid(rng, colors), f"is the {first} object left of the {second} object ?", answer


def _digit_question(rng):
    digit = DIGITS[int(rng.integers(10))]
    unit = 4
    x = int(rng.integers(4, IMAGE_SIZE - 4 * unit - 3))
    y = int(rng.integers(4, IMAGE_SIZE - 7 * unit - 3))
    names = list(COLORS)
    scene = ("digit", digit, names[int(rng.integers(len(names)))], x, y)
    return scene, "what digit is shown ?", digit


_MAKERS = {"color": _color_question, "count": _count_question, "left": _left_question, "digit": _digit_question}


def _render(scene: tuple) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    if scene[0] == "grid":
        for cell, obj in enumerate(scene[1]):
            if obj is None:
                continue
            color, shape, size, dx, dy = obj
            row, column = divmod(cell, GRID)
            x0, y0 = column * CELL + dx, row * CELL + dy
            box = (x0, y0, x0 + size - 1, y0 + size - 1)
            fill = COLORS[color]
            if shape == "square":
                draw.rectangle(box, fill=fill)
            elif shape == "circle":
                draw.ellipse(box, fill=fill)
            else:
                draw.polygon([(x0 + size // 2, y0), (x0, y0 + size - 1), (x0 + size - 1, y0 + size - 1)], fill=fill)
    else:
        _, digit, color, x, y = scene
        unit = 4
        for segment in _DIGIT_SEGMENTS[digit]:
            sx0, sy0, sx1, sy1 = _SEGMENTS[segment]
            draw.rectangle((x + sx0 * unit, y + sy0 * unit, x + sx1 * unit - 1, y + sy1 * unit - 1),
                           fill=COLORS[color])
    return image
