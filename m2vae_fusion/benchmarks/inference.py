"""The networks one observation runs through in the fusion node, timed bare in onnxruntime and in torch eager mode.

Per input kind the node's steady state (a belief that already holds every modality, FUSION 2019 Eq. 18) runs:

- a sensor observation of modality m: β-VAE encoder of m → M2VAE decoders of the other held slots → subset encoder
  of all modalities → class-belief head;
- a peer latent adding newer evidence for one slot: M2VAE decoders of every slot → subset encoder of all modalities
  → class-belief head (:meth:`m2vae_fusion.core.fusion.FusionEngine.merge`).

:func:`time_paths` times these chains on the same observations the node gets: onnxruntime sessions with the node's
options (1 intra-op thread, 1 inter-op thread, ``CPUExecutionProvider``) and the same networks built in torch
(:mod:`m2vae_fusion.training.networks`, architecture from the manifest's training config) with ``torch.set_num_threads
(1)``, weights copied from the ONNX files' initializers and checked against the bundle's probes. It also times the
node's message conversion + preprocessing of the same messages. torch is imported here only (never in the nodes).
"""
from __future__ import annotations

import os
import time
from typing import Mapping

import numpy as np

from m2vae_fusion.benchmarks.common import stats_ms

#: Input kinds of the runtime benchmark: name → (modality or "peer", camera size or None).
KINDS = {"camera_320x240": ("camera", (320, 240)), "camera_640x480": ("camera", (640, 480)),
         "lidar": ("lidar", None), "reflectance": ("reflectance", None), "peer": ("peer", None)}


# -- observations -----------------------------------------------------------------------------------------------
def make_observations(manifest: Mapping, n: int, seed: int = 0) -> dict:
    """``n`` seeded raw observations per kind (what the sensors / peers send; the benchmark's only input data).

    A bundle trained on the hard world (its camera preprocessing crops around the target) gets in-distribution
    observations: one object of the simulated hard world seen from one robot pose, each observation a new sensor
    reading (:func:`m2vae_fusion.sim.hard.static_views`), with ``target_position`` float32 (3,) (base frame, m) for
    the TargetOfInterest; without pybullet, or for other bundles, synthetic ones: camera smooth colour blobs plus
    noise, lidar uniform ranges with some beams out of range (+inf, REP 117), reflectance uniform (synthetic inputs
    are novel to a hard-world bundle: the node would refuse them before fusing). ``source`` (0-d str) says which.

    Returns:
        camera ``camera_320x240`` / ``camera_640x480`` uint8 RGB (n, H, W, 3); ``lidar`` ranges float32 (n, B) m;
        ``reflectance`` float32 (n, K, 2) range, intensity; ``peer_mean`` / ``peer_log_variance`` float32 (n, Dz)
        (within the bundle's latent bounds); optionally ``target_position``.
    """
    rng = np.random.default_rng(seed)
    if manifest["inputs"]["camera"]["preprocessing"].get("crop", {}).get("enabled"):
        try:
            from m2vae_fusion.sim.hard import static_views
        except ImportError:  # a robot install without the simulator
            pass
        else:
            out = static_views(n, rng, sizes=[KINDS[k][1] for k in KINDS if KINDS[k][0] == "camera"])
            out.pop("label")
            out["source"] = np.asarray("simulated hard world: one object, one robot pose, new sensor noise per "
                                       "observation")
            _peer_latents(out, manifest, n, rng)
            return out
    out = {"source": np.asarray("synthetic: colour blobs, uniform ranges")}
    for kind, (mod, size) in KINDS.items():
        if mod != "camera":
            continue
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        imgs = np.empty((n, h, w, 3), np.uint8)
        for i in range(n):
            cx, cy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.1, 0.3) * h
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            colour, bg = rng.uniform(0, 255, 3), rng.uniform(60, 200, 3)
            img = bg * (1 - blob) + colour * blob + rng.normal(0, 8, (h, w, 3))
            imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
        out[kind] = imgs
    lid = manifest["inputs"]["lidar"]["preprocessing"]
    b = int(lid["beams"])
    ranges = rng.uniform(0.3, 0.9 * float(lid["range_max"]), (n, b)).astype(np.float32)
    ranges[rng.random((n, b)) < 0.1] = np.inf
    out["lidar"] = ranges
    k = int(manifest["inputs"]["reflectance"]["preprocessing"]["beams"])
    refl_max = float(manifest["inputs"]["reflectance"]["preprocessing"]["range_max"])
    refl = np.stack([rng.uniform(0.05, 0.9 * refl_max, (n, k)), rng.uniform(0.0, 1.0, (n, k))], axis=2)
    out["reflectance"] = refl.astype(np.float32)
    _peer_latents(out, manifest, n, rng)
    return out


