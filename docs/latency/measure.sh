#!/usr/bin/env bash
# measure.sh: trace ping round trips red -> blue through vswitch or through the
# kernel bridge, on a private two-namespace topology built for this run and
# removed afterwards (also on Ctrl-C or failure).
#
#   docs/latency/measure.sh [-k] [-s SIZE] [-i INTERVAL] [-c COUNT] [-o OUT] [-x 'KEY = VALUE']...
#
#   -k            the kernel bridge twin (bridge + two veths) instead of vswitch
#   -s SIZE       ping payload (default 56: 98-byte frames; 18: 60-byte frames, 64 with FCS)
#   -i INTERVAL   ping interval in s (default 0.005, as the e2e benchmark)
#   -c COUNT      pings (default 200)
#   -o OUT        output prefix (default /tmp/lat-ID): OUT.raw (events), OUT.ping
#   -x LINE       an extra [switch] line for vswitch, e.g. -x 'busy_poll_us = 50000'
#   -n            no tracing: only ping's own figures (to see what the probes cost)
#   -b SECS       burst instead: 64-byte frames from red's AF_PACKET socket (gen.c, 32 per
#                 sendmmsg) for SECS + 1 s; burst.bt traces its first SECS (burst.py)
#
# PING_CPU=N pins ping to CPU N (with -x 'cpu = M' the worker is pinned too).
# Needs root, bpftrace, ping, ip, cc, python3 and tracefs mounted at
# /sys/kernel/tracing; VSWITCH (default target/release/vswitch).
# The machine may be shared: it first waits (QUIET_WAIT s at most, default 120)
# for a second with both CPUs >= QUIET % idle (default 85) and records it.
# Prints the stage breakdown (docs/latency/breakdown.py) at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
VSWITCH=${VSWITCH:-$root/target/release/vswitch}
kernel=0 size=56 interval=0.005 count=200 out= trace=1 burst=0
extra=()
while getopts "ks:i:c:o:x:nb:" o; do
	case $o in
	k) kernel=1 ;;
	s) size=$OPTARG ;;
	i) interval=$OPTARG ;;
	c) count=$OPTARG ;;
	o) out=$OPTARG ;;
	x) extra+=("$OPTARG") ;;
	n) trace=0 ;;
	b) burst=$OPTARG ;;
	*) sed -n '2,23p' "$0" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "measure.sh: needs root" >&2; exit 2; }
for p in ip ping bpftrace cc python3; do
	command -v "$p" >/dev/null || { echo "measure.sh: $p missing (apt-get install iproute2 iputils-ping bpftrace gcc python3)" >&2; exit 2; }
done
if [ $trace = 1 ] || [ "$burst" != 0 ]; then
	[ -e /sys/kernel/tracing/events/net ] ||
		{ echo "measure.sh: tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)" >&2; exit 2; }
fi
id=$(printf '%04x' $((RANDOM % 65536)))
out=${out:-/tmp/lat-$id}
len=$((size + 42))
tmp=$(mktemp -d /tmp/lat-$id.XXXX)
pid= bpid= gpid=
t=$([ $kernel = 1 ] && echo k || echo v)
red=l$id${t}r blue=l$id${t}b sw=l$id${t}s wan=l$id${t}w
red_if=$red red_br=${red}x blue_if=$blue blue_br=${blue}x

