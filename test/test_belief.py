"""Evidence accumulation and novelty (issue 14) on the shipped bundle with a small data set simulated in its own
world: misreads do not flip a belief, a swapped object wins within 5 observations (camera, LiDAR, reflectance);
flat walls / empty scans / flat images are flagged as novel and not fused; format-3 provenance keeps relayed evidence
from counting twice."""
import json
import math
import os
import shutil

import numpy as np
import pytest

from m2vae_fusion.benchmarks import belief as bb
from m2vae_fusion.core.agent import Agent, AgentConfig, Drop, peer_from_latent
from m2vae_fusion.core.bundle import Bundle
from m2vae_fusion.core.fusion import EVIDENCE_CONTAMINATION, FusionEngine
from m2vae_fusion.core.reasons import DropReason
from m2vae_fusion.training.export import add_novelty_calibration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIBRATION, SCENARIO = 160, 90


@pytest.fixture(scope="module")
def data():
    """Observations of the shipped bundle's world: the first CALIBRATION calibrate, the rest are the test set."""
    shipped = Bundle.load(os.path.join(ROOT, "models", "amiro_easy"))
    d = bb.generate(shipped, CALIBRATION + SCENARIO, seed=11)
    return {k: v[:CALIBRATION] for k, v in d.items()}, {k: v[CALIBRATION:] for k, v in d.items()}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, data):
    """The shipped bundle with a novelty block (feature spreads for the accumulation's gate, novelty intervals)."""
    out = str(tmp_path_factory.mktemp("cal") / "amiro")
    shutil.copytree(os.path.join(ROOT, "models", "amiro_easy"), out)
    man = add_novelty_calibration(out, data[0])
    assert man["novelty"]["modalities"]["lidar"]["samples"] == CALIBRATION
    return Bundle.load(out)


@pytest.mark.parametrize("modality", ["camera", "lidar", "reflectance"])
def test_misreads_do_not_flip_and_a_swapped_object_wins_within_5(calibrated, data, modality):
    """The default class belief (class evidence, one view per observation): misreads add their evidence but never
    flip the belief, and a swapped object wins within 5 observations (class-level change rule)."""
    test = data[1]
    acc = bb.run_misreads(calibrated, test, modality, seed=0, novelty_threshold=-1.0)
    top, a, b = acc["top"], acc["a"], acc["b"]
    assert top[bb.GOOD - 1] == a, f"20 good observations did not give {ATTR(modality)} {a}: {top}"
    assert (top[bb.GOOD:bb.GOOD + 14] == a).all(), top
    assert acc["held_back"] == 0  # nothing is held back: the evidence adds up
    assert acc["switch_after"] is not None and acc["switch_after"] <= 5, top
    # frames of one view (a tenth of view_time apart) weigh a tenth each: 5 of them cannot swap the belief
    frames = bb.run_misreads(calibrated, test, modality, seed=0, spacing=AgentConfig("a").view_time / 10,
                             novelty_threshold=-1.0)
    assert frames["top"][bb.GOOD + 14 + 4] == a, frames["top"]


@pytest.mark.parametrize("modality", ["camera", "lidar", "reflectance"])
def test_misreads_held_back_by_the_feature_gate_with_the_latent_class_belief(calibrated, data, modality):
    """``class_belief: latent`` (the head on the fused latent): the feature-level outlier gate holds misreads back."""
    test = data[1]
    acc = bb.run_misreads(calibrated, test, modality, seed=0, spacing=1.0, novelty_threshold=-1.0,
                          class_belief="latent")
    top, a, b = acc["top"], acc["a"], acc["b"]
    assert top[bb.GOOD - 1] == a, f"20 good observations did not give {ATTR(modality)} {a}: {top}"
    # a misread, 5 good, a burst of 3 misreads, 5 good: the belief's attribute never changes
    assert (top[bb.GOOD:bb.GOOD + 14] == a).all(), top
    assert acc["held_back"] >= 4  # the misreads were held back
    assert acc["switch_after"] is not None and acc["switch_after"] <= 5, top
    # the same sequence without accumulation (the paper's replace-the-slot fusion): the first misread flips it
    plain = bb.run_misreads(calibrated, test, modality, seed=0, spacing=1.0, forgetting_factor=0.0,
                            novelty_threshold=-1.0, class_belief="latent")
    assert plain["top"][bb.GOOD] == b and plain["held_back"] == 0


def ATTR(modality):
    return bb.ATTRIBUTE[modality]


def test_novelty_flags_flat_and_empty_inputs_and_few_in_distribution(calibrated, data):
    nov = calibrated.novelty
    assert nov.threshold == 1.0 and all(nov.has(m) for m in calibrated.modalities)
    assert nov.statistics == ("kl", "feature_mixture") and not nov.needs_reconstruction
    ood = bb.flat_inputs(calibrated)
    flagged = {m: bb.novelty_scores(calibrated, nov, m, list(ood[m].values())) > nov.threshold for m in ood}
    names = {m: dict(zip(ood[m], flagged[m])) for m in ood}
    # too unlikely and too likely are both caught (two-sided): an empty scan and flat black / white images
    assert names["lidar"]["all max range"] and names["reflectance"]["wall all around 0.2 m"]
    assert names["camera"]["flat grey 0"] and names["camera"]["flat grey 255"]
    assert sum(flagged["lidar"]) >= len(flagged["lidar"]) // 2, names["lidar"]
    s_in = np.concatenate([bb.novelty_scores(calibrated, nov, m, data[1][m]) for m in calibrated.modalities])
    # 160 calibration observations put the interval near their extremes: few held-out ones lie beyond it
    assert (s_in > nov.threshold).mean() <= 0.10 and np.isfinite(s_in).all()


