"""``m2vae-fusion bench belief``: evidence accumulation against injected misreads, and novelty scores in and out of
distribution (issue 14), on the bundle's own simulated world.

Misread scenario, per sensor (a one-sensor agent, :class:`~m2vae_fusion.core.agent.Agent`): 20 observations of one
object of attribute value ``a`` (camera: colour, LiDAR: shape, reflectance: material), one misread (a real
observation of another object with value ``b``), 5 good observations, a burst of 3 misreads, 5 good observations, then
the object is replaced by one of value ``b`` (10 observations). The belief's attribute is the class-belief head's
probabilities summed per attribute value; reported for the agent with accumulation (the node's defaults) and without
(``forgetting_factor`` 0: each observation replaces its slot, as in FUSION 2019).

Novelty: calibrated on the data set's first part (:func:`m2vae_fusion.training.export.compute_novelty_block`),
scored on held-out in-distribution observations and on out-of-distribution inputs (flat walls and corridors of a
361-beam 180° scan, constant and all-max-range scans, flat and two-tone images, empty and wall-only reflectance).

Also (:func:`gate_separability`, :func:`accumulation_over_views`): how well the outlier gate's feature distance tells
an observation of another attribute value from one of the same, and, for hard-world bundles, the 27-class accuracy
after k views of one object per sensor for the engine's slot accumulation against a product of unimodal class
posteriors; and (:func:`camera_target_visibility`) the camera's in-distribution novelty figures split by whether
the simulated camera sees the target under the crop centre. Observations carry their target position (hard-world
bundles crop around it, as the node does).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

HELP = "belief accumulation vs injected misreads, and novelty scores in/out of distribution (plots)"

#: the attribute of the class each sensor observes
ATTRIBUTE = {"camera": "colour", "lidar": "shape", "reflectance": "material"}
GOOD, BURST, NEW = 20, 3, 10


def world_of(bundle):
    """The :class:`~m2vae_fusion.data.classes.World` the bundle was trained on (manifest, else easy)."""
    from m2vae_fusion.data.classes import WORLDS
    from m2vae_fusion.ros.demo import bundle_world

    return WORLDS[bundle_world(bundle.manifest)]


def generate(bundle, n: int, seed: int) -> dict:
    """``n`` samples of the bundle's simulated world (shard layout, :func:`m2vae_fusion.sim.generate.generate_samples`)."""
    world = world_of(bundle)
    rng = np.random.default_rng(seed)
    if world.num_classes == 8:
        from m2vae_fusion.sim.generate import generate_samples

        return generate_samples(n, rng)
    from m2vae_fusion.sim import hard

    return hard.generate_samples(n, rng, views=1)


def attribute_probabilities(bundle, probs: np.ndarray, modality: str) -> np.ndarray:
    """Class probabilities float (C,) summed per value of ``modality``'s attribute → float (values,)."""
    world = world_of(bundle)
    k = {"colour": 0, "shape": 1, "material": 2}[ATTRIBUTE[modality]]
    n = len({"colour": world.colours, "shape": world.shapes, "material": world.materials}[ATTRIBUTE[modality]])
    out = np.zeros(n)
    for c, p in enumerate(probs):
        out[world.attributes_of(c)[k]] += p
    return out


def position_of(data: Mapping, i: int):
    """Target position (x, y, z) m in the base frame of sample ``i`` (hard-world data sets carry it; the bundle's
    target-centred crop needs it, as the node gets it from TargetOfInterest), None when the data set has none."""
    pos = data.get("target_position")
    return None if pos is None else tuple(float(v) for v in pos[i])


def misread_sequence(data: Mapping, modality: str, rng: np.random.Generator) -> tuple:
    """(raw observations, true attribute value per step, index of misread steps, a, b, target position per step)
    of the misread scenario."""
    lab = np.asarray(data[ATTRIBUTE[modality]])
    values = np.unique(lab)
    a, b = rng.choice(values, 2, replace=False)
    ia = rng.permutation(np.flatnonzero(lab == a))
    ib = rng.permutation(np.flatnonzero(lab == b))
    need_a, need_b = GOOD + 10, 1 + BURST + NEW
    if ia.size < need_a or ib.size < need_b:
        raise ValueError(f"{modality}: need {need_a} observations of value {a} and {need_b} of {b}, have "
                         f"{ia.size} and {ib.size}")
    good, bad = list(ia[:need_a]), list(ib[:need_b])
    order = good[:GOOD] + [bad[0]] + good[GOOD:GOOD + 5] + bad[1:1 + BURST] + good[GOOD + 5:GOOD + 10]
    truth = [a] * len(order)
    misread = [GOOD, GOOD + 6, GOOD + 7, GOOD + 8]
    order += bad[1 + BURST:]
    truth += [b] * NEW
    return ([data[modality][i] for i in order], np.array(truth), misread, int(a), int(b),
            [position_of(data, i) for i in order])


