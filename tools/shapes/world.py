"""The synthetic shapes world: seeded scenes, exact rasteriser, questions, answers, answer checking.

Mirrors src/shapes/*.ts bit for bit (same PRNG, same draw order, same float operations), so a scene
(seed, index) is the same picture in Python (training) and TypeScript (evaluation). The world is
documented in tools/shapes/README.md; change nothing here without changing the TypeScript side and
regenerating test/fixtures/shapes-python.json.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

BACKGROUND = (200, 200, 200)
SHAPES = ["circle", "square", "triangle", "star"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
COLOUR_NAMES = list(COLOURS)
MIN_SIDE, MAX_SIDE = 160, 320
GAP = 4  # free pixels between two objects' boxes
PLACEMENT_ATTEMPTS = 200
POSITIONS = [
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
]  # fmt: skip

# Unit star: 10 vertices from the top, clockwise, outer radius 1 and inner radius 0.5, given as
# literals (not cos/sin calls) so both languages use exactly the same doubles.
STAR_UNIT = [
    (0.0, -1.0),
    (0.29389262614623657, -0.4045084971874737),
    (0.9510565162951535, -0.30901699437494745),
    (0.47552825814757677, 0.15450849718747373),
    (0.5877852522924732, 0.8090169943749475),
    (0.0, 0.5),
    (-0.5877852522924732, 0.8090169943749475),
    (-0.47552825814757677, 0.15450849718747373),
    (-0.9510565162951535, -0.30901699437494745),
    (-0.29389262614623657, -0.4045084971874737),
]

U32 = 0xFFFFFFFF


class Mulberry32:
    """mulberry32, the same 32-bit integer steps as the TypeScript version (Math.imul, >>> 0)."""

    def __init__(self, state: int):
        self.a = state & U32

    def next_u32(self) -> int:
        self.a = (self.a + 0x6D2B79F5) & U32
        a = self.a
        t = ((a ^ (a >> 15)) * (1 | a)) & U32
        t = ((t + (((t ^ (t >> 7)) * (61 | t)) & U32)) & U32) ^ t
        return (t ^ (t >> 14)) & U32

    def next_float(self) -> float:
        return self.next_u32() / 4294967296.0

    def rand_int(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both ends included."""
        return lo + math.floor(self.next_float() * (hi - lo + 1))


def scene_rng(seed: int, index: int) -> Mulberry32:
    if not (0 <= seed <= U32 and 0 <= index <= U32):
        raise ValueError("seed and index must be integers in [0, 2^32)")
    state = ((seed * 0x9E3779B1) + (index * 0x85EBCA77) + 0x27D4EB2F) & U32
    rng = Mulberry32(state)
    for _ in range(4):  # let neighbouring seeds drift apart
        rng.next_u32()
    return rng


@dataclass
class SceneObject:
    shape: str
    colour: str
    x0: int
    y0: int
    size: int  # side of the object's square box

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)


@dataclass
class Scene:
    seed: int
    index: int
    width: int
    height: int
    objects: list[SceneObject]


def third_of(twice_centre: int, extent: int) -> int:
    """0, 1 or 2: which third of [0, extent) holds the centre (given doubled to stay integer)."""
    if 3 * twice_centre < 2 * extent:
        return 0
    if 3 * twice_centre > 4 * extent:
        return 2
    return 1


def near_third_line(twice_centre: int, extent: int) -> bool:
    """True when the centre lies within 4% of `extent` of x = extent/3 or 2*extent/3."""
    d1 = abs(3 * twice_centre - 2 * extent)
    d2 = abs(3 * twice_centre - 4 * extent)
    return 25 * min(d1, d2) < 6 * extent


def position_name(obj: SceneObject, width: int, height: int) -> str:
    col = third_of(2 * obj.x0 + obj.size, width)
    row = third_of(2 * obj.y0 + obj.size, height)
    return POSITIONS[row * 3 + col]


def boxes_apart(a: SceneObject, b: SceneObject) -> bool:
    return (
        a.x0 + a.size + GAP <= b.x0
        or b.x0 + b.size + GAP <= a.x0
        or a.y0 + a.size + GAP <= b.y0
        or b.y0 + b.size + GAP <= a.y0
    )


def generate_scene(seed: int, index: int) -> Scene:
    rng = scene_rng(seed, index)
    width = rng.rand_int(MIN_SIDE, MAX_SIDE)
    height = rng.rand_int(MIN_SIDE, MAX_SIDE)
    wanted = rng.rand_int(2, 4)
    short = min(width, height)
    size_min = (14 * short + 99) // 100
    size_max = (40 * short) // 100
    objects: list[SceneObject] = []
    for _ in range(wanted):
        placed = None
        for _attempt in range(PLACEMENT_ATTEMPTS):
            # Every attempt draws the same five numbers, whatever is rejected afterwards.
            shape = SHAPES[rng.rand_int(0, 3)]
            colour = COLOUR_NAMES[rng.rand_int(0, 5)]
            size = rng.rand_int(size_min, size_max)
            x0 = rng.rand_int(0, width - size)
            y0 = rng.rand_int(0, height - size)
            cand = SceneObject(shape, colour, x0, y0, size)
            if any(o.shape == shape and o.colour == colour for o in objects):
                continue
            if near_third_line(2 * x0 + size, width) or near_third_line(2 * y0 + size, height):
                continue
            if not all(boxes_apart(cand, o) for o in objects):
                continue
            placed = cand
            break
        if placed is None:
            break
        objects.append(placed)
    return Scene(seed, index, width, height, objects)


