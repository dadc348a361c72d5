"""The fusion node as a managed (lifecycle) node, driven from a separate client node over real DDS: transitions
through ``~/change_state`` / ``~/get_state``, runtime parameter changes (safe ones applied, others refused with a
reason), message format versions, and clean stops on SIGINT / SIGTERM / SIGINT to the whole process group."""
import os
import signal
import time

import numpy as np
import pytest

import rclpy  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from m2vae_fusion_msgs.msg import LatentEmbedding  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from m2vae_fusion.core.bundle import Bundle  # noqa: E402
from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe  # noqa: E402

pytestmark = pytest.mark.ros
MODULE = "m2vae_fusion.ros.fusion_node"
SHARED = "/m2vae/latents"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from linear_bundle import make_linear_bundle

    return make_linear_bundle(str(tmp_path_factory.mktemp("bundle")), 4, 4, seed=4)


@pytest.fixture(scope="module")
def probe():
    rclpy.init()
    p = Probe("lc_client")
    try:
        yield p
    finally:
        p.close()
        rclpy.try_shutdown()


def call(probe, srv_type, name, request, timeout=10.0):
    client = probe.node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        fut = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fut.done(), f"{name}: no answer"
        return fut.result()
    finally:
        probe.node.destroy_client(client)


def state(probe, ns):
    return call(probe, GetState, f"/{ns}/fusion_node/get_state", GetState.Request()).current_state.label


def change(probe, ns, transition_id):
    req = ChangeState.Request(transition=Transition(id=transition_id))
    return call(probe, ChangeState, f"/{ns}/fusion_node/change_state", req).success


def set_param(probe, ns, name, value):
    if isinstance(value, float):
        pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    elif isinstance(value, list):
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=value)
    elif isinstance(value, int):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    req = SetParameters.Request(parameters=[ParameterMsg(name=name, value=pv)])
    return call(probe, SetParameters, f"/{ns}/fusion_node/set_parameters", req).results[0]


def camera_until_latent(probe, ns, target, timeout=8.0):
    probe.subscribe(f"/{ns}/latent", LatentEmbedding)
    toi = conv.target_msg(target, probe.now_ns() - 1_000_000)
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def poke():
        probe.publish(f"/{ns}/target_of_interest", toi)
        probe.publish(f"/{ns}/camera/image_raw", conv.rgb_to_image(rgb, stamp_ns=probe.now_ns()), SENSOR_QOS)

    return probe.wait_for(f"/{ns}/latent", lambda m: m.target_id == target, timeout=timeout,
                          since=time.monotonic(), poke=poke)


def test_lifecycle_transitions_through_change_state(bundle_dir, probe, tmp_path):
    ns = "lc"
    proc = NodeProcess(MODULE, f"/{ns}", {"model_dir": bundle_dir, "autostart": False, "diagnostics_period": 0.2},
                       str(tmp_path))
    try:
        assert state(probe, ns) == "unconfigured"
        assert probe.publisher(f"/{ns}/camera/image_raw", Image, SENSOR_QOS).get_subscription_count() == 0
        # a non-runtime parameter may be set while unconfigured (read at configure)
        assert set_param(probe, ns, "agent_id", "lc_agent").successful
        assert change(probe, ns, Transition.TRANSITION_CONFIGURE) and state(probe, ns) == "inactive"
        assert change(probe, ns, Transition.TRANSITION_ACTIVATE) and state(probe, ns) == "active"
        lat = camera_until_latent(probe, ns, "lc_t")
        assert lat is not None and lat.agent_id == "lc_agent" and lat.format_version == 4
        # while configured: runtime-safe parameters apply, the others are refused with a reason
        assert set_param(probe, ns, "belief_ttl", 12.0).successful
        assert set_param(probe, ns, "trusted_agents", ["x", "y"]).successful
        # the new trust list applies at once: a latent from "tester" is now refused as untrusted
        model_id = Bundle.load(bundle_dir).model_id
        stamp = probe.now_ns()
        peer = conv.latent_to_msg(conv.LatentData(
            agent_id="tester", target_id="lc_t", model_id=model_id, stamp_ns=stamp, modalities=("lidar",),
            modality_stamps_ns=(stamp,), modality_sources=("tester",), contributors=("tester",),
            mean=np.zeros(4, np.float32), log_variance=np.zeros(4, np.float32)))
        assert probe.wait_subscribers(SHARED, LatentEmbedding, RELIABLE_QOS)
        vals, deadline = {}, time.monotonic() + 10
        while time.monotonic() < deadline and not vals.get("dropped.peer.untrusted"):
            probe.publish(SHARED, peer)
            vals = probe.diagnostics(f"/{ns}/fusion_node", after=time.monotonic(), timeout=2) or {}
        assert vals.get("dropped.peer.untrusted", 0) >= 1 and vals["state"] == "active"
        res = set_param(probe, ns, "model_dir", "/elsewhere")
        assert not res.successful and "configure" in res.reason
        assert change(probe, ns, Transition.TRANSITION_DEACTIVATE) and state(probe, ns) == "inactive"
        sub = probe.publisher(f"/{ns}/camera/image_raw", Image, SENSOR_QOS)
        deadline = time.monotonic() + 5
        while sub.get_subscription_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sub.get_subscription_count() == 0, "deactivate kept the sensor subscription"
        assert change(probe, ns, Transition.TRANSITION_CLEANUP) and state(probe, ns) == "unconfigured"
        assert not change(probe, ns, Transition.TRANSITION_ACTIVATE)  # not a transition of unconfigured
        assert change(probe, ns, Transition.TRANSITION_CONFIGURE) and change(probe, ns, Transition.TRANSITION_ACTIVATE)
        assert camera_until_latent(probe, ns, "lc_t2") is not None
        assert change(probe, ns, Transition.TRANSITION_ACTIVE_SHUTDOWN) and state(probe, ns) == "finalized"
        assert proc.alive()
    finally:
        code = proc.stop()
    assert code == 0 and "Traceback" not in proc.log(), proc.log()[-3000:]