def run_misreads(bundle, data: Mapping, modality: str, seed: int = 0, spacing: float | None = None,
                 **config) -> dict:
    """Run the misread scenario for one sensor; ``config``: AgentConfig overrides (e.g. ``forgetting_factor=0``).
    Each observation is another real observation (another view), stamped ``spacing`` s after the previous one
    (None: the agent's ``view_time``, at least 1 s: one view each, not frames of one view).

    Returns:
        ``{"top": int (steps,) attribute value with the highest probability after each observation (−1 before
        any), "p_true": probability of the true value, "truth", "misread": steps, "a", "b", "held_back": outliers
        held back, "novel": observations dropped as novel,
        "switch_after": observations of the new object until its value is on top and stays (None: never)}``.
    """
    from dataclasses import replace

    from m2vae_fusion.core.agent import Agent, AgentConfig, Drop
    from m2vae_fusion.core.fusion import FusionEngine

    raws, truth, misread, a, b, positions = misread_sequence(data, modality, np.random.default_rng(seed))
    cfg = AgentConfig(agent_id="a", modalities=(modality,), max_message_age=0.0, belief_ttl=0.0, **config)
    step = max(float(cfg.view_time), 1.0) if spacing is None else float(spacing)
    agent = Agent(FusionEngine(bundle), cfg, clock=lambda: 0.0)
    agent.on_target(0.0, "object")
    target = agent.target_at(1.0)
    top, p_true = [], []
    last = None
    held = novel = 0
    for i, raw in enumerate(raws):
        try:  # each observation with its own target position (one object seen from another place)
            out = agent.observe(modality, 1.0 + i * step, raw, replace(target, position=positions[i]))
            last = attribute_probabilities(bundle, out.belief.probabilities, modality)
        except Drop as exc:
            held += exc.reason == "outlier"
            novel += exc.reason == "novel"
        top.append(int(np.argmax(last)) if last is not None else -1)
        p_true.append(float(last[truth[i]]) if last is not None else math.nan)
    top = np.array(top)
    new = top[len(top) - NEW:]
    switch = None
    for k in range(NEW):
        if (new[k:] == b).all():
            switch = k + 1
            break
    return {"top": top, "p_true": np.array(p_true), "truth": truth, "misread": misread, "a": a, "b": b,
            "held_back": held, "novel": novel, "switch_after": switch}


def flat_inputs(bundle) -> dict:
    """Out-of-distribution raw inputs per modality: ``{modality: {name: raw}}`` (LiDAR in the bundle's beam layout;
    the 361-beam 180° scans are resampled like the node resamples a LaserScan)."""
    from m2vae_fusion.core.messages import resample_scan

    lc = bundle.input_config("lidar")
    n = int(lc["beams"])
    rmax = float(lc["range_max"])
    lidar = {"constant 1 m": np.full(n, 1.0, np.float32), "constant 0.3 m": np.full(n, 0.3, np.float32),
             "all max range": np.full(n, np.inf, np.float32)}
    ang = np.linspace(-math.pi / 2, math.pi / 2, 361)
    for dist in (0.3, 0.5, 1.0, 2.0, 3.0):
        with np.errstate(divide="ignore"):
            wall = (dist / np.abs(np.cos(ang))).astype(np.float32)
            corridor = (dist / np.abs(np.sin(ang))).astype(np.float32)
        for name, r in ((f"wall {dist} m", wall), (f"corridor {dist} m", corridor)):
            r = r.copy()
            r[~(r <= rmax)] = np.inf
            lidar[name] = resample_scan(r, -math.pi / 2, math.pi / 360, lc)
    camera = {f"flat grey {g}": np.full((64, 64, 3), g, np.uint8) for g in (0, 40, 80, 128, 170, 210, 255)}
    for top_g, bot_g in ((200, 110), (150, 90), (230, 160)):  # an empty room: wall above, floor below
        camera[f"empty floor {top_g}/{bot_g}"] = np.concatenate([np.full((28, 64, 3), top_g, np.uint8),
                                                                 np.full((36, 64, 3), bot_g, np.uint8)])
    rc = bundle.input_config("reflectance")
    k = int(rc["beams"])
    refl = {"nothing in range": np.stack([np.full(k, np.inf), np.zeros(k)], 1).astype(np.float32)}
    for r, i in ((0.1, 0.3), (0.2, 0.5), (0.4, 0.2)):
        refl[f"wall all around {r} m"] = np.stack([np.full(k, r), np.full(k, i)], 1).astype(np.float32)
    return {"camera": camera, "lidar": lidar, "reflectance": refl}