def _peer_latents(out: dict, manifest: Mapping, n: int, rng: np.random.Generator) -> None:
    """Adds ``peer_mean`` (within the bundle's latent bounds, which the engine enforces) and ``peer_log_variance``."""
    dz = int(manifest["latent_dim"])
    lb = manifest.get("latent_bounds") if manifest.get("format_version") == 3 else None
    out["peer_mean"] = (rng.uniform(lb["mean_min"], lb["mean_max"], (n, dz)) if lb  # the engine refuses others
                        else rng.normal(0, 1, (n, dz))).astype(np.float32)
    out["peer_log_variance"] = np.full((n, dz), -1.0, np.float32)


def chain(manifest: Mapping, kind: str) -> list:
    """Network keys ``(family, name)`` the node runs for one input of ``kind`` in steady state (see module doc)."""
    mods = list(manifest["modalities"])
    mod = KINDS[kind][0]
    full = "+".join(mods)
    steps = [] if mod == "peer" else [("betavae_encoder", mod)]
    steps += [("decoder", m) for m in mods if m != mod]
    steps.append(("subset_encoder", full))
    if manifest["networks"].get("head") and manifest.get("class_names"):
        steps.append(("head", ""))
    return steps


def network_file(manifest: Mapping, key) -> str:
    family, name = key
    nets = manifest["networks"]
    return nets["head"] if family == "head" else nets[family][name]


# -- onnxruntime ------------------------------------------------------------------------------------------------
class OrtChains:
    """onnxruntime sessions of a bundle with the fusion node's options (1 thread)."""

    def __init__(self, bundle_dir: str, manifest: Mapping, threads: int = 1):
        import onnxruntime as ort

        self.manifest = manifest
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.sessions = {}
        for kind in KINDS:
            for key in chain(manifest, kind):
                if key not in self.sessions:
                    self.sessions[key] = ort.InferenceSession(os.path.join(bundle_dir, network_file(manifest, key)),
                                                              sess_options=so, providers=["CPUExecutionProvider"])
        self.mods = list(manifest["modalities"])

    def run(self, kind: str, x: np.ndarray | None, z: np.ndarray, peer_z: np.ndarray | None = None) -> np.ndarray:
        """One observation: ``x`` the preprocessed input (1, …) (None for a peer), ``z`` the held belief (1, Dz),
        ``peer_z`` the peer's latent. Returns the head's probabilities (or the latent mean without a head)."""
        s = self.sessions
        mod = KINDS[kind][0]
        feats = {}
        if mod != "peer":
            feats[mod] = s[("betavae_encoder", mod)].run(None, {"x": x})[0]
        for m in self.mods:
            if m != mod:
                src = peer_z if (mod == "peer" and m == self.mods[0] and peer_z is not None) else z
                feats[m] = s[("decoder", m)].run(None, {"z": src})[0]
        mean = s[("subset_encoder", "+".join(self.mods))].run(None, feats)[0]
        head = s.get(("head", ""))
        return head.run(None, {"z": mean})[0] if head is not None else mean


# -- torch ------------------------------------------------------------------------------------------------------
def _initializers(path: str, prefix_strip: int = 1) -> dict:
    """``{state-dict key: array}`` from an ONNX file's initializers (the exporter keeps the torch parameter names
    under the wrapper's attribute, e.g. ``v.trunk.conv.0.weight`` → ``trunk.conv.0.weight``)."""
    import onnx
    from onnx import numpy_helper

    out = {}
    for init in onnx.load(path).graph.initializer:
        parts = init.name.split(".")
        if len(parts) > prefix_strip:
            out[".".join(parts[prefix_strip:])] = numpy_helper.to_array(init)
    return out


