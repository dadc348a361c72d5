"""The simulated world and one fusion node per agent, each agent in its own namespace (/agent0, /agent1, ...).

    ros2 launch m2vae_fusion sim_multi_agent.launch.py num_agents:=3 rigs:=all,camera,lidar

Arguments: num_agents, rigs (comma-separated sensor rig per agent: all, camera, lidar, reflectance or e.g.
lidar+reflectance; the last one repeats), world (easy | hard; empty: the parameter file's, easy), model_dir (empty: the installed models/amiro), sim_params_file (default
config/sim_world.yaml), fusion_params_file (default config/fusion.yaml), fastdds_profile, use_sim_time.
The simulator publishes the ground truth on /sim/ground_truth (evaluation only), and each agent's target of
interest with its position in base_link (the fusion nodes' default base_frame) plus camera/camera_info, so
bundles whose preprocessing crops (the hard world's) crop on the target.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from m2vae_fusion.core.modalities import MODALITIES as SENSORS

PACKAGE = "m2vae_fusion"


def _rig(spec):
    spec = spec.strip().lower()
    if spec in ("", "all"):
        return list(SENSORS)
    names = [n for n in spec.replace(" ", "+").split("+") if n]
    unknown = [n for n in names if n not in SENSORS]
    if unknown:
        raise ValueError(f"unknown sensors {unknown} in rig {spec!r}; use all or {'+'.join(SENSORS)}")
    return [m for m in SENSORS if m in names]


def _nodes(context):
    num = int(LaunchConfiguration("num_agents").perform(context))
    rigs = [r for r in LaunchConfiguration("rigs").perform(context).split(",")] or ["all"]
    rigs = [rigs[min(i, len(rigs) - 1)] for i in range(num)]
    model_dir = LaunchConfiguration("model_dir").perform(context)
    sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    prefix = "agent"
    sim_overrides = {"num_agents": num, "agent_prefix": prefix, "sensors": rigs, "use_sim_time": sim_time}
    world = LaunchConfiguration("world").perform(context).strip()
    if world:
        if world not in ("easy", "hard"):
            raise ValueError(f"world must be easy or hard, got {world!r}")
        sim_overrides["world"] = world
    actions = [Node(package=PACKAGE, executable="sim_world", name="sim_world", output="screen", emulate_tty=True,
                    parameters=[LaunchConfiguration("sim_params_file").perform(context), sim_overrides])]
    for i, rig in enumerate(rigs):
        overrides = {"agent_id": f"{prefix}{i}", "modalities": _rig(rig), "use_sim_time": sim_time}
        if model_dir:
            overrides["model_dir"] = ParameterValue(model_dir, value_type=str)
        actions.append(Node(package=PACKAGE, executable="fusion_node", name="fusion_node", namespace=f"{prefix}{i}",
                            output="screen", emulate_tty=True,
                            parameters=[LaunchConfiguration("fusion_params_file").perform(context), overrides]))
    return actions


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("num_agents", default_value="3", description="Number of agents"),
        DeclareLaunchArgument("rigs", default_value="all,camera,lidar",
                              description="Comma-separated sensor rig per agent; the last one repeats"),
        DeclareLaunchArgument("world", default_value="",
                              description="Simulated world: easy or hard (empty: the parameter file's)"),
        DeclareLaunchArgument("model_dir", default_value="",
                              description="Model bundle directory; empty: share/m2vae_fusion/models/amiro"),
        DeclareLaunchArgument("sim_params_file", default_value=os.path.join(share, "config", "sim_world.yaml"),
                              description="Parameter file of the simulated world"),
        DeclareLaunchArgument("fusion_params_file", default_value=os.path.join(share, "config", "fusion.yaml"),
                              description="Parameter file of every fusion node"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="Use /clock"),
        DeclareLaunchArgument("fastdds_profile", default_value="false", choices=["true", "false"],
                              description="Use config/fastdds_shm.xml (16 MiB shared memory for large images)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds_shm.xml"),
                               condition=IfCondition(LaunchConfiguration("fastdds_profile"))),
        OpaqueFunction(function=_nodes),
    ])
