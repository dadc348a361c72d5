#!/usr/bin/env bash
# Install what `m2vae-fusion bench reliability` needs for its packet-loss part (two network namespaces joined by a
# veth pair, random drop with nftables): the `nft` and `ip` commands, from the distribution's packages (Debian:
# nftables, iproute2), only where they are missing. Needs root (network namespaces need it anyway).
# Exit status: 0 when both commands are there afterwards, 1 when they are missing and cannot be installed.
set -euo pipefail

missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_netns_deps: nft and ip are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_netns_deps: ${missing[*]} missing and not root: run as root, or install them with your package manager" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_netns_deps: ${missing[*]} missing and no apt-get here: install them with your package manager" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends "${missing[@]}"
}
command -v nft >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || {
    echo "install_netns_deps: installing ${missing[*]} did not provide nft and ip" >&2
    exit 1
}
echo "install_netns_deps: installed ${missing[*]}"
