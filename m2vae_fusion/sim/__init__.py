"""Simulated AMiRo world (PyBullet, DIRECT mode, no display) and its tri-modal sensor models.

Units: metres, radians, seconds; world frame z up; agent frame x forward, y left, z up (REP 103). Angles of scans
are counter-clockwise from the agent's x axis (``sensor_msgs/LaserScan`` convention).

Classes (``m2vae_fusion.sim.world``, ``m2vae_fusion.sim.sensors``)
-----------------------------------------------------------------
``CameraConfig(width=320, height=240, fov_deg=45.0, aspect=4/3, near=0.01, far=6.0, mount_height=0.045,
noise_std=3.0)``
    forward RGB camera at body height; ``fov_deg`` is the vertical field of view, ``aspect`` the published
    image's width/height. Rendering at another size (e.g. the 64x64 training size) keeps this projection, so
    ``cv2.resize(published, (64, 64), interpolation=cv2.INTER_AREA)`` matches a direct 64x64 render.
``LidarConfig(beams=667, angle_min=-2.0944, angle_max=2.0944, range_min=0.02, range_max=5.6, noise_std=0.002,
resolution=0.001, mount_height=0.03)``
    Hokuyo URG-04LX-like planar scan at the objects' mid height; ``angle_increment = (max-min)/(beams-1)``
    (≈ 0.36 deg); ranges from the robot centre.
``ReflectanceConfig(beams=8, half_angle=15 deg, range_max=0.8, intensity_max=1.0, ...)``
    AMiRo-like ring of 8 infrared time-of-flight proximity sensors on the body rim (beam k points at
    ``k*45 deg`` wrapped to (-180, 180], beam 0 forward), each returning the range (m, ``+inf`` when nothing is
    detected within ``range_max``) and intensity (unitless, >= 0, 0 when nothing is detected) of the strongest
    return in its 30 deg field of view; intensity depends on the IR material (``IRMaterial``), range and incidence
    angle, not on visible colour; noisy.
``IRMaterial(diffuse, specular=0, exponent=1)``: IR response ``diffuse*cos(t) + specular*cos(t)**exponent``.
``ObjectSpec(colour, shape, material, height=0.065, width=0.05, rgb=None, ir=None)``
    a primitive object of the 8 classes (colour in {red, green}, shape in {cylinder, cube}, material in
    {matte, shiny}); ``height`` 0.05-0.08 m, ``width`` = cylinder diameter or cube side (m);
    ``spec.class_id`` = 4*colour + 2*shape + material, ``spec.class_name`` e.g. ``"red_cylinder_shiny"``.
``World(num_agents=1, camera=CameraConfig(), lidar=LidarConfig(), reflectance=ReflectanceConfig(), seed=0,
arena_size=2.0, walls=True, clutter=3)``
    one PyBullet DIRECT client holding a floor, optional walls, ``num_agents`` (1-16) AMiRo-scale robots (body
    diameter 0.099 m, parked far outside the arena until posed) and objects. An agent's own sensors never see its
    own body but do see the other agents. Sensor noise is drawn from the world's own ``numpy.random.Generator``
    (``seed``) unless a generator is passed. Methods:

    - ``add_object(spec, x, y, yaw=0.0) -> int`` object id; ``remove_object(oid)``; ``set_object_pose(oid, x, y, yaw)``;
      ``objects -> dict[int, ObjectSpec]``; ``clear_objects()``.
    - ``set_agent_pose(agent, x, y, yaw)``; ``agent_pose(agent) -> (x, y, yaw)``.
    - ``inspect(agent, oid, distance, heading_offset=0.0, bearing=None) -> (x, y, yaw)``: put agent ``agent`` at
      ``distance`` m (centre to centre; the data set uses 0.10-0.50 m from the body rim, i.e. +0.0495) from object
      ``oid`` on the line of world angle ``bearing`` (rad, agent → object; default: keep the agent's current side),
      heading = bearing + ``heading_offset``, so the object appears at angle ``-heading_offset`` in the agent frame.
    - ``set_arena(arena_size, centre=(0, 0), wall_rgb=None, wall_ir=None)``; ``place_clutter(poses, rgb, ir)``.
    - ``set_lighting(direction, colour, ambient, diffuse, specular)``: the light used by the camera.
    - ``render_camera(agent, width=None, height=None, rng=None, noise=True) -> uint8 (H, W, 3)`` rgb8; default size is
      the published one (``camera.width`` x ``camera.height``); pass ``64, 64`` for the training size.
    - ``lidar_scan(agent, rng=None, noise=True) -> float32 (B,)`` ranges (m), ``+inf`` beyond ``range_max`` (REP 117).
    - ``lidar_info() -> dict`` ``beams, angle_min, angle_max, angle_increment, range_min, range_max`` (rad, m).
    - ``reflectance_scan(agent, rng=None, noise=True) -> float32 (K, 2)`` columns range (m, ``+inf``) and intensity.
    - ``reflectance_info() -> dict`` ``beams, angles, range_max, intensity_max, ...``.
    - ``observe(agent, camera_size=None, rng=None) -> dict`` ``camera``, ``lidar``, ``reflectance`` arrays.
    - ``close()`` (also a context manager).

The hard world (``m2vae_fusion.sim.hard``)
------------------------------------------
27 classes (red / orange / yellow × cylinder / hexagonal prism / rounded box × matte / satin / shiny), object
instances observed from several views (``generate_samples(n, rng, views)``, ``object_id``), ambiguity per view
(warm light, far views, occlusion, IR interference, 1 cm LiDAR noise), the target's position in the base frame per
sample, ``sensor_metadata()`` with camera intrinsics and crop configs. ``World`` builds its shapes
(``shape_mesh``) from ``ObjectSpec(..., world="hard")``.

Data generation (``m2vae_fusion.sim.generate``)
-----------------------------------------------
``make_world(seed=0) -> World`` (the data set's world); ``random_sample(world, rng, label=None) -> dict``:
randomises one scene (object class, pose, size, colour and IR jitter, robot distance 0.10-0.50 m from the rim and
heading offset ±0.2 rad, lighting, walls, clutter) with the given seeded ``numpy.random.Generator`` and returns
``camera`` uint8 (64, 64, 3), ``lidar`` float32 (667,), ``reflectance`` float32 (8, 2), ``label``, ``colour``,
``shape``, ``material`` (int), ``scene`` (drawn parameters). ``generate_samples(n, rng) -> dict`` of stacked arrays
(the shard layout of docs/formats.md); ``generate_shard(seed, split, index, n)`` (deterministic per shard);
``sensor_metadata() -> dict`` the ``metadata.json["sensors"]`` block.
"""
