"""Where the package's shared files are: ``share/m2vae_fusion`` when installed (colcon or pip with data_files),
else the repository (editable install)."""
from __future__ import annotations

import os

PACKAGE = "m2vae_fusion"
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def share_path(*parts: str) -> str:
    """Path of ``share/m2vae_fusion/<parts>`` of the installed package if it exists there, else of the repository's
    ``<parts>`` (e.g. ``share_path("config", "fusion.yaml")``)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(get_package_share_directory(PACKAGE), *parts)
        if os.path.exists(path):
            return path
    except Exception:  # not installed with an ament index (editable install), AMENT_PREFIX_PATH unset, …
        pass
    return os.path.join(REPO_ROOT, *parts)


#: the bundle the package ships and uses when no model directory is given (``models/<DEFAULT_MODEL>``)
DEFAULT_MODEL = "amiro"


def default_bundle_path() -> str:
    """The default model bundle directory: ``share/m2vae_fusion/models/amiro`` of the installed package if it exists
    there, else the repository's ``models/amiro`` (:func:`share_path`). The fusion node's ``model_dir`` parameter,
    the demo's and the benchmarks' ``--model-dir`` use it when empty. The directory is not checked here (loading the
    bundle does that)."""
    return share_path("models", DEFAULT_MODEL)