def test_a_target_seen_only_through_novel_observations_stays_at_the_prior(calibrated):
    agent = Agent(FusionEngine(calibrated), AgentConfig(agent_id="a", modalities=("lidar",), max_message_age=0.0),
                  clock=lambda: 0.0)
    agent.on_target(0.0, "corridor")
    target = agent.target_at(1.0)
    empty = np.full(int(calibrated.input_config("lidar")["beams"]), np.inf, np.float32)
    for i in range(5):
        with pytest.raises(Drop) as e:
            agent.observe("lidar", 1.0 + i, empty, target)
        assert e.value.reason == DropReason.NOVEL
    assert agent.store.get("corridor") is None and agent.novelty_last["lidar"] > 1.0
    # novelty off (threshold < 0): the same scan is fused
    agent.reconfigure(novelty_threshold=-1.0)
    out = agent.observe("lidar", 9.0, empty, target)
    assert out.belief.novelty == -1.0 and agent.store.get("corridor") is not None


def test_relayed_accumulated_evidence_is_never_counted_twice(calibrated, data):
    test = data[1]
    clock = lambda: 0.0  # noqa: E731
    a = Agent(FusionEngine(calibrated), AgentConfig(agent_id="a", modalities=("lidar",), max_message_age=0.0,
                                                   max_latent_age=-1.0, shared_latent_rate=0.0,
                                                   novelty_threshold=-1.0), clock=clock)
    b = Agent(FusionEngine(calibrated), AgentConfig(agent_id="b", modalities=("camera",), max_message_age=0.0,
                                                   max_latent_age=-1.0, shared_latent_rate=0.0,
                                                   novelty_threshold=-1.0), clock=clock)
    for ag in (a, b):
        ag.on_target(0.0, "t")
    idx = np.flatnonzero(test["shape"] == test["shape"][0])[:3]
    outs = [a.observe("lidar", 1.0 + k, test["lidar"][i], a.target_at(1.0)) for k, i in enumerate(idx)]
    lat = outs[-1].latent
    # format 3-4: every contribution listed with its provenance, and the accumulated slot
    assert lat.format_version == 4 and len(lat.contribution_modalities) >= 2
    assert set(lat.contribution_sources) == {"a"} and lat.slot_features.shape == (1, calibrated.feature_dim)
    merged = b.merge(peer_from_latent(lat), now_s=10.0)
    assert merged is not None and merged.latent.contribution_stamps_ns[-len(lat.contribution_stamps_ns):] \
        == lat.contribution_stamps_ns
    # b's belief relayed back to a holds nothing a lacks for lidar: a keeps its own slot, nothing is counted twice
    back = a.merge(peer_from_latent(merged.latent), now_s=10.0)
    if back is not None:
        assert back.latent.contribution_stamps_ns.count(lat.contribution_stamps_ns[-1]) == 1
    # an older relay of a's own evidence (a subset of what a holds) adds nothing
    assert a.merge(peer_from_latent(outs[0].latent), now_s=10.0) is None
    assert b.merge(peer_from_latent(lat), now_s=10.0) is None  # the same latent twice: merged once
    assert a.counts["redundant.peer"] >= 1 and b.counts["redundant.peer"] >= 1


def test_format3_latent_message_round_trip_and_format2_still_parses(calibrated, data):
    pytest.importorskip("m2vae_fusion_msgs")
    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.ros.fusion_node import belief_msg, latent_msg

    agent = Agent(FusionEngine(calibrated), AgentConfig(agent_id="a", modalities=("reflectance",),
                                                       max_message_age=0.0, novelty_threshold=-1.0),
                  clock=lambda: 0.0)
    agent.on_target(0.0, "t")
    test = data[1]
    idx = np.flatnonzero(test["material"] == test["material"][0])[:2]
    out = [agent.observe("reflectance", 1.0 + k, test["reflectance"][i], agent.target_at(1.0))
           for k, i in enumerate(idx)][-1]
    msg = latent_msg(out.latent)
    assert msg.format_version == 4 and list(msg.contribution_sources) == ["a", "a"]
    got = conv.latent_from_msg(msg, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim)
    assert got.contribution_stamps_ns == out.latent.contribution_stamps_ns
    np.testing.assert_array_equal(got.slot_features, out.latent.slot_features)
    bel = belief_msg(out.belief, msg)
    assert bel.format_version == 4 and bel.novelty == -1.0 and bel.novelty_threshold == -1.0
    # a format-2 message (no contribution fields): parsed, each slot counts as its one observation
    msg.format_version = 2
    msg.contribution_modalities, msg.contribution_sources, msg.contribution_stamps = [], [], []
    msg.slot_features, msg.slot_precisions = [], []
    old = conv.latent_from_msg(msg, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim)
    assert old.contribution_modalities == () and old.slot_features is None
    # inconsistent provenance is refused with a reason
    bad = latent_msg(out.latent)
    bad.contribution_sources = ["a"]
    with pytest.raises(conv.ConversionError) as e:
        conv.latent_from_msg(bad, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim)
    assert e.value.reason == DropReason.MISMATCH
    bad = latent_msg(out.latent)
    bad.slot_features = list(bad.slot_features)[:-1]
    with pytest.raises(conv.ConversionError):
        conv.latent_from_msg(bad, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim)


def test_bundle_without_novelty_block_never_flags_and_bad_block_is_refused(tmp_path, calibrated):
    import json

    from m2vae_fusion.errors import BundleError

    shipped = Bundle.load(os.path.join(ROOT, "models", "amiro_easy"))
    assert "novelty" not in shipped.manifest and not shipped.novelty.entries
    out = str(tmp_path / "bad")
    shutil.copytree(calibrated.path, out)
    man = json.load(open(os.path.join(out, "manifest.json")))
    man["novelty"]["modalities"]["camera"]["kl"]["low"] = math.inf
    json.dump(man, open(os.path.join(out, "manifest.json"), "w"))
    with pytest.raises(BundleError, match="novelty"):
        Bundle.load(out)


def corridor_scan(dist: float) -> np.ndarray:
    """A 361-beam 180° scan of an office corridor: walls ``dist`` m left and right (beyond 5.6 m: +inf)."""
    ang = np.linspace(-math.pi / 2, math.pi / 2, 361)
    with np.errstate(divide="ignore"):
        r = (dist / np.abs(np.sin(ang))).astype(np.float32)
    r[~(r <= 5.6)] = np.inf
    return r


