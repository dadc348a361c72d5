"""Random training samples from the simulated AMiRo world (the "sim" data set of docs/formats.md).

One sample: one object of a random class (uniform over the 8) with random size, pose, visible colour jitter and IR
material jitter, seen by one AMiRo from a random side at 0.10-0.50 m (sensor rim to object centre) with a random
heading offset, under random lighting, inside walls of random size and colour (70 % of samples; else open space
beyond the LiDAR range, +inf), with up to three neutral-coloured clutter boxes that never stand between the robot
and the object. Everything is drawn from the seeded
``numpy.random.Generator`` passed in, so the same generator state gives the same sample.

Single-sensor setup (paper Sec. IV / V-D): the camera sits below the smallest object's top at body height, so both
shapes show upright silhouettes of matching width distributions, the light is fully diffuse (no shading that would
tell a cylinder's curved side from a cube's flat faces), and every object carries the same visible gloss
(the IR material is a pigment property invisible to the camera); the LiDAR measures geometry only; the IR sensors'
response depends on the IR material, range and incidence angle, not on the visible colour.
"""
from __future__ import annotations

import colorsys
import math
from typing import Dict, Optional

import numpy as np

from m2vae_fusion.data.classes import COLOURS, MATERIALS, SHAPES, attributes_of
from m2vae_fusion.sim.sensors import AMIRO_RADIUS, CameraConfig, IRMaterial, LidarConfig, ReflectanceConfig
from m2vae_fusion.sim.world import ObjectSpec, World

#: Parameter ranges of the randomisation (m, rad); recorded in metadata.json["sensors"]["scene"].
SCENE = {
    "object_height": (0.05, 0.08),
    "cube_side": (0.036, 0.055),
    # cylinder diameter = side * (|cos a| + |sin a|), side ~ cube_side, a ~ U(0, pi/2): the distribution of a cube's
    # apparent width, so that silhouette widths do not tell the shapes apart
    "cylinder_diameter": "cube_side * (|cos a| + |sin a|), a ~ U(0, pi/2)",
    "distance_from_rim": (0.10, 0.50),
    "heading_offset": (-0.2, 0.2),
    "object_xy": (-0.1, 0.1),
    "arena_size": (1.5, 3.0),
    "arena_offset": (-0.3, 0.3),
    "walls_probability": 0.7,
    "clutter_count": (0, 3),
    "red_hue": (-0.03, 0.03),
    "green_hue": (0.28, 0.38),
    "saturation": (0.55, 0.9),
    "value": (0.5, 0.9),
    "matte_ir_diffuse": (0.04, 0.16),
    "shiny_ir_diffuse": (0.45, 0.75),
    "shiny_ir_specular": (0.15, 0.35),
    "shiny_ir_exponent": 4.0,
    # fully diffuse indoor light (ceiling panels and indirect light): random intensity and colour, no directional
    # shading; any directional term lets shading (smooth on cylinders, stepped on cubes) reveal the shape
    "light_elevation": (1.2, 1.5),
    "light_ambient": (0.6, 0.95),
    "light_diffuse": (0.0, 0.0),
    "light_specular": (0.0, 0.0),
}

TRAIN_SIZE = (64, 64)


def make_world(seed: int = 0) -> World:
    """The world used for data generation: one agent, walls, three clutter boxes, default sensor configs."""
    return World(num_agents=1, camera=CameraConfig(), lidar=LidarConfig(), reflectance=ReflectanceConfig(),
                 seed=seed, walls=True, clutter=3)


def sensor_metadata(world: Optional[World] = None) -> Dict[str, dict]:
    """The ``metadata.json["sensors"]`` block: ``camera`` (``width``, ``height`` = 64 training size, …), ``lidar``
    (``beams``, ``angle_min``, ``angle_increment``, ``range_min``, ``range_max``, …), ``reflectance`` (``beams``,
    ``range_max``, ``intensity_max``, …) and ``scene`` (the randomisation ranges)."""
    cam = world.camera if world is not None else CameraConfig()
    lid = world.lidar if world is not None else LidarConfig()
    ref = world.reflectance if world is not None else ReflectanceConfig()
    scene = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SCENE.items()}
    return {"camera": cam.info(), "lidar": lid.info(), "reflectance": ref.info(), "scene": scene}


def _u(rng, key):
    lo, hi = SCENE[key]
    return float(rng.uniform(lo, hi))


def _neutral_rgb(rng):
    """A grey / bluish / beige-white surface colour (never red or green)."""
    v = rng.uniform(0.35, 0.95)
    kind = rng.integers(3)
    if kind == 0:
        return (v, v, v)
    if kind == 1:
        return colorsys.hsv_to_rgb(rng.uniform(0.55, 0.68), rng.uniform(0.1, 0.35), v)
    return colorsys.hsv_to_rgb(rng.uniform(0.1, 0.16), rng.uniform(0.05, 0.2), v)