def novelty_scores(bundle, novelty, modality: str, raws, positions=None) -> np.ndarray:
    """Novelty scores float (N,) of raw observations of ``modality`` under a :class:`~m2vae_fusion.core.novelty.Novelty`;
    ``positions``: target position per observation for the target-centred crop (None: the crop's fallback, as for an
    observation whose TargetOfInterest carries no position)."""
    from m2vae_fusion.core.preprocess import preprocess

    cfg = bundle.input_config(modality)
    positions = positions if positions is not None else [None] * len(raws)
    x = np.concatenate([preprocess(modality, r, cfg, target_position=p) for r, p in zip(raws, positions)])
    mu, lv = bundle.encode_feature(modality, x)
    return novelty.score_observation(modality, x, mu, lv, lambda f: bundle.decode_feature(modality, f))


def not_fused(bundle, modality: str, raws, positions=None) -> tuple:
    """Which observations an agent would not fuse, on the node's own path: LiDAR and reflectance scans go through the
    LaserScan conversion and its sanity checks (e.g. ``no_return``), then the agent's preprocessing, β-VAE and novelty
    test (the bundle's calibrated threshold). Each observation is about a new target, so evidence accumulation holds
    nothing back.

    Args:
        raws: raw observations of ``modality`` (camera uint8 (H, W, 3), LiDAR float32 (B,) in the bundle's beam
            layout, reflectance float32 (K, 2)); positions: target position (3,) per observation (base frame, m) or
            None (the crop's fallback, as for a TargetOfInterest without position).

    Returns:
        (not fused bool (N,), drop reasons ``{reason: count}``, novelty scores float64 (N,), NaN where no score was
        computed because a sanity check refused the input first).
    """
    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.core.agent import Agent, AgentConfig, Drop
    from m2vae_fusion.core.fusion import FusionEngine

    ag = Agent(FusionEngine(bundle), AgentConfig(agent_id="a", modalities=(modality,), max_message_age=0.0,
                                                belief_ttl=0.0), clock=lambda: 0.0)
    cfg = bundle.input_config(modality)
    out, scores, reasons = np.zeros(len(raws), bool), np.full(len(raws), np.nan), {}
    for i, raw in enumerate(raws):
        stamp = 1.0 + i
        pos = None if positions is None or positions[i] is None else tuple(float(v) for v in positions[i])
        ag.on_target(stamp, f"t{i}", position=pos)
        if modality == "lidar":
            reader = (lambda msg: lambda: conv.scan_to_ranges(msg, cfg))(conv.ranges_to_scan(raw, cfg))
        elif modality == "reflectance":
            msg = conv.ranges_to_scan(raw[:, 0], {"range_max": cfg["range_max"]}, intensities=raw[:, 1])
            reader = (lambda msg: lambda: conv.reflectance_to_array(msg, int(cfg["beams"])))(msg)
        else:
            reader = raw
        ag.novelty_last.pop(modality, None)
        try:
            ag.observe(modality, stamp, reader, ag.target_at(stamp))
        except Drop as exc:
            out[i] = True
            reasons[exc.reason.value] = reasons.get(exc.reason.value, 0) + 1
        scores[i] = ag.novelty_last.get(modality, np.nan)
    return out, reasons, scores


def empty_scene_novelty(bundle, held: Mapping, n: int = 60, seed: int = 101) -> dict | None:
    """Novelty on the simulated world without objects (issue 14's test inputs): :func:`m2vae_fusion.sim.hard.
    empty_views` of each kind (empty floor, facing a wall, anywhere in an empty room), each with the expected target
    position and without one (the crop's fallback), against the held-out in-distribution observations ``held``; all
    through :func:`not_fused`.

    Returns:
        ``{modality: {"in distribution": {"not_fused", "n", "reasons"}, "<kind>" / "<kind> (no position)":
        {..., "scores"}}}`` (``not_fused``: share not fused; ``scores``: :func:`not_fused`'s novelty scores), or None
        for a bundle of the easy world.
    """
    if world_of(bundle).num_classes == 8:
        return None
    from m2vae_fusion.sim import hard

    rng = np.random.default_rng(seed)
    world = hard.make_world()
    try:
        scenes = {k: hard.empty_views(n, rng, k, world=world) for k in hard.EMPTY_KINDS}
    finally:
        world.close()
    out = {}
    for m in bundle.modalities:
        rows = {}
        flag, reasons, _ = not_fused(bundle, m, held[m], [position_of(held, i) for i in range(len(held[m]))])
        rows["in distribution"] = {"not_fused": float(flag.mean()), "n": int(flag.size), "reasons": reasons}
        for k, sc in scenes.items():
            for label, pos in ((k, list(sc["target_position"])), (f"{k} (no position)", None)):
                flag, reasons, scores = not_fused(bundle, m, list(sc[m]), pos)
                rows[label] = {"not_fused": float(flag.mean()), "n": int(flag.size), "reasons": reasons,
                               "scores": scores}
        out[m] = rows
    return out


