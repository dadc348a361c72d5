"""Launch files and configuration, checked without ROS 2's launch (not installable here):

- statically (ast): every launch file parses and defines generate_launch_description; every executable of this
  package that it starts is a console script in setup.py; every file of this package it names exists (and is
  installed: setup.py installs launch/ and config/);
- by running generate_launch_description() against small stand-ins for launch / launch_ros, expanding the
  OpaqueFunctions with the default arguments: the nodes, namespaces, parameter files and parameter names they
  produce must be ones the nodes declare;
- parameter files: every key under ``/**: ros__parameters`` is a parameter the node declares;
- Gazebo: the bridge YAML has the ros_gz_bridge fields, its Gazebo topics are the SDF world's sensor topics, and the
  world holds the 8 object classes; the Fast DDS profile is well-formed.
"""
import ast
import glob
import importlib.util
import os
import re
import sys
import types
import xml.etree.ElementTree as ET

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_FILES = sorted(glob.glob(os.path.join(ROOT, "launch", "*.launch.py")))
PACKAGE = "m2vae_fusion"
CLASS_NAMES = [f"{c}_{s}_{m}" for c in ("red", "green") for s in ("cylinder", "cube") for m in ("matte", "shiny")]


def _entry_points():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    scripts = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.match(r"^[\w-]+ = [\w.]+:\w+$",
                                                                                       node.value):
            name, target = [x.strip() for x in node.value.split("=")]
            scripts[name] = target
    return scripts