class TorchChains:
    """The same networks in torch eager mode (``torch.set_num_threads(threads)``, inference mode).

    Attributes:
        weights: ``"bundle"`` (copied from the ONNX initializers, outputs match the bundle's probes), ``"partial"``
            (same architecture, not every tensor found or probes differ: timing comparable, outputs not),
            ``"architecture_mismatch"`` (the torch networks of this checkout differ from the bundle's: timing not
            comparable) or ``"random"`` (weights unreadable).
        note: one sentence explaining ``weights``.
        parity: max abs difference to the stored probe outputs per network file (when checked).
    """

    def __init__(self, bundle_dir: str, manifest: Mapping, threads: int = 1):
        import torch

        from m2vae_fusion.training.networks import M2VAE, BetaVAE, ClassHead

        torch.set_num_threads(max(1, int(threads)))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set / parallel work started
            pass
        self.torch = torch
        self.manifest = manifest
        self.mods = list(manifest["modalities"])
        cfg = ((manifest.get("training") or {}).get("config") or {})
        bc, mc, hc = cfg.get("betavae") or {}, cfg.get("m2vae") or {}, cfg.get("head") or {}
        arch = {k: bc[k] for k in ("camera_channels", "lidar_channels", "trunk_hidden", "reflectance_hidden")
                if k in bc}
        fdim, zdim = int(manifest["feature_dim"]), int(manifest["latent_dim"])
        self.config_source = "manifest training config" if bc or mc else "defaults (manifest has no architecture)"
        self.vaes = {m: BetaVAE(m, manifest["inputs"][m]["preprocessing"], fdim, arch).eval() for m in self.mods}
        m2_kw = {}
        if "hidden" in mc:
            m2_kw["hidden"] = mc["hidden"]
        if "fusion_hidden" in mc:
            m2_kw["fusion_hidden"] = mc["fusion_hidden"]
        self.m2vae = M2VAE(self.mods, {m: fdim for m in self.mods}, zdim, **m2_kw).eval()
        names = manifest.get("class_names")
        self.head = (ClassHead(zdim, len(names), int(hc.get("hidden", 64))).eval()
                     if names and manifest["networks"].get("head") else None)
        self.weights, self.note, self.parity = self._load_weights(bundle_dir)

    def _load_weights(self, bundle_dir: str):
        """Copy the bundle's weights into the torch modules and check them on the probes."""
        torch = self.torch
        nets = self.manifest["networks"]
        problems, mismatch = [], []
        try:
            import onnx  # noqa: F401
        except ImportError:
            return "random", "the onnx package is missing, so the bundle's weights cannot be read", {}
        groups = [(self.vaes[m], [nets["betavae_encoder"][m]], ("trunk.", "heads.")) for m in self.mods]
        groups.append((self.m2vae, [*nets["subset_encoder"].values(), *nets["decoder"].values()], ("",)))
        if self.head is not None:
            groups.append((self.head, [nets["head"]], ("",)))
        for module, files, needed in groups:
            found = {}
            for f in files:
                found.update(_initializers(os.path.join(bundle_dir, f)))
            state = module.state_dict()
            missing = [k for k in state if k.startswith(needed) and k not in found]
            bad = [k for k in state if k in found and tuple(found[k].shape) != tuple(state[k].shape)]
            if bad:
                name = getattr(module, "modality", type(module).__name__)
                mismatch.append(f"{name}: {', '.join(bad[:3])}")
                continue
            if missing:
                problems.append(f"{type(module).__name__}: {len(missing)} tensors not found in the ONNX files")
            with torch.no_grad():
                for k, v in found.items():
                    if k in state:
                        state[k].copy_(torch.from_numpy(np.array(v)))
        parity = self._check_probes(bundle_dir)
        worst = max(parity.values()) if parity else float("nan")
        if mismatch:
            return ("architecture_mismatch", "the torch networks of this checkout differ from the bundle's (tensor "
                    f"shapes differ: {'; '.join(mismatch)}): torch timing is NOT of the same networks", parity)
        if problems or not parity or not worst <= 1e-4:
            why = "; ".join(problems) or f"probe parity {worst:.3g}"
            return ("partial", f"same architecture, weights only partly the bundle's ({why}): timing comparable, "
                    "outputs differ", parity)
        return "bundle", (f"torch networks built from the manifest's config with the bundle's weights (from the ONNX "
                          f"initializers; probe outputs: max abs diff {worst:.1g})"), parity

    def _check_probes(self, bundle_dir: str) -> dict:
        torch = self.torch
        path = os.path.join(bundle_dir, self.manifest.get("probes", "probes.npz"))
        if not os.path.isfile(path):
            return {}
        probes = np.load(path)
        out = {}
        with torch.inference_mode():
            t = lambda key: torch.from_numpy(probes[key])
            for m in self.mods:
                f = self.manifest["networks"]["betavae_encoder"][m]
                if f"{f}:x" in probes:
                    mean, logvar = self.vaes[m].encode(t(f"{f}:x"))
                    out[f] = max(float(np.abs(mean.numpy() - probes[f"{f}:mean"]).max()),
                                 float(np.abs(logvar.numpy() - probes[f"{f}:log_variance"]).max()))
                f = self.manifest["networks"]["decoder"][m]
                if f"{f}:z" in probes:
                    out[f] = float(np.abs(self.m2vae.decode(m, t(f"{f}:z")).numpy() - probes[f"{f}:mean"]).max())
            full = "+".join(self.mods)
            f = self.manifest["networks"]["subset_encoder"][full]
            if all(f"{f}:{m}" in probes for m in self.mods):
                mean, _ = self.m2vae.encode(tuple(self.mods), {m: t(f"{f}:{m}") for m in self.mods})
                out[f] = float(np.abs(mean.numpy() - probes[f"{f}:mean"]).max())
            if self.head is not None:
                f = self.manifest["networks"]["head"]
                if f"{f}:z" in probes:
                    out[f] = float(np.abs(self.head.probabilities(t(f"{f}:z")).numpy()
                                          - probes[f"{f}:probabilities"]).max())
        return out

    def run(self, kind: str, x, z, peer_z=None):
        """Same contract as :meth:`OrtChains.run`, on torch tensors."""
        torch = self.torch
        mod = KINDS[kind][0]
        with torch.inference_mode():
            feats = {}
            if mod != "peer":
                feats[mod] = self.vaes[mod].encode(x)[0]
            for m in self.mods:
                if m != mod:
                    src = peer_z if (mod == "peer" and m == self.mods[0] and peer_z is not None) else z
                    feats[m] = self.m2vae.decode(m, src)
            mean = self.m2vae.encode(tuple(self.mods), feats)[0]
            return self.head.probabilities(mean) if self.head is not None else mean