def test_node_drops_novel_scans_counts_them_and_publishes_the_score(calibrated, data, tmp_path):
    """Real rclpy: a LiDAR-only node fed corridor scans (361 beams over 180°, the node resamples them) counts them
    as dropped.lidar.novel and publishes no belief; in-distribution scans are fused and their ClassBelief carries
    the novelty score and threshold."""
    import time

    import rclpy
    from m2vae_fusion_msgs.msg import ClassBelief
    from sensor_msgs.msg import LaserScan

    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe

    from m2vae_fusion.core.messages import resample_scan

    lc = calibrated.input_config("lidar")
    grid = {"angle_min": -math.pi / 2, "angle_increment": math.pi / 360, "range_min": 0.02, "range_max": 5.6}
    scores = {d: bb.novelty_scores(calibrated, calibrated.novelty, "lidar",
                                   [resample_scan(corridor_scan(d), -math.pi / 2, math.pi / 360, lc)])[0]
              for d in (0.5, 1.0, 2.0, 3.0)}
    dist = max(scores, key=scores.get)
    assert scores[dist] > calibrated.novelty.threshold, scores  # the corridor is novel for this bundle
    test = data[1]
    good = [i for i in range(len(test["label"]))
            if bb.novelty_scores(calibrated, calibrated.novelty, "lidar", [test["lidar"][i]])[0] < 0.8][:1]
    assert good
    rclpy.init()
    probe = Probe("belief_tester")
    proc = None
    try:
        probe.subscribe("/nov/belief", ClassBelief)
        proc = NodeProcess("m2vae_fusion.ros.fusion_node", "/nov",
                           {"model_dir": calibrated.path, "agent_id": "nov", "modalities": ["lidar"],
                            "diagnostics_period": 0.2, "warn_throttle": 0.0, "shared_latent_topic": ""},
                           str(tmp_path))
        assert probe.diagnostics("/nov/fusion_node", timeout=30) is not None, proc.dump_stack()
        from m2vae_fusion_msgs.msg import TargetOfInterest

        assert probe.wait_subscribers("/nov/target_of_interest", TargetOfInterest, RELIABLE_QOS)
        assert probe.wait_subscribers("/nov/scan", LaserScan, SENSOR_QOS)
        probe.publish("/nov/target_of_interest", conv.target_msg("corridor", probe.now_ns() - 1_000_000))
        deadline = time.monotonic() + 15
        vals = {}
        while time.monotonic() < deadline and vals.get("dropped.lidar.novel", 0) < 3:
            probe.publish("/nov/scan", conv.ranges_to_scan(corridor_scan(dist), grid, stamp_ns=probe.now_ns()),
                          SENSOR_QOS)
            vals = probe.diagnostics("/nov/fusion_node", after=time.monotonic(), timeout=2) or vals
        assert vals.get("dropped.lidar.novel", 0) >= 3, vals
        assert vals.get("processed.lidar", 0) == 0 and vals.get("novelty.lidar", 0) > 1.0
        assert not probe.messages("/nov/belief")  # the corridor stays at the prior: nothing published
        # an in-distribution scan of an object is fused; its belief carries the score
        probe.publish("/nov/target_of_interest", conv.target_msg("object", probe.now_ns() - 1_000_000))
        raw = test["lidar"][good[0]]
        t0 = time.monotonic()
        bel = probe.wait_for("/nov/belief", lambda m: m.target_id == "object", timeout=10, since=t0,
                             poke=lambda: probe.publish("/nov/scan", conv.ranges_to_scan(raw, lc,
                                                                                        stamp_ns=probe.now_ns()),
                                                        SENSOR_QOS), poke_period=0.3)
        assert bel is not None and bel.format_version == 4
        assert 0.0 <= bel.novelty <= 1.0 and bel.novelty_threshold == pytest.approx(calibrated.novelty.threshold)
    finally:
        if proc is not None:
            code = proc.stop()
            assert code == 0 and "Traceback" not in proc.log(), proc.log()[-3000:]
        probe.close()
        rclpy.try_shutdown()


def test_slot_accumulation_is_a_product_of_gaussian_experts_with_forgetting(tmp_path):
    """Exact check on the linear test bundle: two inliers give the precision-weighted mean with forgetting λ
    (MoPoE-VAE Eq. 8 closed form), an outlier is held back without changing the belief, 4 consecutive agreeing
    outliers replace the slot, and a peer's slot holding a subset of the own contributions never wins."""
    from linear_bundle import make_linear_bundle

    from m2vae_fusion.core.fusion import Accumulation, Belief, FusionError, Slot

    bundle = Bundle.load(make_linear_bundle(str(tmp_path / "lin"), 4, 4, seed=1))
    eng = FusionEngine(bundle, clock=lambda: 0.0, accumulation=Accumulation(forgetting=0.5, gate=1.0, confirm=4))
    f1, f2 = np.array([0.1, 0.2, 0.0, 0.1], np.float32), np.array([0.3, 0.0, 0.2, 0.1], np.float32)
    lv1, lv2 = np.zeros(4, np.float32), np.full(4, np.log(0.5), np.float32)  # precisions 1 and 2
    b = eng.observe(None, "t", "lidar", f1, 1.0, "a", log_variance=lv1)
    b = eng.observe(b, "t", "lidar", f2, 2.0, "a", log_variance=lv2)
    sl = b.slots["lidar"]
    np.testing.assert_allclose(sl.precision, 0.5 * 1 + 2, rtol=1e-6)
    np.testing.assert_allclose(sl.feature, (0.5 * 1 * f1 + 2 * f2) / 2.5, rtol=1e-5)
    assert sl.evidence == (("a", 1.0), ("a", 2.0))
    # the belief is the subset encoder of the accumulated feature (exact linear bundle: its encoding)
    ref = eng.observe(None, "t", "lidar", sl.feature, 2.0, "a")
    np.testing.assert_allclose(b.mean, ref.mean, atol=1e-5)
    far = np.array([3.0, -3.0, 3.0, -3.0], np.float32)
    held = b
    for k in range(3):  # a burst of 3 agreeing outliers: held back, the belief does not move
        held = eng.observe(held, "t", "lidar", far + 0.01 * k, 3.0 + k, "a")
        assert held.held_back and np.array_equal(held.mean, b.mean) and held.slots["lidar"].evidence == sl.evidence
    changed = eng.observe(held, "t", "lidar", far, 6.0, "a")  # the 4th: the object changed
    assert not changed.held_back and [s for _, s in changed.slots["lidar"].evidence] == [3.0, 4.0, 5.0, 6.0]
    with pytest.raises(FusionError) as e:
        eng.observe(b, "t", "lidar", f1, 0.5, "a")
    assert e.value.reason == DropReason.STALE
    # merge: a peer slot listing only contributions the own slot holds adds nothing
    relay = Belief("t", b.mean, b.log_variance, {"lidar": Slot(2.0, "a", contributions=(("a", 2.0),))})
    assert eng.merge(b, relay) == (b, False)
    # forgetting 0: the paper's replace-the-slot fusion
    eng.accumulation = Accumulation(forgetting=0.0)
    rep = eng.observe(b, "t", "lidar", far, 9.0, "a")
    assert not rep.held_back and rep.slots["lidar"].evidence == (("a", 9.0),)
    with pytest.raises(ValueError):
        Accumulation(forgetting=1.5)


