"""The hard simulated world: 27 classes with close neighbours, ambiguous single observations.

3 colours (red / orange / yellow) × 3 shapes (cylinder / hexagonal prism / rounded box) × 3 IR materials (matte /
satin / shiny), class id ``9*colour + 3*shape + material`` (``m2vae_fusion.data.classes.WORLDS["hard"]``).

Where the ambiguity comes from (it belongs to the observation, not to the object):

- **object** (drawn once per object instance, shared by all its views): hue within a narrow band per colour (bands
  do not overlap), saturation and value; size (the width is scaled per shape so that the mean apparent width over
  all yaw angles is the same for the three shapes: the camera's silhouettes do not give the shape away), height,
  rounded-box corner radius; IR material parameters whose normal-incidence reflectance lies in disjoint bands per
  material. Another observation of the same object therefore resolves what one observation leaves open.
- **observation** (drawn per view): robot distance and bearing, heading offset (the target is not centred), object
  yaw, light intensity and colour temperature (no white balance: warm light pushes orange towards red and yellow
  towards orange), camera gain noise (dark scenes are noisy), blur, distractor objects of all colours and neutral
  clutter, partial occlusion of the target by a distractor in front of it (camera, LiDAR and IR see the occluder),
  LiDAR range noise of 1 cm (Hokuyo URG-04LX accuracy), IR intensity noise and, in some views, IR interference
  (an intensity offset on every beam, as from sunlight or another robot's emitters).

Per-sensor honesty by design: the camera sits below the objects' tops under flat (ambient) light, so the three
shapes show upright silhouettes of matching mean width; every object has the same visible gloss (the IR material
is invisible to the camera); the LiDAR measures geometry only; the IR response depends on the IR material, range
and incidence, not on the visible colour.

The target's position in the agent's base frame is returned with each observation (``target_position``), as a
tracker or the simulator's ``target_of_interest`` gives it, so that preprocessing can crop around the target
(:mod:`m2vae_fusion.core.preprocess`).
"""
from __future__ import annotations

import colorsys
import math
from typing import Dict, Optional

import numpy as np

from m2vae_fusion.data.classes import classes_of
from m2vae_fusion.sim.sensors import AMIRO_RADIUS, CameraConfig, IRMaterial, LidarConfig, ReflectanceConfig

CLASSES = classes_of("hard")

#: Nominal IR materials (used for an ObjectSpec of the hard world without explicit ``ir``).
IR_NOMINAL = {
    "matte": IRMaterial(0.27, 0.0, 1.0),
    "satin": IRMaterial(0.25, 0.22, 4.0),
    "shiny": IRMaterial(0.22, 0.55, 16.0),
}

#: Randomisation of the hard world (m, rad, hue in [0, 1) turns); recorded in metadata.json["sensors"]["scene"].
SCENE = {
    "world": "hard",
    # object (per instance)
    "hue_centre": {"red": 0.995, "orange": 0.04, "yellow": 0.085},
    "hue_halfwidth": 0.008,
    "saturation": (0.65, 0.92),
    "value": (0.6, 0.9),
    "object_height": (0.055, 0.09),
    "apparent_width": (0.13, 0.16),
    "width_factor": {"cylinder": 1.0, "hexagonal_prism": 1.103, "rounded_box": 1.137},
    "rounded_box_corner": (0.12, 0.2),
    "ir_normal_reflectance": {"matte": (0.14, 0.22), "satin": (0.32, 0.44), "shiny": (0.64, 0.9)},
    "ir_specular_share": {"matte": (0.0, 0.0), "satin": (0.2, 0.3), "shiny": (0.35, 0.5)},
    "ir_exponent": {"matte": 1.0, "satin": 2.0, "shiny": 4.0},
    # observation (per view)
    "distance_from_rim": (0.04, 0.16),
    # the robot's rim never closer than this to the object's bounding circle: the camera on the rim would otherwise
    # sit within the renderer's near plane (1 cm) of the surface or inside a wide object, which clipped the target
    # out of 3.6 % of the cylinder views (README "The hard world's ceilings")
    "min_clearance": 0.012,
    # some views are taken from further away (passing by, an obstacle in the way)
    "far_view_probability": 0.12,
    "far_distance_from_rim": (0.28, 0.45),
    "heading_offset": (-0.25, 0.25),
    "light_intensity": (0.12, 1.0),
    # indoor light: daylight / cool-white (4500-6500 K) or, in a quarter of the views, warm tungsten-like light
    # (1800-2400 K) that pushes yellow towards orange and orange towards red
    "colour_temperature_k": (4500.0, 6500.0),
    "warm_light_probability": 0.36,
    "warm_colour_temperature_k": (1800.0, 2400.0),
    "camera_gain_noise_dn": 2.5,
    "camera_blur_sigma_px": (0.0, 1.0),
    "distractors": (1, 4),
    "occlusion_probability": 0.12,
    "occluded_fraction": (0.35, 0.8),
    # IR interference (sunlight, other robots' emitters) in some views: an offset on every beam's intensity
    "ir_interference_probability": 0.16,
    "ir_interference": (0.2, 0.5),
    "arena_size": (1.5, 3.0),
    "walls_probability": 0.7,
}

