#!/usr/bin/env python3
"""burst.py: ns per frame of the worker and the sender from burst.bt's output.

    python3 docs/latency/burst.py RUN.burst

The sender is gen.c (sendmmsg, 32 frames a call); the "whole run" line is
the generator's and the receiver's counts over the generator's whole run.
"""
import re
import sys

NAMES = {0: "read", 1: "write", 7: "poll", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
         47: "recvmsg", 202: "futex", 228: "clock_gettime", 232: "epoll_wait", 271: "ppoll",
         281: "epoll_pwait", 299: "recvmmsg", 307: "sendmmsg", 441: "epoll_pwait2"}

m = {}
for line in open(sys.argv[1]):
    g = re.match(r"# generator sent (\d+) frames in (\d+) s, the receiver got (\d+)", line)
    if g:
        print(f"whole run: offered {int(g.group(1)) / int(g.group(2)) / 1e3:.0f} kframes/s, "
              f"received {int(g.group(3)) / int(g.group(2)) / 1e3:.0f} kframes/s")
    g = re.match(r"@(\w+)(?:\[([\d, ]+)\])?: (\d+)", line)
    if g:
        key = tuple(int(x) for x in g.group(2).split(",")) if g.group(2) else ()
        m.setdefault(g.group(1), {})[key] = int(g.group(3))
wall = m["wall_ns"][()]
sys_ns, calls, ret = m.get("sys_ns", {}), m.get("sys_calls", {}), m.get("sys_ret", {})
sent = ret.get((1, 307), 0)
# Frames the worker forwarded in the window: what its sendmmsg calls returned,
# or with rings its sendto kicks' bytes / 60 (the generator's frame length, the
# vnet header not counted); for the kernel, what the sender sent (the bridge
# forwards all of it, see "whole run").
fwd = ret.get((0, 307)) or ret.get((0, 44), 0) // 60 or sent
print(f"window {wall / 1e9:.2f} s: sender {sent / wall * 1e9 / 1e3:.0f} kframes/s offered, "
      f"{fwd / wall * 1e9 / 1e3:.0f} kframes/s forwarded")

for role, who, per in [(0, "worker", fwd), (1, "sender", sent)]:
    if not per or not any(k[0] == role for k in sys_ns):
        continue
    ids = sorted({k[1] for k in sys_ns if k[0] == role}, key=lambda i: -sys_ns[(role, i)])
    in_sys = sum(sys_ns[(role, i)] for i in ids)
    off = m.get("off_ns", {}).get((role,), 0)
    print(f"\n{who}: ns per frame ({per} frames), {100 * (wall - off) / wall:.0f} % of the window on CPU;"
          f" slept {m.get('slept', {}).get((role,), 0)}x, preempted {m.get('preempted', {}).get((role,), 0)}x")
    print("| where | ns per frame | calls/s | per call µs | frames per call |")
    print("|---|---|---|---|---|")
    rest = sum(sys_ns[(role, i)] for i in ids if sys_ns[(role, i)] < 0.01 * wall)
    for i in ids:
        if sys_ns[(role, i)] < 0.01 * wall:
            continue
        c = calls[(role, i)]
        fr = ret.get((role, i), 0) / c if i in (299, 307) else None
        print(f"| {NAMES.get(i, i)} | {sys_ns[(role, i)] / per:.0f} | {c / wall * 1e9:.0f} | "
              f"{sys_ns[(role, i)] / c / 1e3:.2f} | {'' if fr is None else f'{fr:.1f}'} |")
    if rest:
        print(f"| other system calls | {rest / per:.0f} | | | |")
    print(f"| user space | {(wall - in_sys - off) / per:.0f} | | | |")
    print(f"| off CPU | {off / per:.0f} | | | |")
    print(f"| total | {wall / per:.0f} | | | |")