def test_reconstruction_error_statistic_runs_the_betavae_decoder(calibrated, data):
    """``export --novelty-statistics`` may add the reconstruction error (the β-VAE ELBO's likelihood term)."""
    from m2vae_fusion.core.novelty import Novelty
    from m2vae_fusion.training.export import compute_novelty_block

    block = compute_novelty_block(calibrated.path, calibrated.manifest, data[0], split="val",
                                  statistics=("reconstruction_error", "kl", "feature_distance"))
    nov = Novelty(block)
    assert nov.needs_reconstruction and nov.statistics[0] == "reconstruction_error"
    calls = []

    def reconstruct(f):
        calls.append(len(f))
        return calibrated.decode_feature("camera", f)

    from m2vae_fusion.core.preprocess import preprocess

    x = np.concatenate([preprocess("camera", r, calibrated.input_config("camera")) for r in data[1]["camera"][:20]])
    mu, lv = calibrated.encode_feature("camera", x)
    s = nov.score_observation("camera", x, mu, lv, reconstruct)
    assert calls == [20] and s.shape == (20,) and np.isfinite(s).all()
    with pytest.raises(Exception, match="subset"):
        compute_novelty_block(calibrated.path, calibrated.manifest, data[0], statistics=("likelihood",))


def test_accumulation_over_views_on_the_hard_bundle_and_none_for_the_easy_one(calibrated):
    """``bench belief``'s views analysis: 27-class accuracies in [0, 1] per k and method on the hard bundle, each a
    multiple of 1/objects; the easy world (one view per object) has none. The hard bundle's observations carry their
    target position (its crop needs it): its in-distribution LiDAR scans must not look novel."""
    hard = Bundle.load(os.path.join(ROOT, "models", "amiro"))
    out = bb.accumulation_over_views(hard, n_objects=4, views=3, seed=3, ks=(1, 3))
    assert out["objects"] == 4 and out["views"] == 3 and set(out["k"]) == {1, 3}
    for row in out["k"].values():
        assert set(row) == {"feature_poe", "posterior_product", "last_view"}
        for v in row.values():
            assert 0.0 <= v <= 1.0 and abs(v * 4 - round(v * 4)) < 1e-9
    # k = 1: the product of posteriors of one view per sensor and the joint head on one view are different methods,
    # the last view and the slot accumulation of one view are the same computation
    assert out["k"][1]["feature_poe"] == out["k"][1]["last_view"]
    assert bb.accumulation_over_views(calibrated) is None
    d = bb.generate(hard, 40, seed=5)
    scores = bb.novelty_scores(hard, hard.novelty, "lidar", d["lidar"], [bb.position_of(d, i) for i in range(40)])
    assert (scores > hard.novelty.threshold).mean() <= 0.2


def test_a_change_needs_its_run_of_outliers_to_span_change_confirm_time(tmp_path):
    """At a high frame rate, 4 agreeing outliers within a fraction of a second (one new view) do not replace the
    slot; the run replaces it once it spans ``confirm_time`` seconds; an inlier in between restarts the run."""
    from linear_bundle import make_linear_bundle

    from m2vae_fusion.core.fusion import Accumulation

    bundle = Bundle.load(make_linear_bundle(str(tmp_path / "lin"), 4, 4, seed=1))
    eng = FusionEngine(bundle, clock=lambda: 0.0,
                       accumulation=Accumulation(forgetting=0.99, gate=1.0, confirm=4, confirm_time=2.0))
    near, far = np.array([0.1, 0.2, 0.0, 0.1], np.float32), np.array([3.0, -3.0, 3.0, -3.0], np.float32)
    b = eng.observe(None, "t", "lidar", near, 1.0, "a")
    held = b
    for k in range(10):  # 15 Hz: 10 agreeing outliers span 0.6 s
        held = eng.observe(held, "t", "lidar", far, 2.0 + k / 15, "a")
        assert held.held_back and held.slots["lidar"].evidence == b.slots["lidar"].evidence
    held = eng.observe(held, "t", "lidar", near, 2.7, "a")  # an inlier: the run is broken
    assert not held.held_back and held.slots["lidar"].support_since is None
    stamps = [2.8 + k / 15 for k in range(31)]  # a new run from 2.8 s: 2 s later (4.8 s) it replaces the slot
    for t in stamps:
        held = eng.observe(held, "t", "lidar", far, t, "a")
        if t - 2.8 < 2.0 - 1e-9:
            assert held.held_back, t
    assert not held.held_back and held.slots["lidar"].stamp == stamps[-1]
    assert [s for _, s in held.slots["lidar"].evidence] == stamps[-4:]
    with pytest.raises(ValueError):
        Accumulation(confirm_time=-1.0)