cleanup() {
	set +e
	[ -n "$bpid" ] && kill -INT "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null
	[ -n "$gpid" ] && kill -TERM "$gpid" 2>/dev/null && wait "$gpid" 2>/dev/null
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
	fi
	for ns in "$red" "$blue" "$sw" "$wan"; do
		ip netns list | grep -qw "^$ns" && ip netns del "$ns"
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ $kernel = 1 ]; then
	# The kernel reference as benches/src/bin/e2e.rs builds it (the L2 part).
	for ns in "$red" "$blue" "$sw"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
	ip -n "$sw" link add v-net-0 type bridge
	ip -n "$sw" link set v-net-0 up
	ip -n "$sw" addr add 192.168.15.5/24 dev v-net-0
	for x in "$red:192.168.15.1" "$blue:192.168.15.2"; do
		ns=${x%%:*} ip4=${x#*:}
		ip -n "$sw" link add "${ns}x" type veth peer name "$ns" netns "$ns"
		ip -n "$sw" link set "${ns}x" master v-net-0 up
		ip -n "$ns" addr add "$ip4/24" dev "$ns"
		ip -n "$ns" link set "$ns" up
		ip -n "$ns" route add default via 192.168.15.5
	done
	wtid=0
else
	# The e2e benchmark's vswitch topology (switch namespace, gateway, uplink, NAT).
	{
		printf 'name = "lat%s"\n[switch]\nnetns = "%s"\n' "$id" "$sw"
		for l in "${extra[@]}"; do printf '%s\n' "$l"; done
		for x in "$red:192.168.15.1" "$blue:192.168.15.2"; do
			ns=${x%%:*} ip4=${x#*:}
			printf '[[namespace]]\nname = "%s"\naddress = "%s/24"\ngateway = "192.168.15.5"\nifname = "%s"\nswitch_ifname = "%sx"\n' \
				"$ns" "$ip4" "$ns" "$ns"
		done
		printf '[gateway]\naddress = "192.168.15.5/24"\n[uplink]\nnetns = "%s"\naddress = "203.0.113.1/24"\n' "$wan"
		printf 'peer_addresses = ["203.0.113.10/24"]\nifname = "%s"\nswitch_ifname = "%sx"\n' "$wan" "$wan"
		printf '[[masquerade]]\nsource = "192.168.15.0/24"\n[nat]\nnew_flows_per_host = 0\n'
	} >"$tmp/topo.toml"
	"$VSWITCH" run "$tmp/topo.toml" --socket "$tmp/sock" --state-file "$tmp/state" \
		--save-interval 0 >"$tmp/log" 2>&1 &
	pid=$!
	for _ in $(seq 300); do
		"$VSWITCH" stats --socket "$tmp/sock" >/dev/null 2>&1 && break
		kill -0 "$pid" 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
		sleep 0.1
	done
	"$VSWITCH" stats --socket "$tmp/sock" >/dev/null 2>&1 || { echo "measure.sh: vswitch did not answer within 30 s" >&2; cat "$tmp/log" >&2; exit 1; }
	wtid=$pid # the worker runs on the main thread (daemon::run -> Worker::run)
fi

# The machine is shared: wait (at most QUIET_WAIT s, default 120) for a second
# in which both CPUs are >= QUIET % idle (default 85), and record what was found.
idle_pct() {
	local a b
	a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
	local tot=0 i
	for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
	echo $(((b[4] - a[4]) * 100 / (tot ? tot : 1)))
}
idle=0
for _ in $(seq "${QUIET_WAIT:-120}"); do idle=$(idle_pct); [ "$idle" -ge "${QUIET:-85}" ] && break; done

# Warm up: ARP learnt on both sides, FDB populated.
ip netns exec "$red" ping -q -c 3 -i 0.05 -W 1 192.168.15.2 >/dev/null
if [ "$burst" != 0 ]; then
	echo "# $(date -u +%FT%TZ) $([ $kernel = 1 ] && echo kernel || echo "vswitch ${extra[*]:-}") burst=$burst idle-before=$idle% loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" >"$out.burst"
	mac=$(ip netns exec "$blue" cat "/sys/class/net/$blue_if/address")
	cc -O2 -o "$tmp/lat-gen" "$here/gen.c"
	BPFTRACE_MAP_KEYS_MAX=65536 bpftrace "$here/burst.bt" "$wtid" "$burst" >>"$out.burst" 2>"$tmp/bt.err" &
	bpid=$!
	for _ in $(seq 300); do grep -q '^# tracing' "$out.burst" && break; kill -0 "$bpid" 2>/dev/null || { cat "$tmp/bt.err" >&2; exit 1; }; sleep 0.1; done
	rx0=$(ip netns exec "$blue" cat "/sys/class/net/$blue_if/statistics/rx_packets")
	ip netns exec "$red" "$tmp/lat-gen" "$red_if" "$mac" $((burst + 1)) >"$tmp/gen.out" &
	gpid=$!
	wait "$bpid"; bpid=
	wait "$gpid"; gpid=
	sleep 0.2
	rx1=$(ip netns exec "$blue" cat "/sys/class/net/$blue_if/statistics/rx_packets")
	echo "# generator sent $(cat "$tmp/gen.out") frames in $((burst + 1)) s, the receiver got $((rx1 - rx0))" >>"$out.burst"
	[ -n "$pid" ] && { "$VSWITCH" stats --socket "$tmp/sock" >"$out.stats" 2>&1 || true; }
	python3 "$here/burst.py" "$out.burst"
	exit 0
fi
echo "# $(date -u +%FT%TZ) $([ $kernel = 1 ] && echo kernel || echo "vswitch ${extra[*]:-}") size=$size interval=$interval count=$count idle-before=$idle% loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" >"$out.raw"
if [ $trace = 1 ]; then
	BPFTRACE_MAP_KEYS_MAX=65536 bpftrace "$here/path.bt" "$red_if" "$red_br" "$blue_br" "$blue_if" "$wtid" "$len" >>"$out.raw" 2>"$tmp/bt.err" &
	bpid=$!
	for _ in $(seq 300); do grep -q '^# tracing' "$out.raw" && break; kill -0 "$bpid" 2>/dev/null || { cat "$tmp/bt.err" >&2; exit 1; }; sleep 0.1; done
fi
pin=()
[ -n "${PING_CPU:-}" ] && pin=(taskset -c "$PING_CPU")
ip netns exec "$red" "${pin[@]}" ping -i "$interval" -c "$count" -s "$size" -W 1 192.168.15.2 >"$out.ping"
if [ -n "$bpid" ]; then kill -INT "$bpid"; wait "$bpid" || true; bpid=; fi
if [ -n "$pid" ]; then
	"$VSWITCH" stats --socket "$tmp/sock" >"$out.stats" 2>&1 || true
fi
tail -2 "$out.ping"; [ $trace = 1 ] || exit 0
python3 "$here/breakdown.py" "$out.raw" "$out.ping"
