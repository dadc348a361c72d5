#!/usr/bin/env bash
# Benchmark extra data (issue 11 (c), `m2vae-fusion bench baselines --sets emnist`): Fashion-MNIST from the Debian
# package dataset-fashion-mnist (70,000 real 28x28 images, MIT licence) into /usr/share/datasets/fashion-mnist.
# The 8x8 digits come with scikit-learn. Idempotent: does nothing when the files are there. Never part of the robot
# install. Usage: bash scripts/install_bench_data.sh   (as root, or with sudo in front)
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
have_all() { for f in "${FILES[@]}"; do [[ -f "$DIR/$f" ]] || return 1; done; }
if have_all; then
    echo "Fashion-MNIST already installed in $DIR"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_bench_data: apt-get not found; on a non-Debian system put the four Fashion-MNIST files" >&2
    echo "  (${FILES[*]}) in a directory and pass it with --emnist-data DIR" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install_bench_data: needs root to run apt-get: sudo bash scripts/install_bench_data.sh" >&2
    echo "  (or install the Debian package dataset-fashion-mnist yourself; or pass --emnist-data DIR)" >&2
    exit 1
fi
if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
    apt-get update
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist
have_all || { echo "install_bench_data: dataset-fashion-mnist installed but $DIR is incomplete" >&2; exit 1; }
echo "Fashion-MNIST installed in $DIR"
