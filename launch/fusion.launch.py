"""One fusion node for one agent on a robot (or in a simulator).

    ros2 launch m2vae_fusion fusion.launch.py namespace:=robot1 camera_topic:=/robot1/camera/color/image_raw \
        lidar_topic:=/robot1/scan lidar_type:=LaserScan

Arguments: namespace, agent_id (empty: the namespace), model_dir (empty: the installed models/amiro), params_file
(default config/fusion.yaml), camera_topic / lidar_topic / reflectance_topic / target_topic (remappings of the
node's relative input topics), lidar_type (LaserScan | PointCloud2), use_sim_time, autostart (true: configure and
activate the lifecycle node at start-up; false: drive it with ``ros2 lifecycle set``), fastdds_profile (true: use
config/fastdds_shm.xml, a 16 MiB shared-memory segment for large images), log_level.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "m2vae_fusion"


def _fusion_node(context):
    cfg = {name: LaunchConfiguration(name).perform(context) for name in
           ("namespace", "agent_id", "model_dir", "params_file", "camera_topic", "lidar_topic", "reflectance_topic",
            "target_topic", "lidar_type", "use_sim_time", "log_level", "autostart")}
    overrides = {"lidar_type": cfg["lidar_type"], "use_sim_time": cfg["use_sim_time"].lower() == "true",
                 "autostart": cfg["autostart"].lower() == "true"}
    for key in ("agent_id", "model_dir"):  # empty: keep the node's default (namespace / installed bundle)
        if cfg[key]:
            overrides[key] = ParameterValue(cfg[key], value_type=str)
    remappings = [(rel, cfg[arg]) for rel, arg in (("camera/image_raw", "camera_topic"), ("scan", "lidar_topic"),
                                                    ("reflectance", "reflectance_topic"),
                                                    ("target_of_interest", "target_topic")) if cfg[arg]]
    return [Node(package=PACKAGE, executable="fusion_node", name="fusion_node", namespace=cfg["namespace"],
                 output="screen", emulate_tty=True, parameters=[cfg["params_file"], overrides],
                 remappings=remappings, arguments=["--ros-args", "--log-level", cfg["log_level"]])]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="agent0", description="Namespace of the agent"),
        DeclareLaunchArgument("agent_id", default_value="", description="Agent id; empty: the namespace"),
        DeclareLaunchArgument("model_dir", default_value="",
                              description="Model bundle directory; empty: share/m2vae_fusion/models/amiro"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "fusion.yaml"),
                              description="Parameter file of the fusion node (parameters under /**)"),
        DeclareLaunchArgument("camera_topic", default_value="", description="Camera Image topic (remaps "
                              "camera/image_raw); empty: <namespace>/camera/image_raw"),
        DeclareLaunchArgument("lidar_topic", default_value="", description="LiDAR topic (remaps scan)"),
        DeclareLaunchArgument("reflectance_topic", default_value="",
                              description="Reflectance LaserScan topic (remaps reflectance)"),
        DeclareLaunchArgument("target_topic", default_value="",
                              description="TargetOfInterest topic (remaps target_of_interest)"),
        DeclareLaunchArgument("lidar_type", default_value="LaserScan", choices=["LaserScan", "PointCloud2"],
                              description="Message type of the LiDAR topic"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="Use /clock (Gazebo, bag playback)"),
        DeclareLaunchArgument("fastdds_profile", default_value="false", choices=["true", "false"],
                              description="Use config/fastdds_shm.xml (16 MiB shared memory for large images)"),
        DeclareLaunchArgument("log_level", default_value="info", description="Node log level"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="Configure and activate the (lifecycle) fusion node at start-up; false: "
                                          "drive it with `ros2 lifecycle set`"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds_shm.xml"),
                               condition=IfCondition(LaunchConfiguration("fastdds_profile"))),
        OpaqueFunction(function=_fusion_node),
    ])