# -- node-side conversion ---------------------------------------------------------------------------------------
def messages(obs: Mapping, kind: str, manifest: Mapping, stamp_ns: int = 0) -> list:
    """ROS messages of every observation of ``kind`` (needs rclpy message types)."""
    from m2vae_fusion.core import messages as conv

    mod = KINDS[kind][0]
    if mod == "camera":
        return [conv.rgb_to_image(img, "rgb8", stamp_ns, "camera") for img in obs[kind]]
    if mod == "lidar":
        cfg = manifest["inputs"]["lidar"]["preprocessing"]
        return [conv.ranges_to_scan(r, cfg, stamp_ns, "laser") for r in obs["lidar"]]
    if mod == "reflectance":
        cfg = manifest["inputs"]["reflectance"]["preprocessing"]
        return [conv.ranges_to_scan(r[:, 0], {"range_max": cfg["range_max"]}, stamp_ns, "ir", intensities=r[:, 1])
                for r in obs["reflectance"]]
    return [peer_message(manifest, obs["peer_mean"][i], obs["peer_log_variance"][i], stamp_ns)
            for i in range(len(obs["peer_mean"]))]


def peer_message(manifest: Mapping, mean, log_variance, stamp_ns: int, target_id: str = "bench_target",
                 agent_id: str = "bench_peer", slot: str | None = None):
    """A peer's LatentEmbedding carrying evidence for one slot (default the first modality) stamped ``stamp_ns``."""
    from m2vae_fusion.core import messages as conv

    slot = slot or manifest["modalities"][0]
    data = conv.LatentData(agent_id=agent_id, target_id=target_id, model_id=manifest["model_id"], stamp_ns=stamp_ns,
                           modalities=(slot,), modality_stamps_ns=(stamp_ns,), modality_sources=(agent_id,),
                           contributors=(agent_id,), mean=np.asarray(mean, np.float32),
                           log_variance=np.asarray(log_variance, np.float32), frame_id="map")
    return conv.latent_to_msg(data)