def test_class_evidence_adds_up_views_and_gives_the_product_of_unimodal_posteriors(calibrated, data):
    """Class evidence (format 4): per slot the view-weighted sum with forgetting of the unimodal class
    log-posteriors; the class belief is the softmax of their sum over slots (naive Bayes over sensors and views)."""
    from m2vae_fusion.core.fusion import Accumulation
    from m2vae_fusion.core.preprocess import preprocess

    test = data[1]
    eng = FusionEngine(calibrated, accumulation=Accumulation(forgetting=0.9, view_time=1.0), class_belief="evidence")
    feat = {m: calibrated.encode_feature(m, preprocess(m, test[m][0], calibrated.input_config(m)))[0][0]
            for m in ("lidar", "camera")}
    ell = {m: eng.unimodal_log_posterior(m, feat[m]) for m in feat}
    assert ell["lidar"].shape == (len(calibrated.class_names),) and np.all(ell["lidar"] <= 0)
    b = eng.observe(None, "t", "lidar", feat["lidar"], 1.0, "a")
    np.testing.assert_allclose(b.slots["lidar"].class_evidence, ell["lidar"], rtol=1e-6)
    b = eng.observe(b, "t", "lidar", feat["lidar"], 1.25, "a")     # a quarter of a view later: 0.25 of a view
    want = 0.9 ** 0.25 * ell["lidar"] + 0.25 * ell["lidar"]
    np.testing.assert_allclose(b.slots["lidar"].class_evidence, want, rtol=1e-5)
    b = eng.observe(b, "t", "lidar", feat["lidar"], 3.0, "a")      # a new view: weight 1
    want = 0.9 * want + ell["lidar"]
    np.testing.assert_allclose(b.slots["lidar"].class_evidence, want, rtol=1e-5)
    b = eng.observe(b, "t", "camera", feat["camera"], 3.5, "a")
    total = want + ell["camera"]
    p = np.exp(total - total.max())
    np.testing.assert_allclose(eng.classify(b), p / p.sum(), rtol=1e-4, atol=1e-6)
    eng.class_belief = "latent"                                      # the paper's head on the fused latent
    np.testing.assert_allclose(eng.classify(b), calibrated.classify(b.mean[None])[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="class_belief"):
        FusionEngine(calibrated, class_belief="vote")
    with pytest.raises(ValueError, match="view time"):
        Accumulation(view_time=-1.0)


def test_class_evidence_travels_in_format4_messages_bounded_and_format3_still_parses(calibrated, data):
    pytest.importorskip("m2vae_fusion_msgs")
    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.ros.fusion_node import belief_msg, latent_msg

    test = data[1]
    cfg = dict(max_message_age=0.0, max_latent_age=-1.0, shared_latent_rate=0.0, novelty_threshold=-1.0,
               class_belief="evidence")
    a = Agent(FusionEngine(calibrated), AgentConfig(agent_id="a", modalities=("lidar",), **cfg), clock=lambda: 0.0)
    b = Agent(FusionEngine(calibrated), AgentConfig(agent_id="b", modalities=("camera",), **cfg), clock=lambda: 0.0)
    for ag in (a, b):
        ag.on_target(0.0, "t")
    for k in range(3):
        out = a.observe("lidar", 1.0 + k, test["lidar"][0], a.target_at(1.0))
    assert out.belief.class_belief == "evidence"
    msg = latent_msg(out.latent)
    n_cls = len(calibrated.class_names)
    assert msg.format_version == 4 and len(msg.slot_class_evidence) == n_cls
    assert belief_msg(out.belief, msg).class_belief == "evidence"
    got = conv.latent_from_msg(msg, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim, n_cls)
    np.testing.assert_array_equal(got.slot_class_evidence, out.latent.slot_class_evidence)
    merged = b.merge(got, now_s=10.0)
    # b adopts a's lidar slot with its class evidence: the two agents hold the same class belief
    np.testing.assert_allclose(merged.belief.probabilities, out.belief.probabilities, rtol=1e-4, atol=1e-6)
    # a peer that shouts (1e30 nats for one class) is clipped to what a slot can accumulate
    loud = conv.latent_from_msg(msg, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim, n_cls)
    ev = np.full((1, n_cls), -1e30, np.float32)
    ev[0, 1] = 1e30
    stamp = loud.modality_stamps_ns[0] + 10**9
    loud = conv.LatentData(**{**loud.__dict__, "agent_id": "c", "modality_sources": ("c",), "contributors": ("c",),
                              "contribution_sources": ("c",) * len(loud.contribution_sources),
                              "contribution_stamps_ns": loud.contribution_stamps_ns[:-1] + (stamp,),
                              "modality_stamps_ns": (stamp,), "slot_class_evidence": ev})
    b.merge(loud, now_s=11.0)
    held = b.store.get("t").slots["lidar"].class_evidence
    cap = b.engine.evidence_cap()
    assert held.max() == 0.0 and held.min() >= -cap - 1e-3 and np.isfinite(held).all()
    # format 3 (no class evidence): parsed, the slot counts as one view of its accumulated feature
    msg.format_version = 3
    msg.slot_class_evidence = []
    old = conv.latent_from_msg(msg, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim, n_cls)
    assert old.slot_class_evidence is None
    fresh = Agent(FusionEngine(calibrated), AgentConfig(agent_id="d", modalities=("camera",), **cfg),
                  clock=lambda: 0.0)
    fresh.on_target(0.0, "t")
    res = fresh.merge(old, now_s=10.0)
    p = res.belief.probabilities
    assert np.isfinite(p).all() and abs(float(p.sum()) - 1.0) < 1e-4
    # a wrong number of values is refused with a reason
    bad = latent_msg(out.latent)
    bad.slot_class_evidence = list(bad.slot_class_evidence)[:-1]
    with pytest.raises(conv.ConversionError) as e:
        conv.latent_from_msg(bad, calibrated.modalities, calibrated.latent_dim, calibrated.feature_dim, n_cls)
    assert e.value.reason == DropReason.MISMATCH


def test_unimodal_heads_are_trained_added_verified_and_used_for_class_evidence(tmp_path, calibrated, data):
    """Unimodal class heads (manifest block ``unimodal_heads``): one small MLP per modality on its β-VAE feature,
    added to a bundle without changing its files or model_id, checked by sha256 on load, kept by a rebuild, and
    used by the engine for the class evidence."""
    from m2vae_fusion.core.bundle import read_manifest
    from m2vae_fusion.core.preprocess import preprocess
    from m2vae_fusion.errors import BundleError
    from m2vae_fusion.training.export import rebuild_bundle
    from m2vae_fusion.training.unimodal import add_unimodal_heads

    out = str(tmp_path / "b")
    shutil.copytree(calibrated.path, out)
    before = read_manifest(out)
    man = add_unimodal_heads(out, {"train": data[0], "val": data[1]}, epochs=3, hidden=16, progress=False, log=None)
    assert man["model_id"] == before["model_id"] and man["files"] == before["files"]
    assert set(man["unimodal_heads"]["modalities"]) == set(before["modalities"])
    b = Bundle.load(out)
    test = data[1]
    for m in b.modalities:
        assert b.has_unimodal_head(m)
        feat = b.encode_feature(m, preprocess(m, test[m][0], b.input_config(m)))[0]
        p = b.classify_unimodal(m, np.repeat(feat, 2, axis=0))
        assert p.shape == (2, len(b.class_names)) and np.allclose(p.sum(1), 1.0, atol=1e-5)
        eng = FusionEngine(b, class_belief="evidence")
        got = eng.unimodal_log_posterior(m, feat[0])
        if not b.unimodal_attributes(m):  # tiny heads read no attribute on held-out data: no evidence at all
            np.testing.assert_allclose(got, np.full(len(b.class_names), -np.log(len(b.class_names))), atol=1e-6)
        assert not calibrated.has_unimodal_head(m)  # the bundle without the block: subset encoder → head
    # without the attribute mapping (bundles from before it) the whole posterior is the evidence
    whole = json.loads(json.dumps(man))
    del whole["unimodal_heads"]["class_attributes"]
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(whole, fh)
    b1 = Bundle.load(out)
    for m in b1.modalities:
        assert b1.unimodal_attributes(m) is None
        feat = b1.encode_feature(m, preprocess(m, test[m][0], b1.input_config(m)))[0]
        p = b1.classify_unimodal(m, feat)
        np.testing.assert_allclose(FusionEngine(b1, class_belief="evidence").unimodal_log_posterior(m, feat[0]),
                                   np.log(np.maximum(p[0], 1e-6)), rtol=1e-5, atol=1e-6)
    # the class → attribute mapping of the data set, and which attributes each head reads on the val split
    attrs = man["unimodal_heads"]["class_attributes"]
    assert set(attrs) == {"colour", "shape", "material"}
    for c, name in enumerate(b.class_names):  # e.g. green_cube_shiny
        for key in attrs:
            assert int(np.unique(data[1][key][data[1]["label"] == c])[0]) == attrs[key][c], (name, key)
    for m in b.modalities:
        rel = man["unimodal_heads"]["modalities"][m]["attributes"]
        assert set(rel) == set(attrs) and all(r["uniform_nll"] == pytest.approx(np.log(2), abs=1e-4)
                                              for r in rel.values())
        assert all(r["used"] == (r["val_nll"] < 0.9 * r["uniform_nll"]) for r in rel.values())
    # the engine keeps only the marginals of the attributes marked used (here: forced to the own attribute)
    own = {"camera": "colour", "lidar": "shape", "reflectance": "material"}
    for m, a in own.items():
        for key in attrs:
            man["unimodal_heads"]["modalities"][m]["attributes"][key]["used"] = key == a
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(man, fh)
    b2 = Bundle.load(out)
    eng = FusionEngine(b2, class_belief="evidence")
    for m, a in own.items():
        feat = b2.encode_feature(m, preprocess(m, test[m][0], b2.input_config(m)))[0]
        p = b2.classify_unimodal(m, feat)[0].astype(np.float64)
        codes = np.asarray(attrs[a])
        # the ε-contaminated marginal (a share ε of observations carry no information), normalised over classes
        eps = EVIDENCE_CONTAMINATION
        marginal = (1 - eps) * np.bincount(codes, weights=p) + eps / (codes.max() + 1)
        want = np.log(marginal[codes]) - np.log(marginal[codes].sum())
        got = eng.unimodal_log_posterior(m, feat[0])
        np.testing.assert_allclose(got, np.maximum(want, np.log(1e-6)), rtol=1e-5, atol=1e-5)
        # classes that differ only in another attribute get the same evidence
        other = next(k for k in attrs if k != a)
        same = [c for c in range(len(codes)) if codes[c] == codes[0]]
        assert len({round(float(got[c]), 5) for c in same}) == 1 and len({attrs[other][c] for c in same}) > 1
    bad = json.loads(json.dumps(man))
    bad["unimodal_heads"]["class_attributes"]["shape"] = [0, 1]
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(bad, fh)
    with pytest.raises(BundleError, match="class_attributes"):
        Bundle.load(out)
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(man, fh)
    # a rebuild keeps the block and its files; the model_id stays
    re = str(tmp_path / "re")
    rebuild_bundle(out, re)
    assert read_manifest(re)["unimodal_heads"] == man["unimodal_heads"]
    assert Bundle.load(re).has_unimodal_head("lidar")
    # a changed head file stops the load, naming it
    path = os.path.join(out, man["unimodal_heads"]["modalities"]["lidar"]["file"])
    with open(path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="unimodal_head_lidar.onnx"):
        Bundle.load(out)


def test_mixture_statistic_and_novelty_block_versions(calibrated):
    """The ``feature_mixture`` statistic: one component is the squared Mahalanobis distance, two separated components
    score their own neighbourhoods low and the gap between them high (what a single Gaussian cannot); a version-1
    block (no mixture) still scores, a malformed mixture or an unknown version is refused naming the file."""
    import copy

    from m2vae_fusion.core.novelty import BLOCK_VERSION, Mixture, Novelty, NoveltyError, statistics

    rng = np.random.default_rng(0)
    prec = np.diag([2.0, 0.5])
    one = Mixture([1.0], [[1.0, -1.0]], [prec])
    f = rng.normal(size=(5, 2))
    c = f - [1.0, -1.0]
    np.testing.assert_allclose(one.statistic(f), np.einsum("nd,de,ne->n", c, prec, c), rtol=1e-12)
    two = Mixture([0.5, 0.5], [[-4.0, 0.0], [4.0, 0.0]], [np.eye(2), np.eye(2)])
    s = two.statistic(np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 0.0]]))
    assert s[0] == pytest.approx(s[1]) and s[2] > s[0] + 10 and (s >= 0).all()
    assert Mixture(**one.to_json()).statistic(f) == pytest.approx(one.statistic(f))
    # K components with full precisions: the stacked Cholesky form equals the definition
    a = rng.normal(size=(3, 4, 4))
    precs, means, w = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(4), rng.normal(size=(3, 4)), np.array([0.2, 0.3, 0.5])
    g = rng.normal(size=(6, 4)) * 2
    c3 = g[:, None] - means[None]
    logdet = np.linalg.slogdet(precs)[1]
    e = np.log(w) + 0.5 * (logdet - logdet.max()) - 0.5 * np.einsum("nkd,kde,nke->nk", c3, precs, c3)
    want = -2.0 * np.log(np.exp(e).sum(axis=1))
    np.testing.assert_allclose(Mixture(w, means, precs).statistic(g), np.maximum(want, 0.0), rtol=1e-9, atol=1e-9)
    # one observation (the node's float path) scores exactly as in a batch, NaN → inf, 0 / negative / inf included
    nov = calibrated.novelty
    st = {"kl": np.array([0.3, 0.0, -1.0, np.inf, np.nan, 1e300, 40.0]),
          "feature_mixture": np.array([2.0, np.nan, 0.0, 5.0, np.inf, 1e-300, 0.5])}
    batch = nov.score("lidar", st)
    one = [nov.score("lidar", {k: v[i:i + 1] for k, v in st.items()}) for i in range(7)]
    assert all(o.shape == (1,) for o in one) and np.array_equal(batch, np.concatenate(one))
    assert np.isinf(batch[1]) and np.isinf(batch[4]) and np.isfinite(batch[0])
    for bad in (dict(weights=[0.5], means=[[0, 0]], precisions=[np.eye(2)]),          # weights do not sum to 1
                dict(weights=[1.0], means=[[0, 0]], precisions=[-np.eye(2)]),         # not positive definite
                dict(weights=[1.0], means=[[0, 0, 0]], precisions=[np.eye(2)])):      # shapes
        with pytest.raises(ValueError):
            Mixture(**bad)
    block = calibrated.manifest["novelty"]
    assert block["version"] == BLOCK_VERSION == 2 and "mixture" in block["modalities"]["lidar"]
    x = np.zeros((1, 4), np.float32)
    mu = np.zeros((1, len(block["modalities"]["lidar"]["feature_mean"])), np.float32)
    v1 = copy.deepcopy(block)
    v1.update(version=1, statistics=["kl", "feature_distance"])
    for e in v1["modalities"].values():
        e["feature_distance"] = e.pop("feature_mixture")
        del e["mixture"]
    old = Novelty(v1)
    assert old.statistics == ("kl", "feature_distance")
    assert np.isfinite(old.score("lidar", statistics(x, mu, mu, None, *old.reference("lidar"))))[0]
    broken = copy.deepcopy(block)
    broken["modalities"]["lidar"]["mixture"]["weights"][0] += 0.5
    with pytest.raises(NoveltyError, match="manifest.json.*lidar.*mixture"):
        Novelty(broken, "manifest.json")
    v1_mixture = copy.deepcopy(block)
    v1_mixture["version"] = 1  # version 1 did not know the mixture: refused, not scored without it
    with pytest.raises(NoveltyError, match="block version 1"):
        Novelty(v1_mixture)
    with pytest.raises(NoveltyError, match="version 3"):
        Novelty(dict(block, version=3))


