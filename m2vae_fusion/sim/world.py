"""The simulated AMiRo world: a PyBullet DIRECT client with a floor, walls, AMiRo-scale robots and primitive objects.

Units are metres and radians; world frame z up; agent frame x forward, y left (REP 103). The sensor models live in
:mod:`m2vae_fusion.sim.sensors`; this module places things and asks the sensors to measure. See the package
docstring (:mod:`m2vae_fusion.sim`) for an overview.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pybullet as pb

from m2vae_fusion.data.classes import classes_of
from m2vae_fusion.sim import sensors as _sensors
from m2vae_fusion.sim.sensors import CameraConfig, IRMaterial, LidarConfig, ReflectanceConfig

#: AMiRo body (Herbrechtsmeier et al., ICSTCC 2016): diameter 0.099 m; height of the modelled body in m.
AMIRO_DIAMETER = 0.099
AMIRO_HEIGHT = 0.076

#: Nominal IR reflectance (BRDF) parameters of the two object materials; ``generate`` jitters them per sample.
#: "matte": IR-absorbing coating (low diffuse albedo, no gloss); "shiny": IR-reflective lacquer (high diffuse
#: albedo and a broad specular lobe). Both look the same to the camera (same visible gloss).
IR_MATERIALS = {
    "matte": IRMaterial(diffuse=0.10, specular=0.0, exponent=1.0),
    "shiny": IRMaterial(diffuse=0.60, specular=0.25, exponent=4.0),
}

#: Nominal visible colours (rgb in [0, 1]) of an object of each colour name when none is given.
_NOMINAL_RGB = {"red": (0.8, 0.1, 0.1), "green": (0.1, 0.7, 0.1), "orange": (0.85, 0.4, 0.08),
                "yellow": (0.85, 0.7, 0.1)}

#: Visible specular colour given to every object (so that the camera cannot tell IR materials apart).
VISIBLE_SPECULAR = (0.1, 0.1, 0.1)


MAX_AGENTS = 16


def _agent_group(k: int) -> int:
    return 1 << (8 + k)


def _ray_mask(k: int) -> int:
    """Collision filter mask of agent k's rays: everything except agent k's own body."""
    return 0x7FFFFFFF & ~_agent_group(k)


def _cylinder_mesh(radius: float, height: float, segments: int = 48):
    """Closed triangle mesh of an upright cylinder centred at the origin (the 48-gon deviates < 0.1 % of the radius).
    Static triangle meshes make PyBullet's ray casts several times faster than its convex primitives."""
    a = 2 * math.pi * np.arange(segments) / segments
    ring = np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)
    bottom = np.concatenate([ring, np.full((segments, 1), -height / 2)], axis=1)
    top = np.concatenate([ring, np.full((segments, 1), height / 2)], axis=1)
    verts = np.concatenate([bottom, top, [[0, 0, -height / 2], [0, 0, height / 2]]])
    idx = []
    cb, ct = 2 * segments, 2 * segments + 1
    for i in range(segments):
        j = (i + 1) % segments
        idx += [i, j, segments + j, i, segments + j, segments + i, cb, j, i, ct, segments + i, segments + j]
    return verts.tolist(), idx


def _prism_mesh(radius: float, height: float, sides: int, phase: float = 0.0):
    """Closed triangle mesh of an upright regular prism (``sides`` faces, circumradius ``radius``), centred at the
    origin; vertex k at angle ``phase + 2 pi k / sides``."""
    a = phase + 2 * math.pi * np.arange(sides) / sides
    ring = np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)
    return _extrude(ring, height)


def _rounded_box_mesh(side: float, corner: float, height: float, segments: int = 6):
    """Closed triangle mesh of an upright square box of side ``side`` whose vertical edges are rounded with radius
    ``corner`` (``segments`` facets per quarter circle), centred at the origin."""
    h = side / 2 - corner
    pts = []
    for q, (cx, cy) in enumerate(((h, h), (-h, h), (-h, -h), (h, -h))):
        for j in range(segments + 1):
            t = math.pi / 2 * (q + j / segments)
            pts.append((cx + corner * math.cos(t), cy + corner * math.sin(t)))
    return _extrude(np.asarray(pts), height)


