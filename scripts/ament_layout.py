#!/usr/bin/env python3
"""Lays out in a pip prefix (a venv) what colcon's ament_python build installs, so that ``ros2 launch`` /
launch_ros find the package where a launch install exists:

- ``<prefix>/lib/m2vae_fusion/<executable>`` for every console script of the installed distribution (symlinks to
  ``<prefix>/bin/<executable>``; setup.cfg's ``script_dir``/``install_scripts`` do this for colcon, pip ignores them);
- ``<prefix>/share/ament_index/resource_index/packages/m2vae_fusion`` (the ament index marker);
- ``<prefix>/share/m2vae_fusion/{package.xml,launch,config,models}``: symlinks to the repository (as colcon's
  ``--symlink-install``) when they are missing; a non-editable ``pip install .`` installs them as files (data_files)
  and they are left alone.

Usage (with the prefix's own Python, after ``pip install [-e] .``):
``<prefix>/bin/python scripts/ament_layout.py [--prefix P] [--repo R]``. Idempotent: prints one line per change, nothing
when everything is in place. Exit status 2 with a one-line message when the package or a script is not installed.
"""
from __future__ import annotations

import argparse
import os
import sys
import sysconfig

PACKAGE = "m2vae_fusion"
SHARED = ("package.xml", "launch", "config", "models")


def _link(target: str, link: str, replace: bool, changes: list) -> None:
    """Make ``link`` a relative symlink to ``target`` (replacing another symlink when ``replace``)."""
    rel = os.path.relpath(target, os.path.dirname(link))
    if os.path.islink(link):
        if os.readlink(link) == rel or not replace:
            return
        os.unlink(link)
    elif os.path.lexists(link):
        return  # a real file or folder (a non-editable install): leave it
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(rel, link)
    changes.append(f"{link} -> {rel}")


def layout(prefix: str, repo: str) -> list:
    """Create what is missing; returns the changes made (empty when nothing was to do).

    Raises:
        SystemExit(2): the distribution or one of its console scripts is not installed in this Python.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        sys.exit(f"ament_layout: {PACKAGE} is not installed in {sys.prefix}; run pip install first")
    scripts = sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts")
    bindir = sysconfig.get_path("scripts", vars={"base": prefix, "platbase": prefix})
    changes: list = []
    for name in scripts:
        exe = os.path.join(bindir, name)
        if not os.access(exe, os.X_OK):
            print(f"ament_layout: console script {exe} is missing", file=sys.stderr)
            sys.exit(2)
        _link(exe, os.path.join(prefix, "lib", PACKAGE, name), True, changes)
    marker = os.path.join(prefix, "share", "ament_index", "resource_index", "packages", PACKAGE)
    if not os.path.exists(marker):
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        open(marker, "w").close()
        changes.append(f"{marker} (ament index marker)")
    for item in SHARED:
        _link(os.path.join(repo, item), os.path.join(prefix, "share", PACKAGE, item), False, changes)
    return changes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ament_layout.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default=sys.prefix, help="install prefix (default: this Python's, %(default)s)")
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="repository root whose launch/config/models are linked (default: %(default)s)")
    args = parser.parse_args(argv)
    prefix, repo = os.path.abspath(args.prefix), os.path.abspath(args.repo)
    for change in layout(prefix, repo):
        print(f"ament_layout: {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