def camera_target_visibility(bundle, n: int = 1000, seed: int = 202) -> dict | None:
    """What the camera's in-distribution novelty flags: ``n`` hard-world views drawn as the data set draws them
    (:func:`m2vae_fusion.sim.hard.camera_target_masks`, 4 views per object), split by whether the target is visible
    (pybullet segmentation of the same render) at all and at the crop's centre (the 3x3 pixels around the target's
    projected position, :func:`m2vae_fusion.core.preprocess.project_to_image`), each through :func:`not_fused`.

    Returns:
        ``{"views", "target_absent", "target_not_at_centre", "occluded", "not_fused", "not_fused_target_at_centre",
        "not_fused_target_not_at_centre", "not_fused_share_without_target_at_centre"}`` (shares in [0, 1]; NaN for an
        empty group), or None for a bundle of the easy world or without a camera.
    """
    if world_of(bundle).num_classes == 8 or "camera" not in bundle.modalities:
        return None
    from m2vae_fusion.core import preprocess as pp
    from m2vae_fusion.sim import hard

    d = hard.camera_target_masks(n, np.random.default_rng(seed), views=4)
    mask = d["target_mask"]
    h, w = mask.shape[1:]
    u, v, depth = pp.project_to_image(d["target_position"], bundle.input_config("camera"), w, h)
    centre = np.zeros(n, bool)
    for i in range(n):
        if depth[i] > 0 and 0 <= u[i] < w and 0 <= v[i] < h:  # else: projected outside the image
            r, c = int(math.floor(v[i])), int(math.floor(u[i]))
            centre[i] = mask[i, max(0, r - 1):r + 2, max(0, c - 1):c + 2].any()
    flag, _, _ = not_fused(bundle, "camera", list(d["camera"]), [tuple(p) for p in d["target_position"]])

    def share(x):
        return float(x.mean()) if x.size else float("nan")

    return {"views": n, "target_absent": share(~mask.reshape(n, -1).any(axis=1)),
            "target_not_at_centre": share(~centre), "occluded": share(d["occluded_fraction"] > 0),
            "not_fused": share(flag), "not_fused_target_at_centre": share(flag[centre]),
            "not_fused_target_not_at_centre": share(flag[~centre]),
            "not_fused_share_without_target_at_centre": share(~centre[flag])}


#: lateral / radial errors (m) of the target position for :func:`position_sensitivity`
POSITION_ERRORS = ((0.0, 0.0), (0.003, 0.0), (-0.003, 0.0), (0.01, 0.0), (0.0, 0.01), (0.0, -0.01), (0.02, 0.0))


def position_sensitivity(bundle, data: Mapping, errors=POSITION_ERRORS) -> dict:
    """How the target-centred crop's result depends on the accuracy of the target position: for each modality whose
    preprocessing crops around the target (hard world: camera, LiDAR), the own-attribute accuracy of one observation
    (unimodal class posterior :meth:`~m2vae_fusion.core.fusion.FusionEngine.unimodal_log_posterior`, summed per
    attribute value) when the position handed to the crop is off by ``(lateral, radial)`` metres (across / along
    the line of sight, in the floor plane). A perception pipeline or a TargetOfInterest refreshed every few mm gives
    errors of this size.

    Returns:
        ``{modality: [{"lateral_m", "radial_m", "accuracy", "n"}, ...]}`` (empty without a head or crops).
    """
    from m2vae_fusion.core.fusion import FusionEngine
    from m2vae_fusion.core.preprocess import crop_config, preprocess

    if not bundle.has_head or "target_position" not in data:
        return {}
    eng = FusionEngine(bundle)
    out = {}
    for m in bundle.modalities:
        cfg = bundle.input_config(m)
        if not crop_config(cfg):
            continue
        truth = np.asarray(data[ATTRIBUTE[m]])
        rows = []
        for lat, rad in errors:
            hits = 0
            for i in range(len(data[m])):
                p = np.asarray(data["target_position"][i], np.float64)
                r = max(float(np.hypot(p[0], p[1])), 1e-6)
                ux, uy = p[0] / r, p[1] / r
                q = p + np.array([rad * ux - lat * uy, rad * uy + lat * ux, 0.0])
                f, _ = bundle.encode_feature(m, preprocess(m, data[m][i], cfg, target_position=q))
                ell = eng.unimodal_log_posterior(m, f[0])
                hits += int(np.argmax(attribute_probabilities(bundle, np.exp(ell), m)) == truth[i])
            rows.append({"lateral_m": lat, "radial_m": rad, "accuracy": hits / len(data[m]), "n": len(data[m])})
        out[m] = rows
    return out


