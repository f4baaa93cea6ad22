#!/usr/bin/env bash
# run-all.sh: the runs behind docs/latency.md, interleaved by round, then the tables.
#
#   docs/latency/run-all.sh DIR [ROUNDS] [VARIANT...]
#
# VARIANT: `kernel` (the bridge twin) or LABEL:BINARY[:LINE], vswitch BINARY with
# LINE added to [switch] (e.g. `busy50ms:/tmp/vswitch:busy_poll_us = 50000`).
# Per round and variant: 200 pings at 5 ms (98-byte frames, traced), 200 pings
# -s 18 at 5 ms (60-byte frames: one 64-byte frame each way, traced), the same
# two untraced (what the probes cost), 30 pings at 100 ms (traced: traffic
# sparser than any polling window); then one 2 s burst of 64-byte frames per
# variant. Everything lands in DIR; the tables go to stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: run-all.sh DIR [ROUNDS] [VARIANT...]}
rounds=${2:-2}
shift $(($# < 2 ? $# : 2))
variants=("$@")
[ ${#variants[@]} = 0 ] && { sed -n '2,15p' "$0" >&2; exit 2; }
mkdir -p "$dir"
# Sets A (measure.sh arguments) and B (the vswitch binary) for a variant.
args_of() {
	case $1 in
	kernel) A=(-k) B= ;;
	*:*:*) B=${1#*:} A=(-x "${B#*:}") B=${B%%:*} ;;
	*:*) A=() B=${1#*:} ;;
	*) echo "bad variant $1" >&2; exit 2 ;;
	esac
}
label_of() { echo "${1%%:*}"; }
m() { VSWITCH=${B:-none} "$here/measure.sh" "$@" >/dev/null; }
for r in $(seq "$rounds"); do
	for v in "${variants[@]}"; do
		args_of "$v"; l=$(label_of "$v")
		echo "round $r: $l" >&2
		m "${A[@]}" -o "$dir/$l-ping-r$r"
		m "${A[@]}" -s 18 -o "$dir/$l-f64-r$r"
		m "${A[@]}" -n -o "$dir/$l-ping-untraced-r$r"
		m "${A[@]}" -s 18 -n -o "$dir/$l-f64-untraced-r$r"
		m "${A[@]}" -i 0.1 -c 30 -o "$dir/$l-sparse-r$r"
	done
done
for v in "${variants[@]}"; do
	args_of "$v"; l=$(label_of "$v")
	echo "burst: $l" >&2
	VSWITCH=${B:-none} "$here/measure.sh" "${A[@]}" -b 2 -o "$dir/$l-burst" >"$dir/$l-burst.txt"
done
grep -h '^#' "$dir"/*.raw "$dir"/*.burst | grep idle-before >"$dir/conditions.txt"
for kind in ping f64 sparse; do
	echo
	echo "## $kind"
	cols=()
	for v in "${variants[@]}"; do l=$(label_of "$v"); cols+=("$l=$dir/$l-$kind"); done
	python3 "$here/breakdown.py" --compare "${cols[@]}" --summary
	echo
	python3 "$here/breakdown.py" --compare "${cols[@]}"
done
for v in "${variants[@]}"; do
	l=$(label_of "$v")
	echo
	echo "## burst: $l"
	cat "$dir/$l-burst.txt"
done