def _constants(tree):
    """Module-level NAME = "string" assignments."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value.value
    return out


def _value(node, consts):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    return None


def test_there_are_the_three_launch_files():
    names = {os.path.basename(p) for p in LAUNCH_FILES}
    assert {"fusion.launch.py", "sim_multi_agent.launch.py", "gazebo.launch.py"} <= names


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=os.path.basename)
def test_launch_file_statically(path):
    src = open(path).read()
    tree = ast.parse(src, path)
    consts = _constants(tree)
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    scripts = _entry_points()
    started = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fname = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        kw = {k.arg: k.value for k in node.keywords}
        if fname == "Node":
            package, exe = _value(kw.get("package"), consts), _value(kw.get("executable"), consts)
            assert package and exe, f"{path}: Node without a literal package/executable"
            if package == PACKAGE:
                assert exe in scripts, f"{path}: executable {exe} is not a console script in setup.py"
                module = scripts[exe].split(":")[0]
                assert os.path.isfile(os.path.join(ROOT, *module.split(".")) + ".py"), module
                started.append(exe)
        if fname == "join" and node.args:  # os.path.join(<share of this package>, "config", "x.yaml")
            base = node.args[0]
            if isinstance(base, ast.Call) and getattr(base.func, "id", "") == "get_package_share_directory":
                if _value(base.args[0], consts) != PACKAGE:
                    continue  # another package's file (ros_gz_sim)
            parts = [_value(a, consts) for a in node.args[1:]]
            if parts and all(isinstance(p, str) for p in parts):
                rel = os.path.join(*parts)
                assert os.path.exists(os.path.join(ROOT, rel)), f"{path} names {rel}, which does not exist"
                assert parts[0] in ("launch", "config", "models"), f"{rel} is not in an installed folder"
    assert started, f"{path} starts no node of {PACKAGE}"


def test_setup_installs_launch_and_config():
    src = open(os.path.join(ROOT, "setup.py")).read()
    assert 'tree("launch")' in src and 'tree("config")' in src


# -- running the launch descriptions against stand-ins -------------------------------------------------------------
class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration:
    def __init__(self, name, default=None):
        self.name = name

    def perform(self, context):
        return context.values[self.name]


class OpaqueFunction(_Recorder):
    pass


class DeclareLaunchArgument(_Recorder):
    pass


class Context:
    def __init__(self, values):
        self.values = values


def _stub_modules():
    mods = {}

    def mod(name, **attrs):
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        mods[name] = m
        return m

    mod("launch", LaunchDescription=lambda actions: list(actions))
    mod("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument, OpaqueFunction=OpaqueFunction,
        SetEnvironmentVariable=type("SetEnvironmentVariable", (_Recorder,), {}),
        IncludeLaunchDescription=type("IncludeLaunchDescription", (_Recorder,), {}))
    mod("launch.conditions", IfCondition=type("IfCondition", (_Recorder,), {}))
    mod("launch.substitutions", LaunchConfiguration=LaunchConfiguration)
    mod("launch.launch_description_sources",
        PythonLaunchDescriptionSource=type("PythonLaunchDescriptionSource", (_Recorder,), {}))
    mod("launch_ros")
    mod("launch_ros.actions", Node=type("Node", (_Recorder,), {}))
    mod("launch_ros.parameter_descriptions",
        ParameterValue=type("ParameterValue", (_Recorder,), {}))
    return mods


def _run_launch(path, monkeypatch, **overrides):
    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    import ament_index_python.packages as aip

    monkeypatch.setattr(aip, "get_package_share_directory",
                        lambda pkg: ROOT if pkg == PACKAGE else f"/opt/ros/share/{pkg}")
    spec = importlib.util.spec_from_file_location(os.path.basename(path).replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    actions = module.generate_launch_description()
    values = {a.args[0]: a.kwargs.get("default_value", "") for a in actions if isinstance(a, DeclareLaunchArgument)}
    for a in actions:
        if isinstance(a, DeclareLaunchArgument):
            assert a.kwargs.get("description"), f"{path}: argument {a.args[0]} has no description"
    values.update(overrides)
    ctx = Context(values)
    out = []
    for a in actions:
        if isinstance(a, OpaqueFunction):
            out += a.kwargs["function"](ctx)
        else:
            out.append(a)
    return out, values


def _declared(executable):
    from m2vae_fusion.ros.fusion_node import FusionNode
    from m2vae_fusion.ros.sim_world_node import SimWorldNode

    table = {"fusion_node": FusionNode.PARAMS, "sim_world": SimWorldNode.PARAMS}[executable]
    return {name for name, _, _ in table} | {"use_sim_time"}


def _check_nodes(actions):
    nodes = [a for a in actions if type(a).__name__ == "Node" and a.kwargs["package"] == PACKAGE]
    for node in nodes:
        declared = _declared(node.kwargs["executable"])
        for p in node.kwargs.get("parameters", []):
            if isinstance(p, str):
                assert os.path.isfile(p), p
                keys = yaml.safe_load(open(p))["/**"]["ros__parameters"]
            else:
                keys = p
            unknown = set(keys) - declared
            assert not unknown, f"{node.kwargs['executable']} does not declare {unknown}"
    return nodes


def test_fusion_launch_expands(monkeypatch):
    actions, _ = _run_launch(os.path.join(ROOT, "launch", "fusion.launch.py"), monkeypatch, namespace="robot1",
                             camera_topic="/robot1/camera/color/image_raw", model_dir="/models/x")
    (node,) = _check_nodes(actions)
    assert node.kwargs["executable"] == "fusion_node" and node.kwargs["namespace"] == "robot1"
    assert ("camera/image_raw", "/robot1/camera/color/image_raw") in node.kwargs["remappings"]
    assert not [r for r in node.kwargs["remappings"] if r[0] == "scan"]  # empty argument: no remapping
    assert node.kwargs["parameters"][1]["model_dir"].args[0] == "/models/x"
    env = [a for a in actions if type(a).__name__ == "SetEnvironmentVariable"]
    assert env and env[0].args[0] == "FASTDDS_DEFAULT_PROFILES_FILE" and os.path.isfile(env[0].args[1])


def test_sim_multi_agent_launch_expands(monkeypatch):
    actions, _ = _run_launch(os.path.join(ROOT, "launch", "sim_multi_agent.launch.py"), monkeypatch,
                             num_agents="4", rigs="all,camera,lidar+reflectance")
    nodes = _check_nodes(actions)
    sims = [n for n in nodes if n.kwargs["executable"] == "sim_world"]
    fusions = [n for n in nodes if n.kwargs["executable"] == "fusion_node"]
    assert len(sims) == 1 and len(fusions) == 4
    assert [n.kwargs["namespace"] for n in fusions] == ["agent0", "agent1", "agent2", "agent3"]
    mods = [n.kwargs["parameters"][1]["modalities"] for n in fusions]
    assert mods == [["camera", "lidar", "reflectance"], ["camera"], ["lidar", "reflectance"], ["lidar", "reflectance"]]
    assert sims[0].kwargs["parameters"][1]["num_agents"] == 4
    from m2vae_fusion.ros.sim_world_node import parse_rig

    assert [list(parse_rig(r)) for r in sims[0].kwargs["parameters"][1]["sensors"]] == mods


def test_gazebo_launch_expands(monkeypatch):
    actions, values = _run_launch(os.path.join(ROOT, "launch", "gazebo.launch.py"), monkeypatch)
    nodes = _check_nodes(actions)
    assert [n.kwargs["executable"] for n in nodes] == ["fusion_node"]
    bridge = [a for a in actions if type(a).__name__ == "Node" and a.kwargs["package"] == "ros_gz_bridge"]
    assert bridge and bridge[0].kwargs["parameters"][0]["config_file"] == values["bridge_config"]
    include = [a for a in actions if type(a).__name__ == "IncludeLaunchDescription"]
    assert include and values["world"] in dict(include[0].kwargs["launch_arguments"])["gz_args"]
    assert nodes[0].kwargs["parameters"][2]["use_sim_time"] is True


# -- parameter files, Gazebo world and bridge, Fast DDS profile ------------------------------------------------------
@pytest.mark.parametrize("fname,executable", [("fusion.yaml", "fusion_node"), ("gazebo.yaml", "fusion_node"),
                                              ("sim_world.yaml", "sim_world")])
def test_parameter_files_name_declared_parameters(fname, executable):
    data = yaml.safe_load(open(os.path.join(ROOT, "config", fname)))
    assert list(data) == ["/**"], "parameters must be under /** so one file serves every namespace"
    params = data["/**"]["ros__parameters"]
    assert set(params) <= _declared(executable), set(params) - _declared(executable)
    if fname == "fusion.yaml":  # the file documents every parameter, with the node's defaults
        from m2vae_fusion.ros.fusion_node import FusionNode

        for name, default, _ in FusionNode.PARAMS:
            assert name in params, f"{name} missing from config/fusion.yaml"
            if not isinstance(default, (list, type(None))) and not hasattr(default, "name"):
                assert params[name] == default, f"{name}: {params[name]!r} in the file, {default!r} in the node"


def _sdf():
    return ET.parse(os.path.join(ROOT, "config", "gazebo_world.sdf")).getroot()


def test_gazebo_world_holds_the_eight_classes():
    world = _sdf().find("world")
    objects = {m.get("name"): m for m in world.findall("model") if m.get("name", "").startswith("object_")}
    assert sorted(objects) == [f"object_{j}" for j in range(8)]
    for j, name in enumerate(CLASS_NAMES):
        colour, shape, material = name.split("_")
        visual = objects[f"object_{j}"].find("link/visual")
        geom = visual.find("geometry")
        assert geom.find("cylinder" if shape == "cylinder" else "box") is not None, name
        r, g, _, _ = [float(v) for v in visual.find("material/diffuse").text.split()]
        assert (r > g) == (colour == "red"), name
        retro = float(visual.find("laser_retro").text)
        assert (retro > 0.3) == (material == "shiny"), name


def test_gazebo_bridge_matches_the_world():
    entries = yaml.safe_load(open(os.path.join(ROOT, "config", "gazebo_bridge.yaml")))
    sensors = {s.find("topic").text: s.get("type") for s in _sdf().iter("sensor")}
    gz_topics = set(sensors) | {t + "/points" for t, kind in sensors.items() if kind == "gpu_lidar"}
    fields = {"ros_topic_name", "gz_topic_name", "ros_type_name", "gz_type_name", "direction"}
    ros_topics = set()
    for e in entries:
        assert set(e) == fields, e
        assert e["direction"] in ("GZ_TO_ROS", "ROS_TO_GZ", "BIDIRECTIONAL")
        assert re.match(r"^\w+/msg/\w+$", e["ros_type_name"]) and e["gz_type_name"].startswith("gz.msgs.")
        if e["direction"] == "GZ_TO_ROS" and e["gz_topic_name"] != "/clock":
            assert e["gz_topic_name"] in gz_topics, f"{e['gz_topic_name']} is no sensor topic of the world"
        ros_topics.add(e["ros_topic_name"])
    # what the fusion node of agent0 subscribes to with the default topics
    assert {"/agent0/camera/image_raw", "/agent0/scan", "/agent0/reflectance", "/clock"} <= ros_topics
    reflectance = [s for s in _sdf().iter("sensor") if s.get("name") == "reflectance"][0]
    assert reflectance.find("lidar/scan/horizontal/samples").text == "8"


def test_fastdds_profile():
    root = ET.parse(os.path.join(ROOT, "config", "fastdds_shm.xml")).getroot()
    ns = {"d": "http://www.eprosima.com"}
    assert root.tag == "{http://www.eprosima.com}dds"
    seg = root.find(".//d:transport_descriptor[d:type='SHM']/d:segment_size", ns)
    assert seg is not None and int(seg.text) >= 4 * 1024 * 1024
    participant = root.find(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    ids = {t.text for t in root.findall(".//d:transport_descriptor/d:transport_id", ns)}
    assert {t.text for t in participant.findall(".//d:userTransports/d:transport_id", ns)} <= ids