TRAIN_SIZE = (64, 64)

#: Target-centred preprocessing of the hard world (``m2vae_fusion.core.preprocess``): a 0.06 m window on the
#: target's centre resampled to 16x16 (the object's own surface: with 0.25 m / 32x32 the unsupervised camera β-VAE
#: spent its latents on background and read colour at 0.56, with 0.06 m / 16x16 at 0.96; README "Training"); a LiDAR
#: window 0.3 m across the line of sight, 64 points, depths within ±0.15 m, registered on the target's own silhouette
#: (a position a few mm or cm off gives the same window: README "How exact the target position must be").
CAMERA_CROP = {"enabled": True, "size": 16, "window_m": 0.06}
LIDAR_CROP = {"enabled": True, "window_m": 0.3, "points": 64, "depth_m": 0.15, "register": True}

#: Sensor configurations of the hard world: 1 cm LiDAR noise, noisier IR.
HARD_LIDAR = dict(noise_std=0.01)
HARD_REFLECTANCE = dict(intensity_noise=(0.04, 0.004))


def make_world(seed: int = 0, num_agents: int = 1):
    """The hard world's :class:`~m2vae_fusion.sim.world.World`: walls, no neutral box pool (distractors are added
    per object), 1 cm LiDAR noise, IR noise (4 % relative, 0.004 absolute)."""
    from m2vae_fusion.sim.world import World

    return World(num_agents=num_agents, camera=CameraConfig(), lidar=LidarConfig(**HARD_LIDAR),
                 reflectance=ReflectanceConfig(**HARD_REFLECTANCE), seed=seed, walls=True, clutter=0)


def camera_intrinsics(cfg: CameraConfig, width: int, height: int) -> list:
    """Row-major 3x3 K (``sensor_msgs/CameraInfo.k``) of an image of ``width`` x ``height`` rendered with the camera's
    projection (vertical FOV ``fov_deg``, aspect ``aspect`` whatever the pixel size): ``fy = (h/2) / tan(fov/2)``,
    ``fx = (w/2) / (aspect tan(fov/2))``, principal point at the image centre (pixel edges at integers)."""
    t = math.tan(math.radians(cfg.fov_deg) / 2)
    fx, fy = (width / 2) / (cfg.aspect * t), (height / 2) / t
    return [fx, 0.0, width / 2, 0.0, fy, height / 2, 0.0, 0.0, 1.0]


def sensor_metadata(world=None) -> Dict[str, dict]:
    """The ``metadata.json["sensors"]`` block of a hard-world data set: as the easy world's plus, for the camera, the
    intrinsics ``K`` of the training image and ``camera_to_base`` (the optical centre in the base frame, m), and the
    ``preprocessing`` keys that switch the target-centred crops on (docs/formats.md)."""
    cam = world.camera if world is not None else CameraConfig()
    lid = world.lidar if world is not None else LidarConfig(**HARD_LIDAR)
    ref = world.reflectance if world is not None else ReflectanceConfig(**HARD_REFLECTANCE)
    c = cam.info()
    c["K"] = camera_intrinsics(cam, *TRAIN_SIZE)
    c["camera_to_base"] = {"translation": [cam.mount_forward, 0.0, cam.mount_height],
                           "optical_axes": "x right, y down, z forward (REP 103 optical frame)"}
    c["crop"] = dict(CAMERA_CROP)
    lidar = lid.info()
    lidar["crop"] = dict(LIDAR_CROP)
    scene = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SCENE.items()}
    return {"camera": c, "lidar": lidar, "reflectance": ref.info(), "scene": scene}