def _polygon_inside(px: np.ndarray, py: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd crossing test, written with the same operation order as the TypeScript version."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(verts)
    j = n - 1
    for i in range(n):
        xi, yi = verts[i]
        xj, yj = verts[j]
        if yi != yj:
            crosses = (yi > py) != (yj > py)
            x_cross = (xj - xi) * (py - yi) / (yj - yi) + xi
            inside ^= crosses & (px < x_cross)
        j = i
    return inside


def object_vertices(obj: SceneObject) -> list[tuple[float, float]]:
    s = float(obj.size)
    x0, y0 = float(obj.x0), float(obj.y0)
    cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
    if obj.shape == "triangle":
        return [(cx, y0), (x0 + s, y0 + s), (x0, y0 + s)]
    if obj.shape == "star":
        return [(cx + r * ux, cy + r * uy) for ux, uy in STAR_UNIT]
    raise ValueError(obj.shape)


def object_mask(scene: Scene, obj: SceneObject) -> np.ndarray:
    """Boolean [H, W]: pixel (x, y) is in the object when its centre (x+0.5, y+0.5) is inside."""
    mask = np.zeros((scene.height, scene.width), dtype=bool)
    xs = np.arange(obj.x0, obj.x0 + obj.size, dtype=np.float64) + 0.5
    ys = np.arange(obj.y0, obj.y0 + obj.size, dtype=np.float64) + 0.5
    px, py = np.meshgrid(xs, ys)
    s = float(obj.size)
    if obj.shape == "square":
        inside = np.ones(px.shape, dtype=bool)
    elif obj.shape == "circle":
        cx, cy, r = obj.x0 + s / 2, obj.y0 + s / 2, s / 2
        dx, dy = px - cx, py - cy
        inside = dx * dx + dy * dy <= r * r
    else:
        inside = _polygon_inside(px, py, object_vertices(obj))
    mask[obj.y0 : obj.y0 + obj.size, obj.x0 : obj.x0 + obj.size] = inside
    return mask


def render_scene(scene: Scene) -> tuple[np.ndarray, list[np.ndarray]]:
    """RGB uint8 [H, W, 3] and one boolean mask per object."""
    image = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    masks = []
    for obj in scene.objects:
        m = object_mask(scene, obj)
        image[m] = COLOURS[obj.colour]
        masks.append(m)
    return image, masks


def box_mask(scene: Scene, obj: SceneObject) -> np.ndarray:
    mask = np.zeros((scene.height, scene.width), dtype=bool)
    mask[obj.y0 : obj.y0 + obj.size, obj.x0 : obj.x0 + obj.size] = True
    return mask


def scene_digest(scene: Scene) -> str:
    """sha256 of the RGB bytes followed by every object mask as 0/1 bytes (row-major)."""
    image, masks = render_scene(scene)
    h = hashlib.sha256(image.tobytes())
    for m in masks:
        h.update(m.astype(np.uint8).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Questions and answers

QUESTION_TYPES = ["colour", "shape", "what", "describe", "is_shape", "is_colour", "where", "count"]

TEMPLATES = {
    "colour": [
        "What colour is the highlighted region?",
        "What color is the highlighted region?",
        "What colour is the object in the region?",
        "What color is this object?",
        "Which colour does the highlighted object have?",
    ],
    "shape": [
        "What shape is the highlighted region?",
        "What shape is the object in the region?",
        "What is the shape of this object?",
        "Which shape is highlighted?",
    ],
    "what": [
        "What is in the highlighted region?",
        "What is this?",
        "What is the highlighted object?",
        "What is in the region?",
    ],
    "describe": [
        "Describe the highlighted region.",
        "Describe the object in the region.",
        "Give a short description of the highlighted object.",
    ],
    "is_shape": [
        "Is it a {shape}?",
        "Is the highlighted object a {shape}?",
        "Is this a {shape}?",
    ],
    "is_colour": [
        "Is it {colour}?",
        "Is the highlighted object {colour}?",
        "Is this object {colour}?",
    ],
    "where": [
        "Where is it?",
        "Where is the highlighted object?",
        "Where is the object in the image?",
        "Where in the image is the highlighted region?",
    ],
    "count": [
        "How many objects are in the image?",
        "How many shapes are there?",
        "How many objects can you see?",
        "Count the objects in the image.",
    ],
}

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def position_phrase(position: str) -> str:
    return f"It is in the {position} of the image." if position == "centre" else f"It is at the {position} of the image."


YES_NO_FORMATS = ("verdict-first", "fact-first", "fact-verdict")


def answer_for(qtype: str, truth: dict, asked: str | None = None, yes_no: str = "verdict-first") -> str:
    """The answer text for a region with `truth` (colour, shape, position name, count). `yes_no` is
    the yes/no format: "No, it is a star." (verdict-first, the world's own), "It is a star, so the
    answer is no." (fact-first) or "It is a star, no." (fact-verdict)."""
    if qtype == "count":
        return f"There are {truth['count']} objects."
    if qtype == "colour":
        return f"It is {truth['colour']}."
    if qtype == "shape":
        return f"It is a {truth['shape']}."
    if qtype in ("what", "describe"):
        return f"It is a {truth['colour']} {truth['shape']}."
    if qtype == "where":
        return position_phrase(truth["position"])
    if qtype not in ("is_shape", "is_colour"):
        raise ValueError(qtype)
    key = "shape" if qtype == "is_shape" else "colour"
    fact = f"a {truth['shape']}" if key == "shape" else truth["colour"]
    verdict = "yes" if asked == truth[key] else "no"
    if yes_no == "fact-first":
        return f"It is {fact}, so the answer is {verdict}."
    if yes_no == "fact-verdict":
        return f"It is {fact}, {verdict}."
    return f"{verdict.capitalize()}, it is {fact}."


def make_answer(qtype: str, obj: SceneObject | None, scene: Scene, asked: str | None) -> str:
    truth: dict = {"count": len(scene.objects)}
    if qtype != "count":
        assert obj is not None
        truth.update(colour=obj.colour, shape=obj.shape, position=position_name(obj, scene.width, scene.height))
    return answer_for(qtype, truth, asked)


def all_texts() -> tuple[list[str], list[str]]:
    """Every question and every answer the world can produce (for tokenising ahead of training)."""
    questions: list[str] = []
    for qtype, temps in TEMPLATES.items():
        for t in temps:
            if "{shape}" in t:
                questions += [t.format(shape=s) for s in SHAPES]
            elif "{colour}" in t:
                questions += [t.format(colour=c) for c in COLOUR_NAMES]
            else:
                questions.append(t)
    answers = set()
    for c in COLOUR_NAMES:
        for s in SHAPES:
            truth = {"colour": c, "shape": s}
            answers.add(answer_for("what", truth))
            answers.add(answer_for("colour", truth))
            answers.add(answer_for("shape", truth))
            for qtype in ("is_shape", "is_colour"):
                for asked in (s if qtype == "is_shape" else c, None):  # a "yes" and a "no"
                    answers.update(answer_for(qtype, truth, asked, f) for f in YES_NO_FORMATS)
    for p in POSITIONS:
        answers.add(answer_for("where", {"position": p}))
    for n in range(0, 6):
        answers.add(answer_for("count", {"count": n}))
    return questions, sorted(answers)


# ---------------------------------------------------------------------------------------------
# Answer checking (same rules as src/shapes/check.ts)

_COLOUR_WORDS = {c: [c] for c in COLOUR_NAMES}
_COLOUR_WORDS["grey"] = ["grey", "gray"]


def _words(text: str) -> list[str]:
    out, cur = [], []
    for ch in text.lower():
        if ch.isalnum():
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def check_answer(qtype: str, answer: str, truth: dict) -> bool:
    """truth: {colour, shape, position, count, asked?}. See src/shapes/check.ts for the rules."""
    words = _words(answer)
    colours = {c for c in COLOUR_NAMES if c in words} | ({"grey"} if ("grey" in words or "gray" in words) else set())
    shapes = {s for s in SHAPES if s in words or s + "s" in words}
    if qtype == "colour":
        return colours == {truth["colour"]}
    if qtype == "shape":
        return shapes == {truth["shape"]}
    if qtype in ("what", "describe"):
        return colours == {truth["colour"]} and shapes == {truth["shape"]}
    if qtype in ("is_shape", "is_colour"):
        # The verdict: a leading yes/no, else the only yes/no word in the answer.
        verdicts = [w for w in words if w in ("yes", "no")]
        verdict = words[0] if words and words[0] in ("yes", "no") else (verdicts[0] if len(verdicts) == 1 else None)
        if verdict is None:
            return False
        key = "shape" if qtype == "is_shape" else "colour"
        return (verdict == "yes") == (truth["asked"] == truth[key])
    if qtype == "count":
        numbers = [int(w) for w in words if w.isdigit()]
        numbers += [n for n, w in NUMBER_WORDS.items() if w in words]
        return numbers == [truth["count"]]
    if qtype == "where":
        vertical = {w for w in ("top", "bottom") if w in words}
        horizontal = {w for w in ("left", "right") if w in words}
        central = any(w in words for w in ("centre", "center", "middle"))
        if len(vertical) > 1 or len(horizontal) > 1:
            return False
        if not vertical and not horizontal:
            got = "centre" if central else None
        else:
            got = " ".join(list(vertical) + list(horizontal))
        return got == truth["position"]
    raise ValueError(qtype)