def observe_latency(bundle, data: Mapping, rounds: int = 200) -> dict:
    """p50 wall time (ms) of one :meth:`Agent.observe` (preprocess, β-VAE, novelty, fusion) per modality, for an agent
    with accumulation, class evidence and novelty (the defaults) and one without them
    (:data:`~m2vae_fusion.benchmarks.common.PLAIN_PARAMS`, the reference ``bench runtime`` uses too), interleaved so
    both see the same machine load. Returns ``{modality: {"with_ms", "without_ms", "ratio"}}``."""
    import time

    from dataclasses import replace

    from m2vae_fusion.benchmarks.common import PLAIN_PARAMS
    from m2vae_fusion.core.agent import Agent, AgentConfig, Drop
    from m2vae_fusion.core.fusion import FusionEngine

    out = {}
    for m in bundle.modalities:
        agents = {}
        for label, cfg in (("with", {}), ("without", PLAIN_PARAMS)):
            ag = Agent(FusionEngine(bundle), AgentConfig(agent_id="a", modalities=(m,), max_message_age=0.0,
                                                        belief_ttl=0.0, **cfg), clock=lambda: 0.0)
            ag.on_target(0.0, "t")
            agents[label] = ag
        times = {"with": [], "without": []}
        lab = np.asarray(data[ATTRIBUTE[m]])
        same = np.flatnonzero(lab == lab[0])  # one object class: observations are fused, not held back
        for i in range(rounds):
            j = same[i % same.size]
            raw, pos = data[m][j], position_of(data, j)
            for label in (("with", "without") if i % 2 else ("without", "with")):
                ag = agents[label]
                t0 = time.perf_counter()
                try:
                    ag.observe(m, 1.0 + i, raw, replace(ag.target_at(1.0), position=pos))
                except Drop:
                    pass
                times[label].append(time.perf_counter() - t0)
        w, wo = float(np.median(times["with"][10:])) * 1e3, float(np.median(times["without"][10:])) * 1e3
        out[m] = {"with_ms": w, "without_ms": wo, "ratio": w / wo}
    return out


def accumulation_over_views(bundle, n_objects: int = 60, views: int = 10, seed: int = 11,
                            ks=(1, 3, 5, 10)) -> dict | None:
    """How evidence from several views of one object adds up, outside the node (hard world only: its data sets
    observe an object instance ``views`` times, each with another pose, distance and light).

    For each object and k views per sensor: (a) ``feature_poe``: the slot's accumulation without forgetting, the
    product of the k Gaussian β-VAE posteriors per modality (precision-weighted mean, :class:`Accumulation` with
    λ = 1), then the subset encoder of all modalities and the class-belief head (what the engine computes);
    (b) ``posterior_product``: the product over modalities and views of the unimodal class posteriors (the
    bundle's unimodal head of m, else ``head(subset encoder of {m}(feature))``; naive Bayes with a uniform class prior: the views' and sensors'
    evidence multiplied at the class level); (c) ``last_view``: the head on the last view of each sensor only.

    Returns:
        ``{"objects", "views", "k": {k: {"feature_poe", "posterior_product", "last_view"}}}`` (27-class accuracy),
        or None for a bundle of the easy world (its data sets have one view per object).
    """
    world = world_of(bundle)
    if world.num_classes == 8 or not bundle.has_head:
        return None
    from m2vae_fusion.core.preprocess import preprocess
    from m2vae_fusion.sim import hard

    d = hard.generate_samples(n_objects * views, np.random.default_rng(seed), views=views)
    mods = list(bundle.modalities)
    feats, precs, logq = {}, {}, {}
    for m in mods:
        cfg = bundle.input_config(m)
        x = np.concatenate([preprocess(m, d[m][i], cfg, target_position=position_of(d, i))
                            for i in range(len(d[m]))])
        mu, lv = bundle.encode_feature(m, x)
        feats[m], precs[m] = mu.astype(np.float64), np.exp(-lv.astype(np.float64))
        probs = (bundle.classify_unimodal(m, mu) if bundle.has_unimodal_head(m)
                 else bundle.classify(bundle.encode_subset({m: mu})[0]))
        logq[m] = np.log(np.maximum(probs, 1e-6))
    lab, oid = np.asarray(d["label"]), np.asarray(d["object_id"])
    out = {"objects": int(len(np.unique(oid))), "views": int(views), "k": {}}
    for k in ks:
        hits = {"feature_poe": 0, "posterior_product": 0, "last_view": 0}
        objs = np.unique(oid)
        for o in objs:
            idx = np.flatnonzero(oid == o)[:k]
            y = lab[idx[0]]
            hits["posterior_product"] += int(np.argmax(sum(logq[m][idx].sum(0) for m in mods)) == y)
            f = {m: ((precs[m][idx] * feats[m][idx]).sum(0) / precs[m][idx].sum(0))[None].astype(np.float32)
                 for m in mods}
            hits["feature_poe"] += int(np.argmax(bundle.classify(bundle.encode_subset(f)[0])[0]) == y)
            last = {m: feats[m][idx[-1:]].astype(np.float32) for m in mods}
            hits["last_view"] += int(np.argmax(bundle.classify(bundle.encode_subset(last)[0])[0]) == y)
        out["k"][int(k)] = {key: v / len(objs) for key, v in hits.items()}
    return out