def _u(rng, lo_hi):
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi))


def kelvin_rgb(kelvin: float) -> np.ndarray:
    """Relative rgb of a black-body illuminant at ``kelvin`` (2700-6500 K), normalised to a maximum of 1
    (Tanner Helland's fit of the CIE 1964 black-body colours, good to a few percent in this range)."""
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
    rgb = np.clip(np.array([r, g, b]), 1.0, 255.0)
    return rgb / rgb.max()


def bounding_radius(spec) -> float:
    """Radius (m) of the circle around an object's footprint (an ``ObjectSpec`` of the hard world: cylinder,
    hexagonal prism measured across its flats, rounded box measured across its sides)."""
    return spec.width / 2 * {"cylinder": 1.0, "hexagonal_prism": 1.0 / math.cos(math.pi / 6),
                             "rounded_box": math.sqrt(2)}[spec.shape]


def inspection_distance(rim_gap: float, spec) -> float:
    """Distance (m) from the robot's centre to the centre of the object ``spec`` it inspects, for a drawn
    ``rim_gap`` (m, ``SCENE["distance_from_rim"]`` or ``SCENE["far_distance_from_rim"]``): ``AMIRO_RADIUS + rim_gap +
    r / 2`` with ``r`` the :func:`bounding_radius`, and never less than ``AMIRO_RADIUS + r + SCENE["min_clearance"]``,
    so that the camera on the robot's rim stays outside the object and beyond the renderer's near plane. The data set
    (:meth:`HardScene.observe`) and the simulated world's tours (``sim_world`` node) place the robot with it."""
    r = bounding_radius(spec)
    return max(AMIRO_RADIUS + rim_gap + 0.5 * r, AMIRO_RADIUS + r + SCENE["min_clearance"])


def draw_object(rng: np.random.Generator, label: Optional[int] = None) -> dict:
    """One object instance: ``label``, attribute ids and names, ``rgb``, ``width``, ``height``, ``corner``, ``ir``
    (:class:`IRMaterial`). Everything an observation cannot change."""
    if label is None:
        label = int(rng.integers(CLASSES.num_classes))
    c, s, m = CLASSES.attributes_of(label)
    colour, shape, material = CLASSES.colours[c], CLASSES.shapes[s], CLASSES.materials[m]
    hue = (SCENE["hue_centre"][colour] + rng.uniform(-1, 1) * SCENE["hue_halfwidth"]) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, _u(rng, SCENE["saturation"]), _u(rng, SCENE["value"]))
    width = _u(rng, SCENE["apparent_width"]) / SCENE["width_factor"][shape]
    height = _u(rng, SCENE["object_height"])
    corner = _u(rng, SCENE["rounded_box_corner"])
    r0 = _u(rng, SCENE["ir_normal_reflectance"][material])
    share = _u(rng, SCENE["ir_specular_share"][material]) if material != "matte" else 0.0
    ir = IRMaterial(r0 * (1 - share), r0 * share, SCENE["ir_exponent"][material])
    return {"label": label, "colour": c, "shape": s, "material": m, "names": (colour, shape, material),
            "rgb": tuple(float(v) for v in rgb), "width": width, "height": height, "corner": corner, "ir": ir,
            "hue": float(hue)}


def _surface_rgb(rng):
    """Walls and floor: off-white, beige, wood-like or bluish-grey tints (no reliable white reference)."""
    kind = int(rng.integers(4))
    v = rng.uniform(0.5, 0.95)
    hue, sat = [(0.1, (0.0, 0.08)), (0.11, (0.12, 0.3)), (0.07, (0.3, 0.5)), (0.6, (0.05, 0.25))][kind]
    return colorsys.hsv_to_rgb(hue + rng.uniform(-0.02, 0.02), rng.uniform(*sat), v)