def random_sample(world: World, rng: np.random.Generator, label: Optional[int] = None) -> dict:
    """Randomise the scene of ``world`` (agent 0, its objects, walls, clutter, light) and observe it.

    Args:
        world: a :class:`World` with at least one agent and the clutter pool (``make_world``); its objects are
            replaced.
        rng: seeded generator; every random choice and all sensor noise come from it.
        label: class id 0..7 to draw; default uniform.

    Returns:
        dict with ``camera`` uint8 (64, 64, 3) rgb, ``lidar`` float32 (B,) m (+inf beyond range, REP 117),
        ``reflectance`` float32 (K, 2) (range m / intensity), ``label``, ``colour``, ``shape``, ``material`` (int)
        and ``scene`` (a dict of the drawn parameters, for debugging).
    """
    if label is None:
        label = int(rng.integers(8))
    c, s, m = attributes_of(label)
    colour, shape, material = COLOURS[c], SHAPES[s], MATERIALS[m]

    # object
    height = _u(rng, "object_height")
    width = _u(rng, "cube_side")
    if shape == "cylinder":
        a = float(rng.uniform(0.0, math.pi / 2))
        width *= abs(math.cos(a)) + abs(math.sin(a))
    hue = _u(rng, "red_hue" if colour == "red" else "green_hue") % 1.0
    rgb = colorsys.hsv_to_rgb(hue, _u(rng, "saturation"), _u(rng, "value"))
    if material == "matte":
        ir = IRMaterial(_u(rng, "matte_ir_diffuse"), 0.0, 1.0)
    else:
        ir = IRMaterial(_u(rng, "shiny_ir_diffuse"), _u(rng, "shiny_ir_specular"), SCENE["shiny_ir_exponent"])
    ox, oy = _u(rng, "object_xy"), _u(rng, "object_xy")
    oyaw = float(rng.uniform(0.0, 2 * math.pi))
    world.clear_objects()
    oid = world.add_object(ObjectSpec(colour, shape, material, height, width, tuple(rgb), ir), ox, oy, oyaw)

    # robot
    dist = AMIRO_RADIUS + _u(rng, "distance_from_rim")
    bearing = float(rng.uniform(-math.pi, math.pi))
    offset = _u(rng, "heading_offset")
    ax, ay, _ = world.inspect(0, oid, dist, offset, bearing)

    # arena, clutter, floor: walls and clutter never closer to the robot than 0.3 m beyond the object
    cx, cy = ox + _u(rng, "arena_offset"), oy + _u(rng, "arena_offset")
    need = 2 * (max(abs(ax - cx), abs(ay - cy)) + dist + 0.3)
    arena = max(_u(rng, "arena_size"), need)
    walls = bool(rng.uniform() < SCENE["walls_probability"])
    world.set_arena(arena, (cx, cy), wall_rgb=[_neutral_rgb(rng) for _ in range(4)],
                    wall_ir=[IRMaterial(float(rng.uniform(0.2, 0.6)), 0.0, 1.0) for _ in range(4)], visible=walls)
    pb_floor = world.floor
    import pybullet as pb  # local: keeps module import light for metadata-only users
    g = rng.uniform(0.35, 0.7)
    pb.changeVisualShape(pb_floor, -1, rgbaColor=(g, g, g * rng.uniform(0.95, 1.05), 1.0),
                         physicsClientId=world.client)
    lo, hi = SCENE["clutter_count"]
    n_clutter = int(rng.integers(lo, hi + 1))
    poses, rgbs, irs = [], [], []
    half = arena / 2 - 0.1
    for he in world.clutter_half_extents[:n_clutter]:
        for _ in range(20):  # rejection sampling; a box that finds no free spot stays parked
            x, y = rng.uniform(-half, half, size=2) + (cx, cy)
            r_box = math.hypot(he[0], he[1])
            if math.hypot(x - ox, y - oy) < 0.15 + r_box or math.hypot(x - ax, y - ay) < 0.1 + r_box:
                continue
            # never between robot and object: reject inside a 60 deg cone towards the object up to behind it
            to_obj = math.atan2(oy - ay, ox - ax)
            to_box = math.atan2(y - ay, x - ax)
            dang = abs((to_box - to_obj + math.pi) % (2 * math.pi) - math.pi)
            if dang < math.radians(60) and math.hypot(x - ax, y - ay) < dist + 0.3 + r_box:
                continue
            if any(math.hypot(x - px, y - py) < 0.25 for px, py, _ in poses):
                continue
            poses.append((float(x), float(y), float(rng.uniform(0, math.pi))))
            rgbs.append(_neutral_rgb(rng))
            irs.append(IRMaterial(float(rng.uniform(0.2, 0.6)), 0.0, 1.0))
            break
    world.place_clutter(poses, rgbs, irs)

    # light
    az = rng.uniform(-math.pi, math.pi)
    el = _u(rng, "light_elevation")
    world.set_lighting(direction=(math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)),
                       colour=tuple(1.0 + rng.uniform(-0.08, 0.08, size=3)), ambient=_u(rng, "light_ambient"),
                       diffuse=_u(rng, "light_diffuse"), specular=_u(rng, "light_specular"))

    cam = world.render_camera(0, *TRAIN_SIZE, rng=rng)
    lidar = world.lidar_scan(0, rng=rng)
    refl = world.reflectance_scan(0, rng=rng)
    return {"camera": cam, "lidar": lidar, "reflectance": refl, "label": label, "colour": c, "shape": s,
            "material": m, "scene": {"distance": dist, "heading_offset": offset, "height": height, "width": width,
                                     "object_yaw": oyaw, "clutter": len(poses), "arena": arena,
                                     "walls": walls}}


