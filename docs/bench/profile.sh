#!/bin/bash
# Profile the default vswitch (release) during one iperf3 stream red->blue, then 4 streams.
# Run as root from the repository root after `cargo build --release -p switch`;
# needs iperf3 and perf. Output (perf data, iperf3 logs) goes to $OUT.
OUT=${OUT:-$(mktemp -d)}
echo "output in $OUT"
set -u
B=${VSWITCH:-target/release/vswitch}
$B run docs/bench/profile.toml --socket $OUT/s.sock > $OUT/vs.log 2>&1 &
VS=$!
for i in $(seq 1 100); do $B stats --socket $OUT/s.sock >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec prof-blue iperf3 -s -D -1 -p 5301 --logfile $OUT/srv1.log
sleep 0.5
ip netns exec prof-red iperf3 -c 192.168.15.2 -p 5301 -t 8 > $OUT/cli1.log 2>&1 &
sleep 2
perf record -o $OUT/p1.data -e cpu-clock -F 4000 -g -p $VS -- sleep 3 2>/dev/null
wait %2 2>/dev/null; sleep 1
ip netns exec prof-blue iperf3 -s -D -1 -p 5302 --logfile $OUT/srv4.log
sleep 0.5
ip netns exec prof-red iperf3 -c 192.168.15.2 -p 5302 -t 8 -P 4 > $OUT/cli4.log 2>&1 &
sleep 2
perf record -o $OUT/p4.data -e cpu-clock -F 4000 -g -p $VS -- sleep 3 2>/dev/null
wait
kill -TERM $VS; wait $VS
echo "reports: perf report -i $OUT/p1.data --no-children --sort dso,sym --stdio -g none (and p4.data)"