def _extrude(ring: np.ndarray, height: float):
    """Closed mesh of the convex polygon ``ring`` (P, 2), counter-clockwise, extruded to ``height`` around z = 0."""
    p = len(ring)
    bottom = np.concatenate([ring, np.full((p, 1), -height / 2)], axis=1)
    top = np.concatenate([ring, np.full((p, 1), height / 2)], axis=1)
    verts = np.concatenate([bottom, top, [[0, 0, -height / 2], [0, 0, height / 2]]])
    idx = []
    cb, ct = 2 * p, 2 * p + 1
    for i in range(p):
        j = (i + 1) % p
        idx += [i, j, p + j, i, p + j, p + i, cb, j, i, ct, p + i, p + j]
    return verts.tolist(), idx


def shape_mesh(shape: str, width: float, height: float, corner: float = 0.25):
    """``(vertices, indices)`` of a hard-world shape: ``"cylinder"`` (48-gon, diameter ``width``),
    ``"hexagonal_prism"`` (across-flats ``width``), ``"rounded_box"`` (side ``width``, corner radius
    ``corner * width``), ``"cube"`` (side ``width``, the easy world's). Raises ValueError for another shape."""
    if shape == "cylinder":
        return _cylinder_mesh(width / 2, height)
    if shape == "hexagonal_prism":
        return _prism_mesh(width / 2 / math.cos(math.pi / 6), height, 6, math.pi / 6)
    if shape == "rounded_box":
        return _rounded_box_mesh(width, corner * width, height)
    if shape == "cube":
        return _box_mesh((width / 2, width / 2, height / 2))
    raise ValueError(f"unknown shape {shape!r}")