def test_hard_bundle_does_not_fuse_empty_scenes_of_the_lidar(tmp_path):
    """Issue 14's novelty inputs made by the simulated world without objects, on the node's path (LaserScan
    conversion and sanity checks, preprocessing, β-VAE, novelty): the shipped hard-world bundle fuses no LiDAR scan of
    an empty floor (no return), a wall or an empty room, and few in-distribution scans. (The camera crop of a wall or
    floor looks like an object's surface: ``bench belief`` reports those numbers; not asserted here.)"""
    from m2vae_fusion.sim import hard

    shipped = Bundle.load(os.path.join(ROOT, "models", "amiro"))
    rng = np.random.default_rng(21)
    for kind in hard.EMPTY_KINDS:
        sc = hard.empty_views(6, rng, kind)
        assert sc["camera"].shape == (6, 64, 64, 3) and sc["target_position"].shape == (6, 3)
        flag, reasons, scores = bb.not_fused(shipped, "lidar", list(sc["lidar"]), list(sc["target_position"]))
        assert flag.all(), (kind, reasons, scores)
        if kind == "floor":
            assert reasons == {"no_return": 6} and np.isnan(scores).all()
        else:
            assert reasons == {"novel": 6} and (scores > shipped.novelty.threshold).all()
    d = bb.generate(shipped, 40, seed=5)
    flag, reasons, scores = bb.not_fused(shipped, "lidar", list(d["lidar"]), [bb.position_of(d, i) for i in range(40)])
    assert flag.mean() <= 0.1 and set(reasons) <= {"novel"} and np.isfinite(scores).all()
    # bench belief's position sensitivity: the crop's modalities, accuracies of 40 observations each
    rows = bb.position_sensitivity(shipped, d, errors=((0.0, 0.0), (0.01, 0.0)))
    assert set(rows) == {"camera", "lidar"}
    for m, r in rows.items():
        assert [(x["lateral_m"], x["n"]) for x in r] == [(0.0, 40), (0.01, 40)]
        assert all(0.0 <= x["accuracy"] <= 1.0 and abs(x["accuracy"] * 40 - round(x["accuracy"] * 40)) < 1e-9
                   for x in r)
    assert rows["lidar"][0]["accuracy"] >= 0.6  # exact positions: the shape reads as in training