def convert_preprocess(kind: str, msg, manifest: Mapping, target_position=None):
    """What the node does to a message before the networks: conversion + preprocessing (camera, lidar,
    reflectance; cropped around ``target_position``, base frame m, where the bundle crops) or conversion +
    validation (peer latent). Returns the network input (None for a peer)."""
    from m2vae_fusion.core.preprocess import preprocess
    from m2vae_fusion.core import messages as conv

    mod = KINDS[kind][0]
    cfg = manifest["inputs"][mod]["preprocessing"] if mod != "peer" else None
    if mod == "camera":
        return preprocess("camera", conv.image_to_rgb(msg), cfg, target_position=target_position)
    if mod == "lidar":
        return preprocess("lidar", conv.scan_to_ranges(msg, cfg), cfg, target_position=target_position)
    if mod == "reflectance":
        return preprocess("reflectance", conv.reflectance_to_array(msg, int(cfg["beams"])), cfg)
    conv.latent_from_msg(msg, manifest["modalities"], int(manifest["latent_dim"]))
    return None


# -- the node's work without ROS ----------------------------------------------------------------------------------
class CorePath:
    """What the fusion node does for one input, in process and without DDS, with the node's own code: the
    :class:`m2vae_fusion.core.agent.Agent` (stamp check, target, conversion + preprocessing, encoder, in-place fusion
    or peer merge, class belief) and building the LatentEmbedding and ClassBelief messages (not publishing them).
    The difference to the node's latency is the ROS side: executor, take/deserialize, publishes."""

    def __init__(self, bundle_dir: str, manifest: Mapping, threads: int = 1, obs: Mapping | None = None):
        from m2vae_fusion.core.agent import Agent, AgentConfig
        from m2vae_fusion.core.bundle import Bundle
        from m2vae_fusion.core.fusion import FusionEngine
        from m2vae_fusion.core.preprocess import preprocess

        self.manifest = manifest
        self.bundle = Bundle.load(bundle_dir, threads=threads)
        self.mods = list(self.bundle.modalities)
        self.agent = Agent(FusionEngine(self.bundle), AgentConfig(
            agent_id="bench", modalities=tuple(self.mods), max_message_age=0.0, max_latent_age=-1.0,
            shared_latent_rate=0.0))
        pos = None if obs is None or "target_position" not in obs else [float(v) for v in obs["target_position"]]
        self.agent.on_target(0.0, "bench_target", "base_link" if pos else "map", position=pos)
        self.target = self.agent.target_at(1.0)
        self.stamp = 1_000.0
        rng = np.random.default_rng(2)
        engine = self.agent.engine
        sim = obs is not None and "target_position" in obs
        for m in self.mods:  # every slot held: the steady state
            if sim:  # the slots hold the same object's evidence (else accumulation holds the observations back)
                raw = obs["camera_320x240"][0] if m == "camera" else obs[m][0]
                x = preprocess(m, raw, self.agent.cfg[m],
                               target_position=pos)
                f = self.bundle.encode_feature(m, x)[0][0]
            else:
                f = self.bundle.sample_features(m, rng)[0]  # a feature whose encoding lies within the latent bounds
            self.agent.store.put(engine.observe(self.agent.store.get("bench_target"), "bench_target", m, f,
                                                self._next(), "bench"))

    def _next(self) -> float:
        self.stamp += 0.001
        return self.stamp

    def run(self, kind: str, msg) -> None:
        from m2vae_fusion.core.agent import PeerLatent, s_to_ns
        from m2vae_fusion.core import messages as conv
        from m2vae_fusion.ros.fusion_node import belief_msg, latent_msg

        mod = KINDS[kind][0]
        stamp = self._next()
        if mod == "peer":
            self.agent.screen_peer(msg.agent_id, msg.model_id, msg.format_version)
            d = conv.latent_from_msg(msg, self.mods, self.bundle.latent_dim)
            peer = PeerLatent(d.agent_id, "bench_target", d.model_id, s_to_ns(stamp), d.modalities,
                              tuple(s_to_ns(stamp) for _ in d.modalities), d.modality_sources, d.contributors,
                              d.mean, d.log_variance, d.frame_id)
            out = self.agent.merge(peer, stamp)
        else:
            target = self.agent.admit(mod, stamp, stamp)
            if mod == "camera":
                raw = lambda: conv.image_to_rgb(msg)  # noqa: E731
            elif mod == "lidar":
                raw = lambda: conv.scan_to_ranges(msg, self.agent.cfg["lidar"])  # noqa: E731
            else:
                raw = lambda: conv.reflectance_to_array(msg, int(self.agent.cfg["reflectance"]["beams"]))  # noqa
            out = self.agent.observe(mod, stamp, raw, target)
        if out is not None:
            lat = latent_msg(out.latent)
            if out.belief is not None:
                belief_msg(out.belief, lat)