def _distractor_rgb(rng):
    """Distractor colours: half of them from the classes' hue range (red-yellow), half anything else."""
    if rng.uniform() < 0.5:
        hue = rng.uniform(-0.03, 0.16) % 1.0
        return colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 0.95), rng.uniform(0.45, 0.9))
    if rng.uniform() < 0.5:
        v = rng.uniform(0.3, 0.9)
        return (v, v, v * rng.uniform(0.95, 1.05))
    return colorsys.hsv_to_rgb(rng.uniform(0.25, 0.85), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9))


def _distractor_spec(rng):
    from m2vae_fusion.sim.world import ObjectSpec

    shape = CLASSES.shapes[int(rng.integers(3))]
    mat = CLASSES.materials[int(rng.integers(3))]
    ir = IRMaterial(_u(rng, (0.05, 0.5)), _u(rng, (0.0, 0.4)), float(rng.choice([1.0, 4.0, 16.0])))
    return ObjectSpec("red", shape, mat, _u(rng, (0.04, 0.1)), _u(rng, (0.04, 0.09)), tuple(_distractor_rgb(rng)), ir,
                      world="hard", corner=_u(rng, (0.15, 0.35)))


def _dress_arena(w, rng: np.random.Generator, arena: float, centre, walls: bool) -> None:
    """Walls (square of side ``arena`` m around ``centre``; shown when ``walls``) and floor of a view: surface colours
    and the walls' IR materials drawn from ``rng``."""
    import pybullet as pb

    wall_rgb = [_surface_rgb(rng) for _ in range(4)]
    w.set_arena(arena, centre, wall_rgb=wall_rgb,
                wall_ir=[IRMaterial(float(rng.uniform(0.2, 0.6)), 0.0, 1.0) for _ in range(4)], visible=walls)
    fl = np.asarray(_surface_rgb(rng)) * rng.uniform(0.5, 0.8)
    pb.changeVisualShape(w.floor, -1, rgbaColor=(*fl, 1.0), physicsClientId=w.client)


def _draw_light(w, rng: np.random.Generator):
    """Flat (ambient) rendering light for the albedo and a drawn illuminant: (colour temperature K, intensity)."""
    w.set_lighting(direction=(0.0, 0.0, 1.0), colour=(1.0, 1.0, 1.0), ambient=1.0, diffuse=0.0, specular=0.0)
    warm = rng.uniform() < SCENE["warm_light_probability"]
    kelvin = _u(rng, SCENE["warm_colour_temperature_k" if warm else "colour_temperature_k"])
    inten = float(math.exp(rng.uniform(math.log(SCENE["light_intensity"][0]),
                                       math.log(SCENE["light_intensity"][1]))))
    return kelvin, inten


