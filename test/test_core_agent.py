"""The agent's policy (m2vae_fusion.core.agent) without ROS, on a linear bundle whose fusion is exact."""
import dataclasses
import math

import numpy as np
import pytest

from linear_bundle import make_linear_bundle
from m2vae_fusion.core.agent import (FORMAT_VERSION, Agent, AgentConfig, Drop, PeerLatent, ns_to_s,
                                     peer_from_latent, s_to_ns)
from m2vae_fusion.core.bundle import Bundle
from m2vae_fusion.core.fusion import FusionEngine, FusionError
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS
from m2vae_fusion.core.reasons import DropReason

D = 4


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return Bundle.load(make_linear_bundle(str(tmp_path_factory.mktemp("agent")), D, D, seed=2))


def make_agent(bundle, agent_id="a", clock=None, incarnation=1, **cfg):
    """An agent whose process started at ``incarnation`` ns (default 1 ns: before every stamp of these tests)."""
    clock = clock or Clock()
    return Agent(FusionEngine(bundle, clock=clock), AgentConfig(agent_id=agent_id, **cfg), clock=clock,
                 incarnation=incarnation), clock


def camera(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def lidar(seed=0):
    n = DEFAULT_CONFIGS["lidar"]["beams"]
    return np.random.default_rng(seed).uniform(0.2, 3.0, n).astype(np.float32)


def fuse(agent, modality, stamp, raw, now=None):
    target = agent.admit(modality, stamp, stamp if now is None else now)
    assert target is not None
    return agent.observe(modality, stamp, raw, target)


def test_stamp_roundtrip_is_exact():
    for ns in (0, 1_700_000_000_123_456_789, 999):
        s = ns_to_s(ns)
        assert s_to_ns(s) == ns - ns % 1000 and ns_to_s(s_to_ns(s)) == s


def test_target_timeline_and_no_target(bundle):
    agent, _ = make_agent(bundle)
    assert agent.admit("camera", 10.0, 10.0) is None and agent.counts["no_target.camera"] == 1
    assert agent.on_target(5.0, "t1", "map", (1, 2, 0)) and not agent.on_target(5.0, "t1", "map", (1, 2, 0))
    assert agent.on_target(8.0, "")          # "no target" from 8 s on
    assert agent.on_target(7.0, "t2", "odom")  # out of order: the timeline stays sorted
    assert agent.target_at(4.9) is None
    assert agent.target_at(6.0).target_id == "t1"
    t = agent.target_at(7.5)
    assert (t.target_id, t.frame_id) == ("t2", "odom")
    assert agent.target_at(9.0) is None
    assert agent.current_target == ""


def test_stamp_checks_raise_typed_reasons(bundle):
    agent, _ = make_agent(bundle, max_message_age=2.0, future_tolerance=0.5)
    agent.on_target(0.0, "t")
    with pytest.raises(Drop) as e:
        agent.admit("camera", 7.0, 10.0)
    assert e.value.reason is DropReason.STALE
    with pytest.raises(Drop) as e:
        agent.admit("camera", 10.6, 10.0)
    assert e.value.reason is DropReason.FUTURE
    assert agent.admit("camera", 8.5, 10.0).target_id == "t"
    off, _ = make_agent(bundle, max_message_age=0.0)
    off.on_target(0.0, "t")
    assert off.admit("camera", 1.0, 1000.0) is not None  # age check off


def test_observe_publishes_latent_belief_and_share(bundle):
    agent, clock = make_agent(bundle, shared_latent_rate=10.0)
    agent.on_target(0.0, "t", "map")
    out = fuse(agent, "camera", 1.0, camera())
    lat = out.latent
    assert lat.format_version == FORMAT_VERSION == 4
    assert (lat.agent_id, lat.target_id, lat.model_id, lat.frame_id) == ("a", "t", bundle.model_id, "map")
    assert lat.modalities == ("camera",) and lat.modality_sources == ("a",) and lat.contributors == ("a",)
    assert lat.stamp_ns == lat.modality_stamps_ns[0] == 1_000_000_000
    assert lat.mean.shape == (D,) and lat.mean.dtype == np.float32
    assert out.belief is not None and out.belief.class_names == bundle.class_names
    assert abs(float(out.belief.probabilities.sum()) - 1.0) < 1e-5
    assert out.shared is lat  # first latent of the target goes out at once
    # a second update within the share period waits, a third replaces it
    clock.t += 0.02
    out2 = fuse(agent, "lidar", 1.02, lidar())
    assert out2.shared is None and out2.latent.modalities == ("camera", "lidar")
    clock.t += 0.02
    out3 = fuse(agent, "camera", 1.04, camera(1))
    assert out3.shared is None and agent.counts["shared.coalesced"] == 1
    assert agent.due_shares() == []
    assert math.isclose(agent.next_share_due(), 0.06, abs_tol=1e-9)
    clock.t += 0.061
    due = agent.due_shares()
    assert [d.stamp_ns for d in due] == [out3.latent.stamp_ns] and agent.next_share_due() is None
    assert agent.counts["shared.sent"] == 2


def test_observe_drops_typed(bundle):
    agent, _ = make_agent(bundle)
    agent.on_target(0.0, "t")
    fuse(agent, "camera", 2.0, camera())
    with pytest.raises(Drop) as e:  # older than the camera slot held: FusionError.reason, not the message text
        fuse(agent, "camera", 1.5, camera())
    assert e.value.reason is DropReason.STALE
    with pytest.raises(Drop) as e:
        fuse(agent, "camera", 3.0, np.zeros((4, 4), np.float32))
    assert e.value.reason is DropReason.PREPROCESS

    class Unreadable(ValueError):
        reason = "truncated"

    def bad():
        raise Unreadable("buffer too short")

    with pytest.raises(Drop) as e:
        fuse(agent, "camera", 3.0, bad)
    assert e.value.reason is DropReason.TRUNCATED


def test_fusion_error_carries_reason(bundle):
    engine = FusionEngine(bundle)
    b = engine.observe(None, "t", "camera", np.zeros(D, np.float32), 2.0, "a")
    with pytest.raises(FusionError) as e:
        engine.observe(b, "t", "camera", np.zeros(D, np.float32), 1.0, "a")
    assert e.value.reason is DropReason.STALE
    with pytest.raises(FusionError) as e:
        engine.observe(b, "t", "camera", np.full(D, np.nan, np.float32), 3.0, "a")
    assert e.value.reason is DropReason.NON_FINITE


def test_screen_peer(bundle):
    agent, _ = make_agent(bundle, trusted=frozenset({"b"}))
    agent.screen_peer("b", bundle.model_id, FORMAT_VERSION)
    agent.screen_peer("b", bundle.model_id, 2)  # format 2: read, incarnations unknown
    agent.screen_peer("b", bundle.model_id, 3)  # format 3: read, no class evidence
    cases = [(("b", bundle.model_id, 5), DropReason.FORMAT_VERSION), (("b", bundle.model_id, 1),
                                                                       DropReason.FORMAT_VERSION),
             (("x", bundle.model_id, 2), DropReason.UNTRUSTED), (("b", "other", 2), DropReason.MODEL_ID)]
    for args, reason in cases:
        with pytest.raises(Drop) as e:
            agent.screen_peer(*args)
        assert e.value.reason is reason
    assert agent.is_own("a") and not agent.is_own("b")


def test_two_agents_converge_and_merge_only_new_evidence(bundle):
    a, ca = make_agent(bundle, "a")
    b, cb = make_agent(bundle, "b")
    for ag in (a, b):
        ag.on_target(0.0, "t", "map")
    la = fuse(a, "camera", 1.0, camera()).latent
    lb = fuse(b, "lidar", 1.1, lidar()).latent
    ca.t += 1.0  # a's camera latent was shared just now: let the share period pass
    out = a.merge(peer_from_latent(lb), 1.2)
    assert out is not None and out.latent.modalities == ("camera", "lidar")
    assert out.latent.modality_sources == ("a", "b") and out.latent.contributors == ("a", "b")
    assert out.shared is not None  # news for b: a's camera slot
    back = b.merge(peer_from_latent(out.latent), 1.3)
    assert back is not None and back.shared is None  # adopted a's latent: nothing b's peers lack
    np.testing.assert_allclose(back.latent.mean, out.latent.mean, atol=1e-6)
    # the same latent again, and an older one: no new evidence, nothing published, no decoding
    assert b.merge(peer_from_latent(out.latent), 1.3) is None
    assert b.merge(peer_from_latent(la), 1.3) is None
    assert b.counts["redundant.peer"] == 2


def test_merge_refuses_spoofed_untrusted_and_stale(bundle):
    a, _ = make_agent(bundle, "a", trusted=frozenset({"b"}), belief_ttl=5.0)
    a.on_target(0.0, "t")
    fuse(a, "camera", 1.0, camera())
    z = np.zeros(D, np.float32)

    def peer(sources, stamps_s, contributors=("b",), mods=None):
        mods = mods or ("camera", "lidar")[:len(sources)]
        return PeerLatent("b", "t", bundle.model_id, s_to_ns(max(stamps_s)), tuple(mods),
                          tuple(s_to_ns(s) for s in stamps_s), tuple(sources), tuple(contributors), z, z)

    with pytest.raises(Drop) as e:  # claims a camera observation of a that a never made (newer than its newest)
        a.merge(peer(("a",), (1.5,)), 2.0)
    assert e.value.reason is DropReason.SPOOFED
    with pytest.raises(Drop) as e:  # relays evidence of an untrusted agent
        a.merge(peer(("b", "x"), (1.5, 1.5), ("b", "x")), 2.0)
    assert e.value.reason is DropReason.UNTRUSTED
    with pytest.raises(Drop) as e:  # max_latent_age 0: the belief TTL (5 s)
        a.merge(peer(("b",), (1.5,), mods=("lidar",)), 7.0)
    assert e.value.reason is DropReason.STALE
    with pytest.raises(Drop) as e:
        a.merge(peer(("b",), (3.0,), mods=("lidar",)), 2.0)
    assert e.value.reason is DropReason.FUTURE
    # a's own camera evidence relayed back (not newer than a observed) is accepted with b's lidar
    out = a.merge(peer(("a", "b"), (1.0, 1.5), ("a", "b")), 2.0)
    assert out is not None and out.latent.modalities == ("camera", "lidar")


def test_reconfigure_runtime_safe_only(bundle):
    agent, clock = make_agent(bundle, belief_ttl=30.0)
    agent.on_target(0.0, "t")
    fuse(agent, "camera", 1.0, camera())
    agent.reconfigure(belief_ttl=1.0, trusted=["b", ""], shared_latent_rate=0.0)
    assert agent.config.trusted == frozenset({"b"}) and agent.config.share_period == 0.0
    clock.t += 2.0
    assert agent.expire() == ["t"]
    with pytest.raises(ValueError, match="agent_id"):
        agent.reconfigure(agent_id="other")


def test_reset_forgets_beliefs_and_waiting_shares(bundle):
    agent, clock = make_agent(bundle)
    agent.on_target(0.0, "t")
    fuse(agent, "camera", 1.0, camera())
    clock.t += 0.01
    fuse(agent, "lidar", 1.01, lidar())
    assert agent.next_share_due() is not None
    assert agent.reset() == 1
    assert agent.next_share_due() is None and agent.store_stats()["beliefs"] == 0


def test_config_validation(bundle):
    with pytest.raises(ValueError, match="sonar"):
        make_agent(bundle, modalities=("camera", "sonar"))


# -- restart identity, late joiners, peer-evidence age (issue 13 items 3 and 4) --------------------------------------
S = 1_000_000_000  # ns per s


def relay(bundle, sources, stamps_s, incarnations, mods=("camera", "lidar"), sender="b"):
    """A latent of ``sender`` relaying slots of ``sources`` with the given source incarnations (ns)."""
    z = np.zeros(D, np.float32)
    mods = mods[:len(sources)]
    return PeerLatent(sender, "t", bundle.model_id, s_to_ns(max(stamps_s)), tuple(mods),
                      tuple(s_to_ns(x) for x in stamps_s), tuple(sources), tuple(sorted(set(sources))), z, z,
                      "", 5 * S, tuple(incarnations))


def test_incarnation_travels_with_own_evidence(bundle):
    a, ca = make_agent(bundle, "a", incarnation=10 * S)
    b, _ = make_agent(bundle, "b", incarnation=5 * S)
    for ag in (a, b):
        ag.on_target(0.0, "t")
    la = fuse(a, "camera", 11.0, camera()).latent
    assert la.incarnation == 10 * S and la.modality_source_incarnations == (10 * S,)
    lb = fuse(b, "lidar", 11.1, lidar()).latent
    merged = b.merge(peer_from_latent(la), 11.2).latent
    assert merged.modality_sources == ("a", "b")
    assert merged.modality_source_incarnations == (10 * S, 5 * S) and merged.incarnation == 5 * S
    assert lb.modality_source_incarnations == (5 * S,)


def test_restarted_agent_accepts_its_earlier_evidence_not_spoofs(bundle):
    """Agent a ran from 10 s, observed its camera at 11 s, crashed and restarted at 20 s under the same id: a peer's
    relay of the pre-crash slot is accepted (no spoof drop), any claim the new process cannot own is refused."""
    a1, _ = make_agent(bundle, "a", incarnation=10 * S)
    b, _ = make_agent(bundle, "b", incarnation=5 * S)
    for ag in (a1, b):
        ag.on_target(0.0, "t")
    lb = fuse(b, "lidar", 11.5, lidar()).latent
    held = b.merge(peer_from_latent(fuse(a1, "camera", 11.0, camera()).latent), 11.6).latent
    assert held.modality_sources == ("a", "b")
    a2, _ = make_agent(bundle, "a", incarnation=20 * S)  # the restart: nothing observed yet
    a2.on_target(0.0, "t")
    out = a2.merge(peer_from_latent(held), 20.5)
    assert out is not None and out.latent.modalities == ("camera", "lidar")
    assert out.latent.modality_sources == ("a", "b")
    assert out.latent.modality_source_incarnations == (10 * S, 5 * S)  # still the earlier process's evidence
    assert a2.counts["provenance.earlier_incarnation"] == 1
    # format 2 (incarnation unknown): own evidence stamped before this start is accepted too
    assert a2.merge(relay(bundle, ["a"], [12.0], [0]), 20.6) is not None
    bad = [(["a"], [20.4], [20 * S], "never observed"),        # current incarnation, newer than anything observed
           (["a"], [20.4], [10 * S], "lifetime"),              # earlier incarnation, stamped after the restart
           (["a"], [9.0], [10 * S], "lifetime"),               # earlier incarnation, stamped before it started
           (["a"], [12.0], [30 * S], "later than this process"),  # a later incarnation than this process
           (["a"], [20.4], [0], "never observed")]             # unknown incarnation, after the restart
    for sources, stamps, incs, why in bad:
        with pytest.raises(Drop, match=why) as e:
            a2.merge(relay(bundle, sources, stamps, incs), 20.6)
        assert e.value.reason is DropReason.SPOOFED
    # once the new process observed, its own evidence relayed back is accepted
    own = fuse(a2, "camera", 20.45, camera(1)).latent
    assert own.modality_source_incarnations[0] == 20 * S
    assert a2.merge(relay(bundle, ["a", "b"], [20.45, 20.5], [20 * S, 5 * S]), 20.6) is not None


def test_agent_incarnation_defaults_to_wall_clock_and_must_be_positive(bundle):
    import time

    t0 = time.time_ns()
    agent = Agent(FusionEngine(bundle), AgentConfig(agent_id="a"))
    assert t0 <= agent.incarnation <= time.time_ns() and agent.start_s == ns_to_s(agent.incarnation)
    with pytest.raises(ValueError, match="incarnation"):
        Agent(FusionEngine(bundle), AgentConfig(agent_id="a"), incarnation=0)


def test_note_peer_reports_new_and_restarted_peers(bundle):
    a, _ = make_agent(bundle, "a")
    assert a.note_peer("b", 5 * S) and not a.note_peer("b", 5 * S)
    assert not a.note_peer("b", 4 * S)     # an older incarnation is no news
    assert a.note_peer("b", 6 * S)         # b restarted
    assert not a.note_peer("a", 9 * S) and not a.note_peer("c", 0)
    assert a.peers() == {"b": 6 * S}
    assert a.counts["peers.new"] == 1 and a.counts["peers.restarted"] == 1


def test_held_outputs_give_every_belief_as_last_published(bundle):
    a, _ = make_agent(bundle, "a")
    assert a.held_outputs() == []
    a.on_target(0.0, "t1", "map")
    first = fuse(a, "camera", 1.0, camera())
    a.on_target(2.0, "t2", "odom")
    fuse(a, "lidar", 2.5, lidar())
    held = {o.latent.target_id: o for o in a.held_outputs()}
    assert sorted(held) == ["t1", "t2"] and a.counts["republished"] == 2
    assert all(o.shared is None for o in held.values())  # not a share: the rate limit and its counters untouched
    assert held["t1"].latent.frame_id == "map" and held["t2"].latent.frame_id == "odom"
    assert held["t2"].latent.modalities == ("lidar",)
    np.testing.assert_array_equal(held["t1"].latent.mean, first.latent.mean)
    np.testing.assert_allclose(held["t1"].belief.probabilities, first.belief.probabilities)


def test_resync_shares_every_belief_within_the_rate(bundle):
    a, clock = make_agent(bundle, "a", shared_latent_rate=10.0)
    a.on_target(0.0, "t1", "map")
    fuse(a, "camera", 1.0, camera())
    a.on_target(2.0, "t2", "odom")
    fuse(a, "camera", 2.5, camera(1))
    assert a.due_shares() == []            # both were shared when observed
    assert a.resync() == 2 and a.counts["shared.resync"] == 2
    assert a.due_shares() == [] and a.next_share_due() == pytest.approx(0.1)  # within the share period: wait
    clock.t += 0.11
    sent = a.due_shares()
    assert sorted((x.target_id, x.frame_id) for x in sent) == [("t1", "map"), ("t2", "odom")]
    assert {x.target_id: x.modality_stamps_ns for x in sent} == {"t1": (s_to_ns(1.0),), "t2": (s_to_ns(2.5),)}
    a.resync()
    a.resync()                              # repeated resyncs coalesce: one latent per target and period
    clock.t += 0.11
    assert len(a.due_shares()) == 2
    quiet, _ = make_agent(bundle, "q", share=False)
    quiet.on_target(0.0, "t")
    fuse(quiet, "camera", 1.0, camera())
    assert quiet.resync() == 0


def test_peer_evidence_age(bundle):
    """The age of the held copy of a peer's evidence about the target both observe, counted while the peer keeps
    observing it (its evidence continuous from the held stamp to the sample, learned also later); else discarded."""
    a, _ = make_agent(bundle, "a")
    b, _ = make_agent(bundle, "b")
    for ag in (a, b):
        ag.on_target(0.0, "t")
    assert a.peer_evidence_age(5.0) is None and a.peer_evidence_stats(5.0) == {}
    fuse(a, "camera", 1.0, camera())                  # no peer evidence held yet: no sample
    a.merge(peer_from_latent(fuse(b, "lidar", 1.5, lidar()).latent), 1.6)
    assert a.peer_evidence_age(2.0) == pytest.approx(0.5) and a.peer_evidence_age(2.0, "other") is None
    a.admit("camera", 1.7, 1.7)                       # held 1.5 ≥ 1.7 − gap: 0.2 s at once
    a.admit("camera", 2.2, 2.2)                       # held 1.5 < 2.2 − gap: pending (0.7 s)
    st = a.peer_evidence_stats(2.2)
    assert st["peer_evidence.age_samples"] == 1 and st["peer_evidence.age_pending"] == 1
    # b kept observing (1.9 s: that latent lost; 2.1 s): the 2.1 s latent, arriving late, lists both observations
    fuse(b, "lidar", 1.9, lidar())
    a.merge(peer_from_latent(fuse(b, "lidar", 2.1, lidar()).latent), 2.3)
    a.admit("camera", 3.5, 3.5)                       # pending, age 1.4 s ...
    # ... but b's next evidence is stamped 3.6 s: b paused from 2.1 s to 3.6 s, the sample is not confirmed
    a.merge(peer_from_latent(fuse(b, "lidar", 3.6, lidar()).latent), 3.7)
    a.admit("camera", 9.0, 9.0)                       # the 3.5 s sample is past the horizon: discarded
    st = a.peer_evidence_stats(9.0)
    assert st["peer_evidence.age_s"] == pytest.approx(9.0 - 3.6)
    assert st["peer_evidence.age_samples"] == 2 and st["peer_evidence.age_discarded"] == 1
    assert st["peer_evidence.age_s.max"] == pytest.approx(0.7) and st["peer_evidence.age_s.p50"] == pytest.approx(0.45)
    assert st["peer_evidence.age_pending"] == 1       # the 9.0 s sample
    # a contribution stamped beyond the future tolerance (a faulty relay) does not make the copy look fresh
    lat = peer_from_latent(fuse(b, "lidar", 9.1, lidar()).latent)
    lat = dataclasses.replace(lat, contribution_modalities=(*lat.contribution_modalities, "lidar"),
                              contribution_sources=(*lat.contribution_sources, "b"),
                              contribution_stamps_ns=(*lat.contribution_stamps_ns, s_to_ns(1e6)))
    a.merge(lat, 9.2)
    assert a.peer_evidence_age(9.2) == pytest.approx(0.1)
    a.reset()
    assert a.peer_evidence_age(10.0) is None and a.peer_evidence_stats(10.0) == {}