def generate_samples(n: int, rng: np.random.Generator, world: Optional[World] = None) -> Dict[str, np.ndarray]:
    """``n`` samples stacked into the shard layout of docs/formats.md: ``camera`` uint8 (n, 64, 64, 3), ``lidar``
    float32 (n, B), ``reflectance`` float32 (n, K, 2), ``present`` bool (n, 3) all True, ``label``, ``colour``,
    ``shape``, ``material`` int64 (n,). Uses a fresh :func:`make_world` unless ``world`` is given (a fresh world
    makes the output depend on ``rng`` only)."""
    own = world is None
    w = make_world() if own else world
    try:
        cam = np.empty((n, TRAIN_SIZE[1], TRAIN_SIZE[0], 3), np.uint8)
        lid = np.empty((n, w.lidar.beams), np.float32)
        ref = np.empty((n, w.reflectance.beams, 2), np.float32)
        lab = np.empty((4, n), np.int64)
        for i in range(n):
            smp = random_sample(w, rng)
            cam[i], lid[i], ref[i] = smp["camera"], smp["lidar"], smp["reflectance"]
            lab[:, i] = smp["label"], smp["colour"], smp["shape"], smp["material"]
    finally:
        if own:
            w.close()
    return {"camera": cam, "lidar": lid, "reflectance": ref, "present": np.ones((n, 3), bool),
            "label": lab[0], "colour": lab[1], "shape": lab[2], "material": lab[3]}


#: Samples per generation chunk: a shard of n samples is the concatenation of chunks of CHUNK samples (the last one
#: shorter), each simulated in a fresh world from its own generator, so that chunks can run in any process.
CHUNK = 250


def chunk_rng(seed: int, split: str, index: int, chunk: int) -> np.random.Generator:
    """The generator of chunk ``chunk`` of shard ``index`` of ``split``: independent of worker count and order."""
    code = {"train": 0, "val": 1, "test": 2}[split]
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(code, int(index), int(chunk))))


def shard_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of chunk 0 of shard ``index`` of ``split`` (see :func:`chunk_rng`)."""
    return chunk_rng(seed, split, index, 0)


def shard_chunks(n: int):
    """Chunk sizes of a shard of ``n`` samples."""
    return [min(CHUNK, n - start) for start in range(0, n, CHUNK)]


def object_offset(split: str, index: int, chunk: int) -> int:
    """First ``object_id`` of a hard-world chunk: unique over a data set (chunks hold at most 1000 objects)."""
    code = {"train": 0, "val": 1, "test": 2}[split]
    return ((code * 100000 + int(index)) * 1000 + int(chunk)) * 1000


def generate_chunk(seed: int, split: str, index: int, chunk: int, n: int, world: str = "easy",
                   views: int = 1) -> Dict[str, np.ndarray]:
    """Chunk ``chunk`` (``n`` samples) of shard ``index`` of ``split``: ``generate_samples`` of ``world`` (``"easy"``
    or ``"hard"``, the latter with ``views`` observations per object) in a fresh world with :func:`chunk_rng`, so the
    same arguments give byte-identical arrays in any process."""
    if world == "easy":
        return generate_samples(n, chunk_rng(seed, split, index, chunk))
    if world == "hard":
        from m2vae_fusion.sim import hard

        return hard.generate_samples(n, chunk_rng(seed, split, index, chunk), views=views,
                                     object_offset=object_offset(split, index, chunk))
    raise ValueError(f"unknown world {world!r}")


def concat_chunks(parts) -> Dict[str, np.ndarray]:
    """Concatenate chunk dicts along the sample axis."""
    parts = list(parts)
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def generate_shard(seed: int, split: str, index: int, n: int) -> Dict[str, np.ndarray]:
    """Shard ``index`` of ``split`` (``n`` samples) for data set seed ``seed``: its chunks concatenated."""
    return concat_chunks(generate_chunk(seed, split, index, c, m) for c, m in enumerate(shard_chunks(n)))