def gate_separability(bundle, data: Mapping, pairs: int = 4000, seed: int = 0) -> dict:
    """How well the accumulation's outlier gate can tell an observation of another attribute value from one of the
    same value: random pairs of held-out observations per sensor, area under the ROC curve (scikit-learn) of
    (a) the gate's distance (rms over dimensions of the feature difference in units of the bundle's ``feature_std``,
    :class:`~m2vae_fusion.core.fusion.Accumulation`) and (b) the total-variation distance of the two observations'
    attribute probabilities (class-belief head on the unimodal latent, summed per attribute value); plus the share
    of different-value pairs inside the gate and of same-value pairs outside it (the engine's default gate).

    Returns:
        ``{modality: {"auc_feature_gate", "auc_class_posterior", "different_inside_gate", "same_outside_gate",
        "pairs"}}`` (empty without a class-belief head).
    """
    if not bundle.has_head:
        return {}
    from sklearn.metrics import roc_auc_score

    from m2vae_fusion.core.fusion import Accumulation, FusionEngine
    from m2vae_fusion.core.preprocess import preprocess

    gate = Accumulation().gate
    scale = FusionEngine(bundle).feature_scale
    rng = np.random.default_rng(seed)
    out = {}
    for m in bundle.modalities:
        cfg = bundle.input_config(m)
        n = len(data[m])
        x = np.concatenate([preprocess(m, data[m][i], cfg, target_position=position_of(data, i)) for i in range(n)])
        mu, _ = bundle.encode_feature(m, x)
        probs = bundle.classify(bundle.encode_subset({m: mu})[0])
        ap = np.stack([attribute_probabilities(bundle, p, m) for p in probs])
        lab = np.asarray(data[ATTRIBUTE[m]])
        i1, i2 = rng.integers(0, n, (2, pairs))
        keep = i1 != i2
        i1, i2 = i1[keep], i2[keep]
        different = lab[i1] != lab[i2]
        d_gate = np.sqrt(np.mean(((mu[i1].astype(np.float64) - mu[i2]) / scale[m]) ** 2, axis=1))
        d_post = 0.5 * np.abs(ap[i1] - ap[i2]).sum(axis=1)
        if different.all() or not different.any():
            continue
        out[m] = {"auc_feature_gate": float(roc_auc_score(different, d_gate)),
                  "auc_class_posterior": float(roc_auc_score(different, d_post)),
                  "different_inside_gate": float((d_gate[different] <= gate).mean()),
                  "same_outside_gate": float((d_gate[~different] > gate).mean()), "pairs": int(keep.sum())}
    return out