# -- timing -----------------------------------------------------------------------------------------------------
def time_paths(bundle_dir: str, manifest: Mapping, obs: Mapping, repeats: int, threads: int = 1,
               warmup: int = 10, kinds=None) -> dict:
    """Time every kind's network chain in onnxruntime and torch (interleaved, ``repeats`` runs cycling through the
    observations), the node's conversion + preprocessing of the same messages, and the node's whole worker path
    without DDS (:class:`CorePath`).

    Returns:
        ``{"torch_weights": str, "torch_note": str, "torch_config": str, "probe_parity": {file: diff}, "threads": n,
        "paths": {kind: {"networks": [files], "onnxruntime_ms": stats, "torch_ms": stats,
        "convert_preprocess_ms": stats, "core_path_ms": stats, "onnxruntime_to_torch": ratio of medians}}}``.
    """
    import torch

    ort_chains = OrtChains(bundle_dir, manifest, threads)
    torch_chains = TorchChains(bundle_dir, manifest, threads)
    core = CorePath(bundle_dir, manifest, threads, obs)
    pos = obs.get("target_position")
    dz = int(manifest["latent_dim"])
    belief = np.random.default_rng(1).normal(size=(1, dz)).astype(np.float32)
    out = {"torch_weights": torch_chains.weights, "torch_note": torch_chains.note,
           "torch_config": torch_chains.config_source,
           "probe_parity": torch_chains.parity, "threads": threads, "torch_version": torch.__version__,
           "paths": {}}
    try:
        import onnxruntime as ort

        out["onnxruntime_version"] = ort.__version__
    except ImportError:  # pragma: no cover
        pass
    for kind in kinds or KINDS:
        msgs = messages(obs, kind, manifest)
        xs = [convert_preprocess(kind, m, manifest, pos) for m in msgs]
        peers = [obs["peer_mean"][i][None] for i in range(len(obs["peer_mean"]))]
        t_ort, t_torch, t_pre, t_core = [], [], [], []
        zt = torch.from_numpy(belief)
        xts = [torch.from_numpy(x) if x is not None else None for x in xs]
        pts = [torch.from_numpy(p) for p in peers]
        for i in range(warmup + repeats):
            j = i % len(msgs)
            a = time.perf_counter()
            convert_preprocess(kind, msgs[j], manifest, pos)
            b = time.perf_counter()
            ort_chains.run(kind, xs[j], belief, peers[j % len(peers)])
            c = time.perf_counter()
            torch_chains.run(kind, xts[j], zt, pts[j % len(pts)])
            d = time.perf_counter()
            core.run(kind, msgs[j])
            e = time.perf_counter()
            if i >= warmup:
                t_pre.append(b - a)
                t_ort.append(c - b)
                t_torch.append(d - c)
                t_core.append(e - d)
        o, t = stats_ms(t_ort), stats_ms(t_torch)
        out["paths"][kind] = {
            "networks": [network_file(manifest, k) for k in chain(manifest, kind)],
            "onnxruntime_ms": o, "torch_ms": t, "convert_preprocess_ms": stats_ms(t_pre),
            "core_path_ms": stats_ms(t_core),
            "onnxruntime_to_torch": o["p50"] / t["p50"] if t["p50"] > 0 else None,
        }
    return out
