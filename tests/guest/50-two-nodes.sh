#!/usr/bin/env bash
# The two-node topology the replication tests use: namespaces joined by veth, with link faults.
. "$(dirname "$0")/lib.sh"

check "nodes: bring up A and B" nodes_up
check "nodes: A reaches B" node_exec A ping -c 1 -W 2 $NODE_B_IP
check "nodes: B reaches A" node_exec B ping -c 1 -W 2 $NODE_A_IP
check_fails "nodes: B's address is not local to A" bash -c "ip netns exec wbrepl-a ip -o addr show | grep -q $NODE_B_IP"
check_fails "nodes: the root namespace is not on the link" ping -c 1 -W 1 $NODE_B_IP

# A TCP stream from A to B: 8 MiB, checksummed at both ends.
tcp_copy() {
  local port=$1 out=$IMG_DIR/received
  rm -f "$out"
  node_exec B python3 -c "
import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$NODE_B_IP', $port)); s.listen(1); s.settimeout(30)
c,_=s.accept(); c.settimeout(30)
with open('$out','wb') as f:
    while True:
        b=c.recv(1<<16)
        if not b: break
        f.write(b)
" &
  local srv=$!
  sleep 1
  node_exec A python3 -c "
import socket
c=socket.create_connection(('$NODE_B_IP', $port), timeout=10)
c.sendall(open('$IMG_DIR/payload','rb').read()); c.close()
" && wait $srv && cmp "$IMG_DIR/payload" "$out"
}
dd if=/dev/urandom of="$IMG_DIR/payload" bs=1M count=8 status=none
check "nodes: TCP A -> B, 8 MiB intact" tcp_copy 7789

check "link: add 50 ms delay on A" node_link A "delay 50ms"
rtt=$(node_exec A ping -c 3 -i 0.2 -W 2 $NODE_B_IP | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
check_match "link: RTT reflects the delay (avg ${rtt:-?} ms)" '^([5-9][0-9]|[1-9][0-9][0-9])(\.[0-9]+)?$' "${rtt:-none}"
check "link: 1% loss + reorder still delivers the stream" bash -c "$(declare -f node_link node_exec tcp_copy); NODE_B_IP=$NODE_B_IP IMG_DIR=$IMG_DIR; node_link A 'delay 5ms reorder 25% 50% loss 1%' && tcp_copy 7790"
check "link: cut (100% loss)" node_link A "loss 100%"
# A listener on B, a connection attempt from A: with the link cut it must time out (not be
# refused, which would mean packets still flow).
probe() {
  node_exec B python3 -c "
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$NODE_B_IP', 7791)); s.listen(1); s.settimeout(6)
try: s.accept()
except socket.timeout: pass" &
  sleep 1
  node_exec A python3 -c "
import socket,sys
try: socket.create_connection(('$NODE_B_IP', 7791), timeout=2); print('connected')
except socket.timeout: print('timeout'); sys.exit(1)"
  local rc=$?; wait; return $rc
}
out=$(probe)
check_eq "link: cut link carries nothing (TCP connect times out)" "timeout" "$out"
check_fails "link: cut link drops pings" node_exec A ping -c 2 -W 1 $NODE_B_IP
check "link: heal" node_link A ""
check "link: healed link works" node_exec A ping -c 1 -W 2 $NODE_B_IP
check_eq "link: healed link carries TCP" "connected" "$(probe)"
check "nodes: tear down" nodes_down
finish
