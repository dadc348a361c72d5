#!/usr/bin/env bash
# Peer-evidence age under random packet loss on the shared latent topic (issue 13, item 4). Needs root, iproute2 and
# nftables. Two network namespaces joined by a veth pair; nftables drops LOSS % of the packets leaving and entering
# namespace A's end at random; one fusion node per namespace (scripts/measure_loss.py), DDS over UDP only.
# Usage: sudo scripts/measure_loss.sh [reliable|best_effort] [LOSS_PERCENT] [SECONDS]
set -euo pipefail
QOS=${1:-reliable}; LOSS=${2:-20}; SECS=${3:-40}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
A=m2vaeloss_a$$; B=m2vaeloss_b$$; VA=m2la$$; VB=m2lb$$
cleanup() { ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add "$VA" type veth peer name "$VB"
ip link set "$VA" netns "$A"; ip link set "$VB" netns "$B"
ip -n "$A" addr add 10.77.0.1/24 dev "$VA"; ip -n "$B" addr add 10.77.0.2/24 dev "$VB"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set "$VA" up multicast on; ip -n "$B" link set "$VB" up multicast on
ip -n "$A" route add 224.0.0.0/4 dev "$VA"; ip -n "$B" route add 224.0.0.0/4 dev "$VB"
if [ "$LOSS" != 0 ]; then
  ip netns exec "$A" nft -f - <<EOF
table inet m2vae_loss {
  chain out { type filter hook output priority 0; oifname "$VA" numgen random mod 100 < $LOSS drop; }
  chain in { type filter hook input priority 0; iifname "$VA" numgen random mod 100 < $LOSS drop; }
}
EOF
fi
PROFILE=$(mktemp --suffix=.xml)
cat > "$PROFILE" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com"><profiles>
  <transport_descriptors><transport_descriptor><transport_id>udp</transport_id><type>UDPv4</type>
  </transport_descriptor></transport_descriptors>
  <participant profile_name="udp_only" is_default_profile="true"><rtps>
    <userTransports><transport_id>udp</transport_id></userTransports>
    <useBuiltinTransports>false</useBuiltinTransports></rtps></participant>
</profiles></dds>
EOF
export FASTDDS_DEFAULT_PROFILES_FILE=$PROFILE ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
cd "$HERE"
ip netns exec "$B" "$PY" scripts/measure_loss.py --side b --qos "$QOS" --seconds "$((SECS + 10))" > /dev/null &
PB=$!
ip netns exec "$A" "$PY" scripts/measure_loss.py --side a --qos "$QOS" --seconds "$SECS"
wait "$PB" || true
rm -f "$PROFILE"