class HardScene:
    """The hard world's scene around one object instance at a time, observed by agent 0 from many views.

    Args:
        world: from :func:`make_world`.
    """

    def __init__(self, world):
        self.world = world
        self.target = None
        self.obj = None
        self.distractors = []

    def set_object(self, obj: dict, rng: np.random.Generator) -> None:
        """Replace the target by object instance ``obj`` (:func:`draw_object`) at the origin and draw a new set of
        distractor objects (1-4, kept for this object's views; they are moved per view)."""
        from m2vae_fusion.sim.world import ObjectSpec

        w = self.world
        w.clear_objects()
        colour, shape, material = obj["names"]
        spec = ObjectSpec(colour, shape, material, obj["height"], obj["width"], obj["rgb"], obj["ir"], world="hard",
                          corner=obj["corner"])
        self.target = w.add_object(spec, 0.0, 0.0, 0.0)
        self.obj = obj
        lo, hi = SCENE["distractors"]
        self.distractors = [w.add_object(_distractor_spec(rng), 20.0 + k, 20.0, 0.0)
                            for k in range(int(rng.integers(lo, hi + 1)))]

    def _radius(self, oid) -> float:
        return bounding_radius(self.world.objects[oid])

    def observe(self, rng: np.random.Generator) -> dict:
        """One view of the current object: randomise pose, light, distractors, occlusion; render and scan.

        Returns:
            ``camera`` uint8 (64, 64, 3), ``lidar`` float32 (B,), ``reflectance`` float32 (K, 2),
            ``target_position`` float32 (3,) (target centre in the agent's base frame, m), ``scene`` (drawn values).
        """
        import pybullet as pb

        w = self.world
        oyaw = float(rng.uniform(0, 2 * math.pi))
        w.set_object_pose(self.target, 0.0, 0.0, oyaw)
        r_t = self._radius(self.target)
        far = rng.uniform() < SCENE["far_view_probability"]
        # the clearance clamp draws nothing: views that do not need it are as they were before it existed
        dist = inspection_distance(_u(rng, SCENE["far_distance_from_rim" if far else "distance_from_rim"]),
                                   w.objects[self.target])
        bearing = float(rng.uniform(-math.pi, math.pi))
        offset = _u(rng, SCENE["heading_offset"])
        ax, ay, ayaw = w.inspect(0, self.target, dist, offset, bearing)

        # arena
        cx, cy = _u(rng, (-0.3, 0.3)), _u(rng, (-0.3, 0.3))
        need = 2 * (max(abs(ax - cx), abs(ay - cy)) + 0.35)
        arena = max(_u(rng, SCENE["arena_size"]), need)
        walls = bool(rng.uniform() < SCENE["walls_probability"])
        _dress_arena(w, rng, arena, (cx, cy), walls)

        # distractors: maybe one occluding the target, the others around it (never between robot and target)
        placed = []
        occluded = 0.0
        order = list(self.distractors)
        if order and rng.uniform() < SCENE["occlusion_probability"]:
            occ = order.pop(0)
            r_o = self._radius(occ)
            d_max = dist - r_t - r_o - 0.01
            d_min = AMIRO_RADIUS + r_o + 0.02
            if d_max > d_min:
                d_o = _u(rng, (d_min, d_max))
                frac = _u(rng, SCENE["occluded_fraction"])
                a_t, a_o = math.asin(min(0.99, r_t / dist)), math.asin(min(0.99, r_o / d_o))
                side = 1.0 if rng.uniform() < 0.5 else -1.0
                phi = side * (a_t + a_o - 2 * a_t * frac)  # occluder centre angle from the robot→target line
                ang = bearing + phi
                w.set_object_pose(occ, ax + d_o * math.cos(ang), ay + d_o * math.sin(ang), _u(rng, (0, math.pi)))
                placed.append((ax + d_o * math.cos(ang), ay + d_o * math.sin(ang), r_o))
                occluded = frac
            else:
                order.insert(0, occ)
        half = arena / 2 - 0.1
        for oid in order:
            r_o = self._radius(oid)
            for _ in range(20):
                x, y = rng.uniform(-half, half, size=2) + (cx, cy)
                if math.hypot(x, y) < r_t + r_o + 0.03 or math.hypot(x - ax, y - ay) < AMIRO_RADIUS + r_o + 0.03:
                    continue
                to_obj, to_box = bearing, math.atan2(y - ay, x - ax)
                dang = abs((to_box - to_obj + math.pi) % (2 * math.pi) - math.pi)
                if dang < math.radians(35) and math.hypot(x - ax, y - ay) < dist + r_t + r_o:
                    continue
                if any(math.hypot(x - px, y - py) < r_o + pr + 0.02 for px, py, pr in placed):
                    continue
                w.set_object_pose(oid, float(x), float(y), _u(rng, (0, math.pi)))
                placed.append((x, y, r_o))
                break
            else:
                w.set_object_pose(oid, 20.0 + oid, 20.0, 0.0)
        for oid in self.distractors:  # recolour per view (keeps shapes)
            pb.changeVisualShape(oid, -1, rgbaColor=(*_distractor_rgb(rng), 1.0), physicsClientId=w.client)

        # light: flat (ambient) rendering of the albedo, then the illuminant applied per pixel
        kelvin, inten = _draw_light(w, rng)
        albedo = w.render_camera(0, *TRAIN_SIZE, rng=rng, noise=False).astype(np.float32)
        cam = camera_response(albedo, kelvin, inten, _u(rng, SCENE["camera_blur_sigma_px"]), rng)
        lidar = w.lidar_scan(0, rng=rng)
        refl = w.reflectance_scan(0, rng=rng)
        interference = 0.0
        if rng.uniform() < SCENE["ir_interference_probability"]:
            interference = _u(rng, SCENE["ir_interference"])
            gain = 1.0 + 0.3 * rng.uniform(-1, 1, size=len(refl))
            refl = refl.copy()
            refl[:, 1] = refl[:, 1] + np.float32(interference) * gain.astype(np.float32)
            seen = ~np.isfinite(refl[:, 0])  # interference makes empty beams report a (false) return
            refl[seen, 0] = np.float32(w.reflectance.range_max) * rng.uniform(0.5, 1.0, size=int(seen.sum()))
        # target centre in the base frame (x forward, y left, z up)
        dx, dy = -ax, -ay
        c, s = math.cos(ayaw), math.sin(ayaw)
        pos = np.array([c * dx + s * dy, -s * dx + c * dy, self.obj["height"] / 2], np.float32)
        return {"camera": cam, "lidar": lidar, "reflectance": refl, "target_position": pos,
                "scene": {"distance": dist, "heading_offset": offset, "object_yaw": oyaw, "kelvin": kelvin,
                          "light_intensity": inten, "occluded_fraction": occluded, "walls": walls,
                          "ir_interference": interference,
                          "distractors": len(placed)}}


