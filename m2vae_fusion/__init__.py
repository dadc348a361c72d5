"""m2vae_fusion: multi-modal, multi-agent sensor fusion with β-VAEs and the M2VAE (Korthals et al., FUSION 2019).

Sub-packages: ``core`` (numpy/onnxruntime: preprocessing, model bundle, fusion engine; no ROS, no torch),
``sim`` (PyBullet world), ``data`` (data set shards), ``training`` (torch), ``ros`` (rclpy nodes),
``commands`` (the ``m2vae-fusion`` command line).
"""
__version__ = "0.1.0"