def test_configure_failure_is_reported_not_fatal(probe, tmp_path):
    ns = "lcbad"
    proc = NodeProcess(MODULE, f"/{ns}", {"model_dir": str(tmp_path / "nowhere"), "autostart": False},
                       str(tmp_path))
    try:
        assert state(probe, ns) == "unconfigured"
        assert not change(probe, ns, Transition.TRANSITION_CONFIGURE)
        assert state(probe, ns) == "unconfigured" and proc.alive()
        assert "nowhere" in proc.log()
    finally:
        assert proc.stop() == 0


def test_unknown_format_version_is_refused(bundle_dir, probe, tmp_path):
    ns = "fv"
    proc = NodeProcess(MODULE, f"/{ns}", {"model_dir": bundle_dir, "diagnostics_period": 0.2}, str(tmp_path))
    bundle = Bundle.load(bundle_dir)
    try:
        assert probe.diagnostics(f"/{ns}/fusion_node", timeout=30) is not None, proc.log()
        assert LatentEmbedding.FORMAT_VERSION == 4 == LatentEmbedding().format_version
        stamp = probe.now_ns()
        data = conv.LatentData(agent_id="v3", target_id="fv_t", model_id=bundle.model_id, stamp_ns=stamp,
                               modalities=("lidar",), modality_stamps_ns=(stamp,), modality_sources=("v3",),
                               contributors=("v3",), mean=np.zeros(4, np.float32),
                               log_variance=np.zeros(4, np.float32))
        msg = conv.latent_to_msg(data)
        msg.format_version = 5
        assert probe.wait_subscribers(SHARED, LatentEmbedding, RELIABLE_QOS)
        deadline = time.monotonic() + 10
        vals = {}
        while time.monotonic() < deadline and not vals.get("dropped.peer.format_version"):
            probe.publish(SHARED, msg)
            vals = probe.diagnostics(f"/{ns}/fusion_node", after=time.monotonic(), timeout=2) or {}
        assert vals.get("dropped.peer.format_version", 0) >= 1
        assert vals.get("processed.peer", 0) == 0
    finally:
        assert proc.stop() == 0


STOPS = [("fusion_node", "SIGINT"), ("fusion_node", "SIGTERM"), ("fusion_node", "killpg_SIGINT"),
         ("sim_world", "SIGTERM")]  # sim_world: its sensor timers publish while SIGTERM shuts the context down


@pytest.mark.parametrize("node,how", STOPS, ids=[f"{n}-{h}" for n, h in STOPS])
def test_stops_exit_zero_without_traceback(bundle_dir, tmp_path, node, how):
    if node == "fusion_node":
        proc = NodeProcess(MODULE, "/stop", {"model_dir": bundle_dir}, str(tmp_path), name=f"stop_{how}")
        ready = "fusing"
    else:
        proc = NodeProcess("m2vae_fusion.ros.sim_world_node", "/stop_sim", {}, str(tmp_path), name=f"sim_{how}")
        ready = "touring"
    try:
        deadline = time.monotonic() + 30
        while ready not in proc.log() and time.monotonic() < deadline and proc.alive():
            time.sleep(0.1)
        assert ready in proc.log(), proc.log()
        time.sleep(1.0)
        if how == "killpg_SIGINT":  # Ctrl-C in a terminal: the whole process group (NodeProcess starts a session)
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.proc.send_signal(getattr(signal, how))
        code = proc.wait(15)
        assert code == 0, f"exit {code}\n{proc.log()}"
        assert "Traceback" not in proc.log(), proc.log()
    finally:
        proc.stop()
