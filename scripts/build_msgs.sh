#!/usr/bin/env bash
# Builds the m2vae_fusion_msgs interface package (ament_cmake, rosidl) into the venv, with the ROS 2 PyPI wheels.
# The wheels' exported CMake files name the Python of the machine that built them: repoint them at the venv first.
# Usage: VENV=.venv bash scripts/build_msgs.sh   (called by `make setup`; a no-op until m2vae_fusion_msgs/ exists)
set -euo pipefail
VENV=${VENV:-.venv}
PKG=m2vae_fusion_msgs
if [ ! -f "$PKG/package.xml" ]; then echo "build_msgs: no $PKG/package.xml, nothing to build"; exit 0; fi
VENV_ABS=$(cd "$VENV" && pwd)
PY="$VENV_ABS/bin/python"
PYINC=$("$PY" -c "import sysconfig;print(sysconfig.get_paths()['include'])")
NPINC=$("$PY" -c "import numpy;print(numpy.get_include())")
{ grep -rl /opt/python/cp311-cp311 "$VENV_ABS/share" --include='*.cmake' 2>/dev/null || true; } | xargs -r sed -i \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g"
export PATH="$VENV_ABS/bin:$PATH" CMAKE_PREFIX_PATH="$VENV_ABS" AMENT_PREFIX_PATH="$VENV_ABS"
mkdir -p build
BUILD="build/venv/$PKG"  # not build/$PKG: that is colcon's default build directory of a real ROS 2 workspace
cmake -S "$PKG" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV_ABS" -DPython3_EXECUTABLE="$PY" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF > "build/$PKG.cmake.log" 2>&1 \
  || { cat "build/$PKG.cmake.log"; echo "build_msgs: cmake configure of $PKG failed" >&2; exit 1; }
cmake --build "$BUILD" -j2 > "build/$PKG.build.log" 2>&1 \
  || { tail -50 "build/$PKG.build.log"; echo "build_msgs: build of $PKG failed" >&2; exit 1; }
cmake --install "$BUILD" > /dev/null
"$PY" -c "import m2vae_fusion_msgs.msg" && echo "build_msgs: $PKG installed into $VENV"