def test_peer_slot_precision_is_capped_at_the_current_forgetting_factor(calibrated):
    """A peer's accumulated slot precision is capped at the calibrated β-VAE precision × 1 / (1 − λ); the cap follows
    a forgetting factor changed at runtime (it is computed once per λ)."""
    from dataclasses import replace

    from m2vae_fusion.core.fusion import Belief, Slot

    eng = FusionEngine(calibrated)
    d = calibrated.feature_dim
    pm = np.asarray(calibrated.manifest["novelty"]["modalities"]["lidar"]["precision_max"], np.float32)
    peer = Belief("t", np.zeros(calibrated.latent_dim, np.float32), np.zeros(calibrated.latent_dim, np.float32),
                  {"lidar": Slot(1.0, "p", np.zeros(d, np.float32), np.full(d, 1e30, np.float32))}, 0.0)
    for lam in (0.99, 0.9, 0.99):
        eng.accumulation = replace(eng.accumulation, forgetting=lam)
        got = eng._checked_peer_slots(peer).slots["lidar"].precision
        np.testing.assert_allclose(got, pm / (1 - lam), rtol=1e-5)


def test_observe_latency_compares_against_the_headlines_plain_agent(calibrated, data, monkeypatch):
    """``bench belief``'s latency ratio uses the same reference as ``bench runtime``'s node_plain (PLAIN_PARAMS:
    no accumulation, no class evidence, no novelty): the reference agent runs none of the three, the default one all."""
    calls = {"novelty": 0, "unimodal": 0}
    score, ulp = Agent.novelty_score, FusionEngine.unimodal_log_posterior

    def counting_score(self, *a, **k):
        out = score(self, *a, **k)
        calls["novelty"] += out is not None
        return out

    def counting_ulp(self, *a, **k):
        calls["unimodal"] += 1
        return ulp(self, *a, **k)

    monkeypatch.setattr(Agent, "novelty_score", counting_score)
    monkeypatch.setattr(FusionEngine, "unimodal_log_posterior", counting_ulp)
    res = bb.observe_latency(calibrated, data[1], rounds=12)
    assert set(res) == set(calibrated.modalities)
    for row in res.values():
        assert row["with_ms"] > 0 and row["without_ms"] > 0
        assert row["ratio"] == pytest.approx(row["with_ms"] / row["without_ms"])
    # 12 rounds × 3 modalities: the default agent scores and reads class evidence for each, the reference for none
    assert calls["novelty"] == 36 and 36 <= calls["unimodal"] <= 48


