"""Gazebo (gz sim) with the 8 object classes and one robot (config/gazebo_world.sdf), the ros_gz_bridge for its
sensors (config/gazebo_bridge.yaml), and the fusion node of agent0 on simulation time.

    ros2 launch m2vae_fusion gazebo.launch.py            # then announce what the robot looks at, e.g.
    ros2 topic pub --once /agent0/target_of_interest m2vae_fusion_msgs/msg/TargetOfInterest "{target_id: object_0}"

Needs a full ROS 2 install with ros_gz_sim and ros_gz_bridge. Arguments: world, bridge_config, model_dir,
fusion_params_file, gazebo_params_file, lidar_type, gui (false: server only, headless).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "m2vae_fusion"


def _actions(context):
    world = LaunchConfiguration("world").perform(context)
    gui = LaunchConfiguration("gui").perform(context).lower() == "true"
    lidar_type = LaunchConfiguration("lidar_type").perform(context)
    model_dir = LaunchConfiguration("model_dir").perform(context)
    gz_launch = os.path.join(get_package_share_directory("ros_gz_sim"), "launch", "gz_sim.launch.py")
    overrides = {"agent_id": "agent0", "use_sim_time": True, "lidar_type": lidar_type}
    if lidar_type == "PointCloud2":
        overrides["lidar_topic"] = "scan/points"
    if model_dir:
        overrides["model_dir"] = ParameterValue(model_dir, value_type=str)
    return [
        IncludeLaunchDescription(PythonLaunchDescriptionSource(gz_launch),
                                 launch_arguments={"gz_args": f"-r {'' if gui else '-s '}{world}"}.items()),
        Node(package="ros_gz_bridge", executable="parameter_bridge", name="gz_bridge", output="screen",
             parameters=[{"config_file": LaunchConfiguration("bridge_config").perform(context),
                          "use_sim_time": True}]),
        Node(package=PACKAGE, executable="fusion_node", name="fusion_node", namespace="agent0", output="screen",
             emulate_tty=True,
             parameters=[LaunchConfiguration("fusion_params_file").perform(context),
                         LaunchConfiguration("gazebo_params_file").perform(context), overrides]),
    ]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("world", default_value=os.path.join(share, "config", "gazebo_world.sdf"),
                              description="SDF world (the 8 object classes and agent0)"),
        DeclareLaunchArgument("bridge_config", default_value=os.path.join(share, "config", "gazebo_bridge.yaml"),
                              description="ros_gz_bridge configuration"),
        DeclareLaunchArgument("model_dir", default_value="",
                              description="Model bundle directory; empty: share/m2vae_fusion/models/amiro"),
        DeclareLaunchArgument("fusion_params_file", default_value=os.path.join(share, "config", "fusion.yaml"),
                              description="Fusion-node parameters"),
        DeclareLaunchArgument("gazebo_params_file", default_value=os.path.join(share, "config", "gazebo.yaml"),
                              description="Fusion-node parameters for Gazebo (sim time), applied after the first"),
        DeclareLaunchArgument("lidar_type", default_value="LaserScan", choices=["LaserScan", "PointCloud2"],
                              description="Fuse the LaserScan or the PointCloud2 of the gpu_lidar"),
        DeclareLaunchArgument("gui", default_value="true", choices=["true", "false"],
                              description="Start the Gazebo GUI (false: server only)"),
        OpaqueFunction(function=_actions),
    ])