def camera_response(albedo: np.ndarray, kelvin: float, intensity: float, blur_sigma: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Camera model applied to a flat-lit albedo image (float, 0-255): illuminant colour (black body at ``kelvin``, no
    white balance), auto-exposure that brings the scene to its nominal level by a gain ``1 / intensity`` (so dark
    scenes carry amplified noise: read noise ``camera_gain_noise_dn / intensity`` DN plus shot noise), Gaussian blur
    of ``blur_sigma`` px, 8-bit quantisation. Returns uint8 (H, W, 3)."""
    import cv2

    img = albedo * kelvin_rgb(kelvin)[None, None, :].astype(np.float32)
    if blur_sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    sigma = np.sqrt((SCENE["camera_gain_noise_dn"] / intensity) ** 2 + 0.3 * np.maximum(img, 0) / intensity)
    img = img + rng.normal(0.0, 1.0, size=img.shape).astype(np.float32) * sigma.astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generate_samples(n: int, rng: np.random.Generator, views: int = 1, world=None,
                     object_offset: int = 0) -> Dict[str, np.ndarray]:
    """``n`` hard-world samples: ``ceil(n / views)`` object instances, each observed ``views`` times (the last one
    fewer when ``views`` does not divide ``n``). Arrays as the easy world's (camera uint8 (n, 64, 64, 3), lidar
    float32 (n, B), reflectance float32 (n, K, 2), present, label, colour, shape, material) plus
    ``target_position`` float32 (n, 3) (base frame, m) and ``object_id`` int64 (n,) (``object_offset`` + index of the
    object instance: equal ids = the same object)."""
    if views < 1:
        raise ValueError("views must be >= 1")
    own = world is None
    w = make_world() if own else world
    try:
        scene = HardScene(w)
        cam = np.empty((n, TRAIN_SIZE[1], TRAIN_SIZE[0], 3), np.uint8)
        lid = np.empty((n, w.lidar.beams), np.float32)
        ref = np.empty((n, w.reflectance.beams, 2), np.float32)
        pos = np.empty((n, 3), np.float32)
        lab = np.empty((5, n), np.int64)
        for i in range(n):
            if i % views == 0:
                obj = draw_object(rng)
                scene.set_object(obj, rng)
            smp = scene.observe(rng)
            cam[i], lid[i], ref[i], pos[i] = smp["camera"], smp["lidar"], smp["reflectance"], smp["target_position"]
            lab[:, i] = obj["label"], obj["colour"], obj["shape"], obj["material"], object_offset + i // views
    finally:
        if own:
            w.close()
    return {"camera": cam, "lidar": lid, "reflectance": ref, "present": np.ones((n, 3), bool),
            "label": lab[0], "colour": lab[1], "shape": lab[2], "material": lab[3], "target_position": pos,
            "object_id": lab[4]}


def camera_target_masks(n: int, rng: np.random.Generator, views: int = 1, world=None) -> Dict[str, np.ndarray]:
    """``n`` camera views drawn as :func:`generate_samples` draws them (``ceil(n / views)`` objects), each with the
    pixels that show the target (pybullet's segmentation of the same 64x64 render): a check of the simulated world,
    e.g. how often the camera does not see the target at all.

    Returns:
        ``camera`` uint8 (n, 64, 64, 3), ``target_position`` float32 (n, 3) (base frame, m), ``target_mask`` bool
        (n, 64, 64) (True: the pixel shows the target), ``occluded_fraction`` float32 (n,) (0: no occluder placed),
        ``label`` int64 (n,).

    Raises:
        ValueError: ``n`` or ``views`` < 1.
    """
    if n < 1 or views < 1:
        raise ValueError("n and views must be >= 1")
    own = world is None
    w = make_world() if own else world
    out = {"camera": [], "target_position": [], "target_mask": [], "occluded_fraction": [], "label": []}
    try:
        scene = HardScene(w)
        for i in range(n):
            if i % views == 0:
                scene.set_object(draw_object(rng), rng)
            smp = scene.observe(rng)
            out["camera"].append(smp["camera"])
            out["target_position"].append(smp["target_position"])
            out["target_mask"].append(w.camera_segmentation(0, *TRAIN_SIZE) == scene.target)
            out["occluded_fraction"].append(smp["scene"]["occluded_fraction"])
            out["label"].append(scene.obj["label"])
    finally:
        if own:
            w.close()
    dtypes = {"camera": np.uint8, "target_position": np.float32, "target_mask": bool, "occluded_fraction": np.float32,
              "label": np.int64}
    return {k: np.asarray(v, dtypes[k]) for k, v in out.items()}


def static_views(n: int, rng: np.random.Generator, sizes=((320, 240),), label: Optional[int] = None,
                 max_tries: int = 20, world=None) -> Dict[str, np.ndarray]:
    """``n`` observations of one object from one robot pose, as a robot standing still in front of its target
    receives them: the scene (object, pose, light, distractors) is drawn once (:meth:`HardScene.observe`, occlusion
    and IR interference left out), then every observation is a new sensor reading of it (camera gain and shot noise,
    LiDAR range noise, IR noise). The camera is rendered at the published ``sizes`` (as ``sim_world`` publishes it,
    without the training set's optical blur). Used by ``bench runtime`` to feed the node in-distribution frames with
    one target position.

    Args:
        n: observations per sensor (≥ 1).
        rng: the only source of randomness.
        sizes: camera image sizes (width, height) in pixels.
        label: class of the object (default drawn).
        max_tries: scenes drawn until one has no occlusion and no IR interference.
        world: a :func:`make_world` to reuse (default: one made and closed here).

    Returns:
        ``camera_<w>x<h>`` uint8 (n, h, w, 3) RGB per size, ``lidar`` float32 (n, B) m, ``reflectance`` float32
        (n, K, 2) (range m, intensity), ``target_position`` float32 (3,) (target centre in the base frame, m),
        ``label`` int64 ().

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    own = world is None
    w = make_world() if own else world
    try:
        scene = HardScene(w)
        obj = draw_object(rng, label)
        scene.set_object(obj, rng)
        for _ in range(max_tries):
            view = scene.observe(rng)
            if view["scene"]["occluded_fraction"] == 0.0 and view["scene"]["ir_interference"] == 0.0:
                break
        out = view_frames(w, view, n, rng, sizes)
        out["label"] = np.asarray(obj["label"], np.int64)
    finally:
        if own:
            w.close()
    return out


def view_frames(world, view: dict, n: int, rng: np.random.Generator, sizes=((320, 240),)) -> Dict[str, np.ndarray]:
    """``n`` new sensor readings of the scene as :meth:`HardScene.observe` left it (same object, pose, light,
    distractors): camera gain and shot noise at the published ``sizes`` (no optical blur), LiDAR range noise, IR
    noise (IR interference is not repeated).

    Args:
        world: the scene's world; view: the dict :meth:`HardScene.observe` returned for it; n: readings (≥ 1);
        rng: the only source of randomness; sizes: camera image sizes (width, height) in pixels.

    Returns:
        ``camera_<w>x<h>`` uint8 (n, h, w, 3) RGB per size, ``lidar`` float32 (n, B) m, ``reflectance`` float32
        (n, K, 2) (range m, intensity), ``target_position`` float32 (3,) (target centre in the base frame, m).
    """
    kelvin, inten = view["scene"]["kelvin"], view["scene"]["light_intensity"]
    out = {}
    for width, height in sizes:
        albedo = world.render_camera(0, int(width), int(height), noise=False).astype(np.float32)
        out[f"camera_{int(width)}x{int(height)}"] = np.stack(
            [camera_response(albedo, kelvin, inten, 0.0, rng) for _ in range(n)])
    out["lidar"] = np.stack([world.lidar_scan(0, rng=rng) for _ in range(n)]).astype(np.float32)
    out["reflectance"] = np.stack([world.reflectance_scan(0, rng=rng) for _ in range(n)]).astype(np.float32)
    out["target_position"] = np.asarray(view["target_position"], np.float32)
    return out


#: kinds of :func:`empty_views`
EMPTY_KINDS = ("floor", "wall", "room")


def empty_views(n: int, rng: np.random.Generator, kind: str, world=None) -> Dict[str, np.ndarray]:
    """``n`` views of the hard world **without objects** (out-of-distribution inputs for novelty, issue 14), each
    with its own arena, surface colours, light and robot pose drawn like :meth:`HardScene.observe` draws them:

    - ``"floor"``: an empty floor, no walls (the LiDAR and IR ring see nothing);
    - ``"wall"``: facing a wall 0.08-0.6 m away (from the robot's centre), heading within ±0.6 rad of it;
    - ``"room"``: anywhere in a walled room (≥ 0.25 m from the walls), any heading.

    The target position returned is where a robot would expect a target (straight ahead within the heading offsets
    and at the distances of :meth:`HardScene.observe`'s near views), as a stale or wrong TargetOfInterest would give it.

    Args:
        n: views (≥ 1); rng: the only source of randomness; kind: one of :data:`EMPTY_KINDS`;
        world: a :func:`make_world` to reuse (its objects are removed); default: one made and closed here.

    Returns:
        ``camera`` uint8 (n, 64, 64, 3), ``lidar`` float32 (n, B) m, ``reflectance`` float32 (n, K, 2),
        ``target_position`` float32 (n, 3) (base frame, m).

    Raises:
        ValueError: ``n`` < 1 or an unknown ``kind``.
    """
    if n < 1 or kind not in EMPTY_KINDS:
        raise ValueError(f"n must be >= 1 and kind one of {EMPTY_KINDS}, got {n}, {kind!r}")
    own = world is None
    w = make_world() if own else world
    out = {"camera": [], "lidar": [], "reflectance": [], "target_position": []}
    try:
        w.clear_objects()
        for _ in range(n):
            arena = _u(rng, SCENE["arena_size"])
            _dress_arena(w, rng, arena, (0.0, 0.0), walls=kind != "floor")
            h = arena / 2
            if kind == "wall":
                d = float(rng.uniform(0.08, 0.6))
                normal = (0.0, math.pi, math.pi / 2, -math.pi / 2)[int(rng.integers(4))]
                along = float(rng.uniform(-h + 0.3, h - 0.3))
                x = (h - d) * math.cos(normal) - along * math.sin(normal)
                y = (h - d) * math.sin(normal) + along * math.cos(normal)
                yaw = normal + float(rng.uniform(-0.6, 0.6))
            else:
                x, y = (float(v) for v in rng.uniform(-h + 0.25, h - 0.25, size=2))
                yaw = float(rng.uniform(-math.pi, math.pi))
            w.set_agent_pose(0, x, y, yaw)
            kelvin, inten = _draw_light(w, rng)
            albedo = w.render_camera(0, *TRAIN_SIZE, rng=rng, noise=False).astype(np.float32)
            out["camera"].append(camera_response(albedo, kelvin, inten, _u(rng, SCENE["camera_blur_sigma_px"]), rng))
            out["lidar"].append(w.lidar_scan(0, rng=rng))
            out["reflectance"].append(w.reflectance_scan(0, rng=rng))
            dist = AMIRO_RADIUS + _u(rng, SCENE["distance_from_rim"]) + 0.04
            bearing = -_u(rng, SCENE["heading_offset"])
            out["target_position"].append([dist * math.cos(bearing), dist * math.sin(bearing),
                                           float(np.mean(SCENE["object_height"])) / 2])
    finally:
        if own:
            w.close()
    return {k: np.asarray(v, np.uint8 if k == "camera" else np.float32) for k, v in out.items()}
