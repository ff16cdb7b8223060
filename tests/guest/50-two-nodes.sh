#!/usr/bin/env bash
# The two-node topology the replication tests use: namespaces joined by veth, with link faults.
. "$(dirname "$0")/lib.sh"

check "nodes: bring up A and B" nodes_up
check "nodes: A reaches B" node_exec A ping -c 1 -W 2 $NODE_B_IP
check "nodes: B reaches A" node_exec B ping -c 1 -W 2 $NODE_A_IP
check_fails "nodes: B's address is not local to A" bash -c "ip netns exec wbrepl-a ip -o addr show | grep -q $NODE_B_IP"
check_fails "nodes: the root namespace is not on the link" ping -c 1 -W 1 $NODE_B_IP

# A TCP stream from A to B: 8 MiB, compared at both ends.
tcp_copy() {
  node_listen B "$1" "$IMG_DIR/received" && node_connect A "$1" "$IMG_DIR/payload" >/dev/null &&
    wait && cmp "$IMG_DIR/payload" "$IMG_DIR/received"
}
dd if=/dev/urandom of="$IMG_DIR/payload" bs=1M count=8 status=none
check "nodes: TCP A -> B, 8 MiB intact" tcp_copy 7789

check "link: add 50 ms delay on A" node_link A "delay 50ms"
rtt=$(node_exec A ping -c 3 -i 0.2 -W 2 $NODE_B_IP | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
check_match "link: RTT reflects the delay (avg ${rtt:-?} ms)" '^([5-9][0-9]|[1-9][0-9][0-9])(\.[0-9]+)?$' "${rtt:-none}"
check "link: add 1% loss + reordering on A" node_link A "delay 5ms reorder 25% 50% loss 1%"
check "link: the lossy link still delivers the stream intact" tcp_copy 7790
check "link: cut (100% loss)" node_link A "loss 100%"
# A listener on B, a connection attempt from A: with the link cut it must time out (not be
# refused, which would mean packets still flow).
probe() {
  node_listen B "$1" "$IMG_DIR/probe" "$(scaled 6)" || return 1
  node_connect A "$1" "" 2
  wait
}
out=$(probe 7791)
check_eq "link: cut link carries nothing (TCP connect times out)" "timeout" "$out"
check_fails "link: cut link drops pings" node_exec A ping -c 2 -W 1 $NODE_B_IP
check "link: heal" node_link A ""
check "link: healed link works" node_exec A ping -c 1 -W 2 $NODE_B_IP
check_eq "link: healed link carries TCP" "connected" "$(probe 7794)"
check "nodes: tear down" nodes_down
finish