@pytest.mark.parametrize("name", ["amiro", "amiro_sup"])
def test_shipped_hard_bundles_are_calibrated_with_the_export_defaults(name):
    """The shipped hard-world bundles carry the novelty calibration ``export`` writes by default (statistics and tail):
    a change of the default without recalibrating them (or the reverse) would make the README's novelty figures
    describe a bundle nobody ships. Their intervals are the quantiles ``tail`` / ``1 − tail`` of the calibration split:
    the low bound below the median below the high one for every statistic and sensor."""
    from m2vae_fusion.core import novelty

    block = json.load(open(os.path.join(ROOT, "models", name, "manifest.json")))["novelty"]
    assert block["tail"] == novelty.DEFAULT_TAIL and tuple(block["statistics"]) == novelty.DEFAULT_STATISTICS
    assert block["version"] == novelty.BLOCK_VERSION and block["threshold"] == novelty.DEFAULT_THRESHOLD
    for m, entry in block["modalities"].items():
        for s in block["statistics"]:
            assert entry[s]["low"] < entry[s]["median"] < entry[s]["high"], (m, s)


def test_camera_segmentation_and_the_target_visibility_split():
    """``World.camera_segmentation`` names the body under each pixel of the render, and ``bench belief``'s
    visibility split is consistent: its not-fused share is the mix of the two groups' shares."""
    from m2vae_fusion.sim import hard

    w = hard.make_world()
    try:
        scene = hard.HardScene(w)
        rng = np.random.default_rng(3)
        scene.set_object(hard.draw_object(rng), rng)
        w.set_object_pose(scene.target, 0.0, 0.0, 0.0)
        w.inspect(0, scene.target, 0.35, 0.0, 0.0)  # 0.35 m straight ahead: the target covers the image centre
        seg = w.camera_segmentation(0, 64, 64)
        assert seg.shape == (64, 64) and seg.dtype == np.int32
        assert seg[36, 32] == scene.target and (seg == scene.target).mean() < 0.5
        w.inspect(0, scene.target, 0.35, math.pi, 0.0)  # looking away: the target is nowhere in the image
        assert not (w.camera_segmentation(0, 64, 64) == scene.target).any()
    finally:
        w.close()
    shipped = Bundle.load(os.path.join(ROOT, "models", "amiro"))
    vis = bb.camera_target_visibility(shipped, n=24, seed=5)
    assert vis["views"] == 24 and all(0.0 <= vis[k] <= 1.0 for k in ("target_absent", "target_not_at_centre",
                                                                      "occluded", "not_fused"))
    assert vis["target_absent"] <= vis["target_not_at_centre"]
    mixed = sum(vis[f"not_fused_target_{g}"] * share for g, share in (
        ("at_centre", 1 - vis["target_not_at_centre"]), ("not_at_centre", vis["target_not_at_centre"])) if share > 0)
    assert mixed == pytest.approx(vis["not_fused"])
    assert bb.camera_target_visibility(Bundle.load(os.path.join(ROOT, "models", "amiro_easy"))) is None