def configure(parser):
    parser.add_argument("--model-dir", help="bundle directory (default: the shipped models/amiro)")
    parser.add_argument("--samples", type=int, default=600,
                        help="simulated observations: the second half is held out for the misreads and the "
                             "in-distribution novelty figures; the first half calibrates novelty with --recalibrate "
                             "(default 600)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="calibrate novelty on this run's first half instead of using the bundle's own "
                             "calibration (always done for a bundle without one)")
    parser.add_argument("--empty-views", type=int, default=60,
                        help="views of each kind of empty scene (floor, wall, room) for the novelty figures "
                             "(hard world; default 60)")
    parser.add_argument("--visibility-views", type=int, default=1000,
                        help="hard-world camera views whose target visibility (segmentation) splits the camera's "
                             "in-distribution novelty figures (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10, help="misread scenarios per sensor (default 10)")
    parser.add_argument("--latency-rounds", type=int, default=200,
                        help="observations per sensor and agent timed for the latency ratio (default 200)")
    parser.add_argument("--json", metavar="OUT", help="write the numbers here (JSON)")
    parser.add_argument("--plot", metavar="PNG", help="write the plots here")


def run(args) -> int:
    import os

    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.paths import default_bundle_path
    if args.samples < 80 or args.repeats < 1 or args.visibility_views < 1:
        raise UserError("--samples must be ≥ 80, --repeats and --visibility-views ≥ 1")
    import shutil
    import tempfile

    from m2vae_fusion.training.export import add_novelty_calibration

    source = Bundle.load(args.model_dir or default_bundle_path())
    data = generate(source, args.samples, args.seed)
    half = args.samples // 2
    cal = {k: v[:half] for k, v in data.items()}
    held = {k: v[half:] for k, v in data.items()}
    if source.novelty.entries and not args.recalibrate:
        print(f"novelty: the bundle's own calibration ({source.novelty.block.get('data', {}).get('samples')} samples, "
              f"statistics {list(source.novelty.statistics)}); --recalibrate calibrates a copy on this run's data")
        return _run(args, source, source, held)
    tmp = tempfile.mkdtemp(prefix="bench-belief-")
    try:
        # a copy calibrated on the first half: novelty intervals and the feature spreads of the outlier gate
        shutil.copytree(source.path, os.path.join(tmp, "bundle"))
        add_novelty_calibration(os.path.join(tmp, "bundle"), cal)
        print(f"novelty: a copy of the bundle calibrated on this run's first {half} observations")
        bundle = Bundle.load(os.path.join(tmp, "bundle"))
        return _run(args, source, bundle, held)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, source, bundle, held) -> int:
    res = {"model_dir": source.path, "model_id": source.model_id, "samples": args.samples, "seed": args.seed,
           "misreads": {}, "novelty": {}}
    traces = {}
    for m in bundle.modalities:
        rows = {}
        for label, cfg in (("accumulation", {}), ("replace", {"forgetting_factor": 0.0})):
            flips, switches, learnt = 0, [], 0
            for r in range(args.repeats):
                out = run_misreads(bundle, held, m, seed=args.seed + r, **cfg)
                learnt += int(out["top"][GOOD - 1] == out["a"])
                flips += int((out["top"][GOOD:GOOD + 14] != out["a"]).any())
                switches.append(out["switch_after"])
                if r == 0:
                    traces[(m, label)] = out
            ok = [s for s in switches if s is not None]
            rows[label] = {"runs_with_a_flip": flips, "runs": args.repeats, "switch_after": switches,
                           "right_after_20": learnt,
                           "switch_after_max": max(ok) if ok else None, "never_switched": switches.count(None)}
            print(f"{m:12s} {label:13s}: right after 20 observations in {learnt}/{args.repeats} runs; belief "
                  f"flipped by misreads in {flips}/{args.repeats}; new object on "
                  f"top after ≤ {rows[label]['switch_after_max']} observations "
                  f"({switches.count(None)} runs never)")
        res["misreads"][m] = rows
    nov = bundle.novelty
    thr = nov.threshold
    ood = flat_inputs(bundle)
    for m in bundle.modalities:
        s_in = novelty_scores(bundle, nov, m, held[m], [position_of(held, i) for i in range(len(held[m]))])
        s_out = novelty_scores(bundle, nov, m, list(ood[m].values()))
        res["novelty"][m] = {"threshold": thr, "in_flagged": float((s_in > thr).mean()), "in_n": int(s_in.size),
                             "out_flagged": float((s_out > thr).mean()), "out_n": int(s_out.size),
                             "out_scores": {k: float(v) for k, v in zip(ood[m], s_out)},
                             "in_quantiles": [float(q) for q in np.quantile(s_in, [0.5, 0.9, 0.99])]}
        print(f"{m:12s} novelty (threshold {thr:g}): in-distribution flagged {100 * (s_in > thr).mean():.1f} % of "
              f"{s_in.size}; out-of-distribution flagged {100 * (s_out > thr).mean():.0f} % of {s_out.size} "
              f"(missed: {[k for k, v in zip(ood[m], s_out) if not v > thr]})")
        traces[(m, "novelty")] = (s_in, s_out, list(ood[m]))
    res["empty_scenes"] = empty_scene_novelty(bundle, held, n=args.empty_views, seed=args.seed + 101)
    for m, rows in (res["empty_scenes"] or {}).items():
        traces[(m, "empty")] = {label: row.pop("scores") for label, row in rows.items() if "scores" in row}
        print(f"{m:12s} not fused (novel or refused by a sanity check), simulated world without objects, "
              f"{args.empty_views} views each:")
        for label, row in rows.items():
            print(f"    {label:24s} {100 * row['not_fused']:5.1f} % of {row['n']}  {row['reasons']}")
    vis = res["camera_target_visibility"] = camera_target_visibility(bundle, n=args.visibility_views,
                                                                   seed=args.seed + 202)
    if vis is not None:
        print(f"camera       in-distribution views ({vis['views']}, simulated world's segmentation): target absent from "
              f"the image {100 * vis['target_absent']:.1f} %, not under the crop centre "
              f"{100 * vis['target_not_at_centre']:.1f} % (occluder placed: {100 * vis['occluded']:.1f} %); not fused "
              f"{100 * vis['not_fused']:.2f} % = {100 * vis['not_fused_target_at_centre']:.2f} % of views with the "
              f"target under the crop centre, {100 * vis['not_fused_target_not_at_centre']:.1f} % of those without; "
              f"{100 * vis['not_fused_share_without_target_at_centre']:.0f} % of the views not fused show no target "
              "under the crop centre")
    res["position_sensitivity"] = position_sensitivity(bundle, held)
    for m, rows in res["position_sensitivity"].items():
        print(f"{m:12s} own {ATTRIBUTE[m]} from one observation, target position off by (lateral, radial) mm: " +
              ", ".join(f"({1e3 * r['lateral_m']:+.0f}, {1e3 * r['radial_m']:+.0f}) {r['accuracy']:.3f}"
                        for r in rows))
    res["gate"] = gate_separability(bundle, held, seed=args.seed)
    for m, row in res["gate"].items():
        print(f"{m:12s} outlier gate vs another attribute value ({row['pairs']} pairs): ROC AUC of the feature-space "
              f"gate distance {row['auc_feature_gate']:.3f}, of the class posteriors' distance "
              f"{row['auc_class_posterior']:.3f}; different-value pairs inside the gate "
              f"{100 * row['different_inside_gate']:.0f} %, same-value pairs outside {100 * row['same_outside_gate']:.0f} %")
    views = accumulation_over_views(bundle, seed=args.seed + 11)
    res["accumulation_over_views"] = views
    if views is not None:
        print(f"views of one object ({views['objects']} objects, all sensors, 27 classes): accuracy with k views per "
              "sensor")
        for k, row in views["k"].items():
            print(f"  k={k:2d}: slot accumulation (product of feature posteriors) -> joint head "
                  f"{row['feature_poe']:.3f}; product of unimodal class posteriors {row['posterior_product']:.3f}; "
                  f"last view only {row['last_view']:.3f}")
    res["latency"] = observe_latency(bundle, held, rounds=args.latency_rounds)
    for m, row in res["latency"].items():
        print(f"{m:12s} Agent.observe p50 {row['with_ms']:.2f} ms with accumulation, class evidence and novelty, "
              f"{row['without_ms']:.2f} ms without (forgetting 0, novelty off, class belief from the latent): ratio "
              f"{row['ratio']:.2f} (same run, interleaved; shared CPU)")
    from m2vae_fusion.files import write_result

    write_result(args.json, res)
    if args.plot:
        _plot(bundle, traces, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _plot(bundle, traces, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from m2vae_fusion.core.fusion import Accumulation

    mods = list(bundle.modalities)
    fig, axes = plt.subplots(2, len(mods), figsize=(5 * len(mods), 7))
    for j, m in enumerate(mods):
        ax = axes[0, j]
        for label, style in (("replace", "r--"), ("accumulation", "b-")):
            out = traces[(m, label)]
            ax.plot(np.arange(1, len(out["p_true"]) + 1), out["p_true"], style,
                    label=f"{label} (forgetting {0 if label == 'replace' else Accumulation().forgetting:g})")
        out = traces[(m, "accumulation")]
        for k in out["misread"]:
            ax.axvline(k + 1, color="grey", alpha=0.4)
        ax.axvline(len(out["p_true"]) - NEW + 0.5, color="k", ls=":")
        ax.set_title(f"{m}: P(true {ATTRIBUTE[m]}), grey = misread, dotted = object swapped", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("observation")
        ax.legend(fontsize=8)
        s_in, s_out, names = traces[(m, "novelty")]
        ax = axes[1, j]
        ax.hist(np.log10(np.maximum(s_in, 1e-3)), bins=30, color="b", alpha=0.6, label="in distribution (held out)")
        ax.plot(np.log10(np.maximum(s_out, 1e-3)), np.zeros_like(s_out), "kx", ms=9, label="hand-made flat inputs")
        empty = traces.get((m, "empty"), {})
        for (label, sc), colour in zip(((k, v) for k, v in empty.items() if "no position" not in k),
                                       ("tab:red", "tab:orange", "tab:purple")):
            scored = sc[np.isfinite(sc)]
            ax.hist(np.log10(np.maximum(scored, 1e-3)), bins=30, color=colour, alpha=0.5,
                    label=f"{label}, no objects ({sc.size - scored.size} of {sc.size} refused before scoring)")
        ax.axvline(0.0, color="k", ls=":", label="threshold 1")
        ax.set_yscale("log")
        ax.set_title(f"{m}: novelty score (log10; counts, log scale)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
