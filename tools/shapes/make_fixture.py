"""Writes test/fixtures/shapes-python.json (what the Python world produces, for the TypeScript
cross-check in test/shapes.test.ts) and the README's example scene examples/shapes{,-mask}.png.

  python3 tools/shapes/make_fixture.py
"""

import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import world  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    rng = world.Mulberry32(12345)
    scenes = []
    for seed in (0, 1, 1000, 4294967295):
        for index in (0, 1, 2, 3, 77, 4294967295):
            s = world.generate_scene(seed, index)
            scenes.append(
                {
                    "seed": seed,
                    "index": index,
                    "width": s.width,
                    "height": s.height,
                    "objects": [
                        {"shape": o.shape, "colour": o.colour, "x0": o.x0, "y0": o.y0, "size": o.size,
                         "position": world.position_name(o, s.width, s.height)}  # fmt: skip
                        for o in s.objects
                    ],
                    "sha256": world.scene_digest(s),
                }
            )
    questions, answers = world.all_texts()
    fixture = {
        "mulberry32_12345": [rng.next_u32() for _ in range(8)],
        "scene_rng_7_3": [world.scene_rng(7, 3).next_u32() for _ in range(1)],
        "scenes": scenes,
        "questions": questions,
        "answers": answers,
    }
    with open(os.path.join(ROOT, "test/fixtures/shapes-python.json"), "w") as f:
        json.dump(fixture, f, indent=1)
    # Example for the README: scene 1 of seed 1000 (three objects), region = its first object.
    scene = world.generate_scene(1000, 1)
    image, masks = world.render_scene(scene)
    os.makedirs(os.path.join(ROOT, "examples"), exist_ok=True)
    Image.fromarray(image, "RGB").save(os.path.join(ROOT, "examples/shapes.png"), optimize=True)
    Image.fromarray((masks[0] * 255).astype(np.uint8), "L").save(os.path.join(ROOT, "examples/shapes-mask.png"), optimize=True)
    o = scene.objects[0]
    print(f"example: {scene.width}x{scene.height}, {len(scene.objects)} objects; region = {o.colour} {o.shape} "
          f"at the {world.position_name(o, scene.width, scene.height)}")  # fmt: skip


if __name__ == "__main__":
    main()