def _box_mesh(he):
    """Closed triangle mesh of a box with half extents ``he`` centred at the origin."""
    x, y, z = he
    verts = [[sx * x, sy * y, sz * z] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    idx = []
    for a, b, c, d in quads:
        idx += [a, b, c, a, c, d]
    return verts, idx


def _mesh_collision(client: int, verts, idx) -> int:
    return pb.createCollisionShape(pb.GEOM_MESH, vertices=verts, indices=idx, physicsClientId=client)


@dataclass
class ObjectSpec:
    """One primitive object of a world's classes (``m2vae_fusion.data.classes.WORLDS``).

    Args:
        colour: easy world ``"red"`` or ``"green"``; hard world ``"red"``, ``"orange"`` or ``"yellow"``.
        shape: easy ``"cylinder"`` or ``"cube"`` (square footprint; ``width`` is the side); hard ``"cylinder"``,
            ``"hexagonal_prism"`` (``width`` across flats) or ``"rounded_box"`` (side ``width``, vertical edges
            rounded with radius ``corner * width``).
        material: easy ``"matte"`` or ``"shiny"``; hard ``"matte"``, ``"satin"`` or ``"shiny"`` (infrared
            reflectance, see :data:`IR_MATERIALS` and :data:`m2vae_fusion.sim.hard.IR_NOMINAL`).
        height: m, 0.05-0.08 for the easy data set.
        width: cylinder diameter, prism across-flats width or box side in m.
        rgb: visible colour, three floats in [0, 1]; default a nominal colour of the class.
        ir: infrared material; default the nominal one of ``material``.
        world: ``"easy"`` (default) or ``"hard"``: which class set the names belong to.
        corner: corner radius of a rounded box as a fraction of ``width`` (0 < corner <= 0.5).

    Raises:
        ValueError: unknown world, colour, shape or material, or non-positive size.
    """

    colour: str
    shape: str
    material: str
    height: float = 0.065
    width: float = 0.05
    rgb: Optional[Tuple[float, float, float]] = None
    ir: Optional[IRMaterial] = None
    world: str = "easy"
    corner: float = 0.25

    def __post_init__(self):
        cs = classes_of(self.world)
        if self.colour not in cs.colours or self.shape not in cs.shapes or self.material not in cs.materials:
            raise ValueError(f"unknown {self.world}-world object attributes {self.colour!r}, {self.shape!r}, "
                             f"{self.material!r}")
        if not (self.height > 0 and self.width > 0):
            raise ValueError("object height and width must be positive")
        if not 0 < self.corner <= 0.5:
            raise ValueError("corner must be in (0, 0.5]")
        if self.rgb is None:
            self.rgb = _NOMINAL_RGB[self.colour]
        if self.ir is None:
            if self.world == "easy":
                self.ir = IR_MATERIALS[self.material]
            else:
                from m2vae_fusion.sim.hard import IR_NOMINAL
                self.ir = IR_NOMINAL[self.material]

    @property
    def class_id(self) -> int:
        """``(colour * n_shapes + shape) * n_materials + material`` of the object's world (easy: 4c + 2s + m)."""
        return classes_of(self.world).class_id(self.colour, self.shape, self.material)

    @property
    def class_name(self) -> str:
        """e.g. ``"red_cylinder_shiny"``."""
        return classes_of(self.world).class_name(self.colour, self.shape, self.material)


@dataclass
class _Clutter:
    body: int
    half_extents: Tuple[float, float, float]
    ir: IRMaterial = field(default_factory=lambda: IRMaterial(0.4, 0.0, 1.0))


class World:
    """A PyBullet world (DIRECT mode, no display) with ``num_agents`` AMiRo robots, each carrying a forward camera, a
    planar LiDAR and a ring of infrared proximity sensors.

    Args:
        num_agents: number of robots (>= 1). Agents are indexed 0 … num_agents-1 and start parked outside the arena.
        camera, lidar, reflectance: sensor configurations (see :mod:`m2vae_fusion.sim.sensors`).
        seed: seed of the world's own ``numpy.random.Generator`` used for sensor noise when no ``rng`` is passed.
        arena_size: side of the square arena in m (walls at ±arena_size/2 around the origin).
        walls: whether the arena has walls.
        clutter: number of neutral-coloured clutter boxes kept in a pool (``place_clutter`` moves them in and out).

    Raises:
        ValueError: ``num_agents`` < 1 or ``arena_size`` <= 0.
    """

    def __init__(self, num_agents: int = 1, camera: Optional[CameraConfig] = None,
                 lidar: Optional[LidarConfig] = None, reflectance: Optional[ReflectanceConfig] = None,
                 seed: int = 0, arena_size: float = 2.0, walls: bool = True, clutter: int = 3):
        if not 1 <= num_agents <= MAX_AGENTS:
            raise ValueError(f"num_agents must be 1..{MAX_AGENTS}")
        if arena_size <= 0:
            raise ValueError("arena_size must be positive")
        self.camera = camera or CameraConfig()
        self.lidar = lidar or LidarConfig()
        self.reflectance = reflectance or ReflectanceConfig()
        self.rng = np.random.default_rng(seed)
        self.client = pb.connect(pb.DIRECT)
        self._objects: Dict[int, ObjectSpec] = {}
        self._ir: Dict[int, IRMaterial] = {}  # body id -> IR material (anything else: default_ir)
        self.default_ir = IRMaterial(0.35, 0.0, 1.0)
        self.light = dict(direction=(0.4, 0.3, 1.0), colour=(1.0, 1.0, 1.0), ambient=0.65, diffuse=0.35,
                          specular=0.1)
        c = self.client
        # floor: a thin grey slab (the scan planes are above it and never hit it)
        self.floor = self._box((4.0, 4.0, 0.005), (0.0, 0.0, -0.005), (0.55, 0.55, 0.55), collide=False)
        self._ir[self.floor] = IRMaterial(0.3, 0.0, 1.0)
        self.walls = []
        if walls:
            for _ in range(4):
                self.walls.append(self._box((0.01, 2.5, 0.15), (0.0, 0.0, 0.15), (0.85, 0.85, 0.82)))
        self.set_arena(arena_size)
        self._clutter = []
        for k in range(clutter):
            he = (0.03 + 0.015 * k, 0.04 + 0.01 * (k % 2), 0.05 + 0.02 * k)
            body = self._box(he, (10.0 + k, 10.0, he[2]), (0.5, 0.5, 0.55))
            self._clutter.append(_Clutter(body, he))
        self.agents = []
        col = _mesh_collision(c, *_cylinder_mesh(AMIRO_DIAMETER / 2, AMIRO_HEIGHT))
        vis = pb.createVisualShape(pb.GEOM_CYLINDER, radius=AMIRO_DIAMETER / 2, length=AMIRO_HEIGHT,
                                   rgbaColor=(0.92, 0.92, 0.92, 1.0), specularColor=(0.2, 0.2, 0.2),
                                   physicsClientId=c)
        for k in range(num_agents):
            body = pb.createMultiBody(0, col, vis, (-20.0 - k, -20.0, AMIRO_HEIGHT / 2), physicsClientId=c)
            # each agent in its own collision group, so that its own sensors' rays skip its body
            pb.setCollisionFilterGroupMask(body, -1, _agent_group(k), 0xFFFF, physicsClientId=c)
            self._ir[body] = IRMaterial(0.45, 0.05, 2.0)
            self.agents.append(body)
        self._poses = [(-20.0 - k, -20.0, 0.0) for k in range(num_agents)]

    # ------------------------------------------------------------------ construction helpers
    def _box(self, half_extents, pos, rgb, yaw=0.0, collide=True) -> int:
        c = self.client
        col = _mesh_collision(c, *_box_mesh(half_extents)) if collide else -1
        vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=half_extents, rgbaColor=(*rgb, 1.0),
                                   specularColor=(0.05, 0.05, 0.05), physicsClientId=c)
        return pb.createMultiBody(0, col, vis, pos, pb.getQuaternionFromEuler((0, 0, yaw)), physicsClientId=c)

    def set_arena(self, arena_size: float, centre: Tuple[float, float] = (0.0, 0.0),
                  wall_rgb: Optional[Sequence[Sequence[float]]] = None,
                  wall_ir: Optional[Sequence[IRMaterial]] = None, visible: bool = True) -> None:
        """Move the walls to a square of side ``arena_size`` (m) around ``centre``; optionally recolour them
        (``wall_rgb``: four rgb triples in [0, 1]) and set their IR materials. ``visible=False`` removes them from
        view (parked far below the floor) until the next call."""
        self.arena_size = float(arena_size)
        h = arena_size / 2
        cx, cy = centre
        z = 0.15 if visible else -100.0
        poses = [((cx + h, cy, z), 0.0), ((cx - h, cy, z), 0.0),
                 ((cx, cy + h, z), math.pi / 2), ((cx, cy - h, z), math.pi / 2)]
        for k, (body, (pos, yaw)) in enumerate(zip(self.walls, poses)):
            pb.resetBasePositionAndOrientation(body, pos, pb.getQuaternionFromEuler((0, 0, yaw)),
                                               physicsClientId=self.client)
            if wall_rgb is not None:
                pb.changeVisualShape(body, -1, rgbaColor=(*wall_rgb[k], 1.0), physicsClientId=self.client)
            self._ir[body] = wall_ir[k] if wall_ir is not None else IRMaterial(0.4, 0.0, 1.0)

    def place_clutter(self, poses: Sequence[Tuple[float, float, float]],
                      rgb: Optional[Sequence[Sequence[float]]] = None,
                      ir: Optional[Sequence[IRMaterial]] = None) -> None:
        """Place the first ``len(poses)`` clutter boxes at ``(x, y, yaw)`` (m, rad) and park the rest far away.
        ``rgb``: their visible colours; ``ir``: their IR materials. Raises ValueError for too many poses."""
        if len(poses) > len(self._clutter):
            raise ValueError(f"at most {len(self._clutter)} clutter boxes")
        for k, cl in enumerate(self._clutter):
            if k < len(poses):
                x, y, yaw = poses[k]
                pos = (x, y, cl.half_extents[2])
            else:
                pos, yaw = (10.0 + k, 10.0, cl.half_extents[2]), 0.0
            pb.resetBasePositionAndOrientation(cl.body, pos, pb.getQuaternionFromEuler((0, 0, yaw)),
                                               physicsClientId=self.client)
            if rgb is not None and k < len(rgb):
                pb.changeVisualShape(cl.body, -1, rgbaColor=(*rgb[k], 1.0), physicsClientId=self.client)
            if ir is not None and k < len(ir):
                self._ir[cl.body] = ir[k]

    @property
    def clutter_half_extents(self):
        """Half extents (m) of the clutter boxes of the pool, in order."""
        return [cl.half_extents for cl in self._clutter]

    # ------------------------------------------------------------------ objects
    def add_object(self, spec: ObjectSpec, x: float, y: float, yaw: float = 0.0) -> int:
        """Add ``spec`` standing on the floor at ``(x, y)`` (m) rotated by ``yaw`` (rad); returns its object id."""
        c = self.client
        spec_rgba = (*[float(v) for v in spec.rgb], 1.0)
        if spec.world != "easy":
            verts, idx = shape_mesh(spec.shape, spec.width, spec.height, spec.corner)
            col = _mesh_collision(c, verts, idx)
            vis = pb.createVisualShape(pb.GEOM_MESH, vertices=verts, indices=idx, rgbaColor=spec_rgba,
                                       specularColor=VISIBLE_SPECULAR, physicsClientId=c)
        elif spec.shape == "cylinder":
            col = _mesh_collision(c, *_cylinder_mesh(spec.width / 2, spec.height))
            vis = pb.createVisualShape(pb.GEOM_CYLINDER, radius=spec.width / 2, length=spec.height,
                                       rgbaColor=spec_rgba, specularColor=VISIBLE_SPECULAR, physicsClientId=c)
        else:
            he = (spec.width / 2, spec.width / 2, spec.height / 2)
            col = _mesh_collision(c, *_box_mesh(he))
            vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=he, rgbaColor=spec_rgba,
                                       specularColor=VISIBLE_SPECULAR, physicsClientId=c)
        body = pb.createMultiBody(0, col, vis, (x, y, spec.height / 2), pb.getQuaternionFromEuler((0, 0, yaw)),
                                  physicsClientId=c)
        self._objects[body] = spec
        self._ir[body] = spec.ir
        return body

    def remove_object(self, oid: int) -> None:
        """Remove object ``oid``. Raises KeyError for an unknown id."""
        spec = self._objects.pop(oid)
        del spec
        self._ir.pop(oid, None)
        pb.removeBody(oid, physicsClientId=self.client)

    def clear_objects(self) -> None:
        """Remove every object added with :meth:`add_object`."""
        for oid in list(self._objects):
            self.remove_object(oid)

    def set_object_pose(self, oid: int, x: float, y: float, yaw: float = 0.0) -> None:
        """Move object ``oid`` to ``(x, y)`` (m), rotated by ``yaw`` (rad). Raises KeyError for an unknown id."""
        spec = self._objects[oid]
        pb.resetBasePositionAndOrientation(oid, (x, y, spec.height / 2), pb.getQuaternionFromEuler((0, 0, yaw)),
                                           physicsClientId=self.client)

    def object_pose(self, oid: int) -> Tuple[float, float, float]:
        """``(x, y, yaw)`` of object ``oid`` (m, rad)."""
        pos, orn = pb.getBasePositionAndOrientation(oid, physicsClientId=self.client)
        return pos[0], pos[1], pb.getEulerFromQuaternion(orn)[2]

    @property
    def objects(self) -> Dict[int, ObjectSpec]:
        """Object id -> :class:`ObjectSpec` of every object in the world (a copy)."""
        return dict(self._objects)

    # ------------------------------------------------------------------ agents
    @property
    def num_agents(self) -> int:
        return len(self.agents)

    def set_agent_pose(self, agent: int, x: float, y: float, yaw: float) -> None:
        """Put agent ``agent`` at ``(x, y)`` (m) with heading ``yaw`` (rad, counter-clockwise from world x)."""
        pb.resetBasePositionAndOrientation(self.agents[agent], (x, y, AMIRO_HEIGHT / 2),
                                           pb.getQuaternionFromEuler((0, 0, yaw)), physicsClientId=self.client)
        self._poses[agent] = (float(x), float(y), float(yaw))

    def agent_pose(self, agent: int) -> Tuple[float, float, float]:
        """``(x, y, yaw)`` of agent ``agent`` (m, rad)."""
        return self._poses[agent]

    def inspect(self, agent: int, oid: int, distance: float, heading_offset: float = 0.0,
                bearing: Optional[float] = None) -> Tuple[float, float, float]:
        """Pose agent ``agent`` to inspect object ``oid``.

        The agent's centre is put ``distance`` m (horizontal, centre to centre) from the object's centre, on the side
        given by ``bearing`` (world angle in rad of the line from the agent to the object; default: keep the agent's
        current side). Its heading is that line's angle plus ``heading_offset`` (rad), so the object appears at
        angle ``-heading_offset`` in the agent frame (positive offset: the agent looks left of the object, the
        object appears on the right of the image and at negative scan angles).

        Returns:
            the agent's new pose ``(x, y, yaw)``.
        Raises:
            ValueError: ``distance`` not larger than the AMiRo radius.
        """
        if distance <= AMIRO_DIAMETER / 2:
            raise ValueError("inspection distance must exceed the robot radius (0.0495 m)")
        ox, oy, _ = self.object_pose(oid)
        if bearing is None:
            ax, ay, _ = self._poses[agent]
            bearing = math.atan2(oy - ay, ox - ax)
        x = ox - distance * math.cos(bearing)
        y = oy - distance * math.sin(bearing)
        yaw = bearing + heading_offset
        self.set_agent_pose(agent, x, y, yaw)
        return x, y, yaw

    # ------------------------------------------------------------------ lighting
    def set_lighting(self, direction=None, colour=None, ambient=None, diffuse=None, specular=None) -> None:
        """Set the camera light: ``direction`` (3 floats, towards the light), ``colour`` (rgb in [0, 1]) and the
        TinyRenderer ambient/diffuse/specular coefficients. Arguments left None keep their value."""
        for key, val in (("direction", direction), ("colour", colour), ("ambient", ambient),
                         ("diffuse", diffuse), ("specular", specular)):
            if val is not None:
                self.light[key] = tuple(float(v) for v in val) if key in ("direction", "colour") else float(val)

    # ------------------------------------------------------------------ sensors
    def render_camera(self, agent: int, width: Optional[int] = None, height: Optional[int] = None,
                      rng: Optional[np.random.Generator] = None, noise: bool = True) -> np.ndarray:
        """RGB image of agent ``agent``'s forward camera: uint8 (height, width, 3), rgb8.

        Default size is the published one (``camera.width`` x ``camera.height``); any other size (e.g. 64x64 for
        training) keeps the published projection (vertical FOV ``camera.fov_deg``, aspect ``camera.aspect``).
        Noise (sensor read noise, ``camera.noise_std`` DN) is drawn from ``rng`` (default: the world's).
        """
        w = int(width or self.camera.width)
        h = int(height or self.camera.height)
        return _sensors.render_camera(self.client, self.camera, self._poses[agent], w, h, self.light,
                                      rng if rng is not None else self.rng, noise)

    def camera_segmentation(self, agent: int, width: Optional[int] = None, height: Optional[int] = None) -> np.ndarray:
        """Body shown by each pixel of agent ``agent``'s forward camera at the pose and projection of
        :meth:`render_camera`: int32 (height, width) pybullet body unique ids (``self.objects`` keys), −1 for
        background. For checks of the simulated world (is the target in view?), not a sensor."""
        w = int(width or self.camera.width)
        h = int(height or self.camera.height)
        return _sensors.render_segmentation(self.client, self.camera, self._poses[agent], w, h)

    def lidar_scan(self, agent: int, rng: Optional[np.random.Generator] = None, noise: bool = True) -> np.ndarray:
        """Planar LiDAR scan of agent ``agent``: float32 (beams,) ranges in m, ``+inf`` when nothing is hit within
        ``range_max`` (REP 117), ordered from ``angle_min`` counter-clockwise. Noise from ``rng`` (default: world's)."""
        return _sensors.lidar_scan(self.client, self.lidar, self._poses[agent],
                                   rng if rng is not None else self.rng, noise, _ray_mask(agent))

    def lidar_info(self) -> dict:
        """``beams``, ``angle_min``, ``angle_max``, ``angle_increment`` (rad), ``range_min``, ``range_max`` (m)."""
        return self.lidar.info()

    def reflectance_scan(self, agent: int, rng: Optional[np.random.Generator] = None,
                         noise: bool = True) -> np.ndarray:
        """IR proximity ring of agent ``agent``: float32 (K, 2); column 0 range (m, ``+inf`` when nothing within
        ``range_max``), column 1 reflected intensity (unitless, >= 0, 0 when nothing is seen)."""
        return _sensors.reflectance_scan(self.client, self.reflectance, self._poses[agent], self._ir,
                                         self.default_ir, rng if rng is not None else self.rng, noise,
                                         _ray_mask(agent))

    def reflectance_info(self) -> dict:
        """``beams``, ``angles`` (rad, agent frame), ``range_max`` (m), ``intensity_max`` and the model parameters."""
        return self.reflectance.info()

    def observe(self, agent: int, camera_size: Optional[Tuple[int, int]] = None,
                rng: Optional[np.random.Generator] = None, noise: bool = True) -> dict:
        """All three sensors of agent ``agent``: ``{"camera": uint8 (H, W, 3), "lidar": float32 (B,),
        "reflectance": float32 (K, 2)}``; ``camera_size`` = (width, height), default the published size."""
        w, h = camera_size if camera_size is not None else (None, None)
        return {"camera": self.render_camera(agent, w, h, rng, noise),
                "lidar": self.lidar_scan(agent, rng, noise),
                "reflectance": self.reflectance_scan(agent, rng, noise)}

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Disconnect the PyBullet client (idempotent)."""
        if self.client is not None and self.client >= 0:
            try:
                pb.disconnect(physicsClientId=self.client)
            except pb.error:
                pass
            self.client = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
