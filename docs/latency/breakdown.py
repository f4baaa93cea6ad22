#!/usr/bin/env python3
"""breakdown.py: stage-by-stage latency of ping round trips from path.bt events.

    python3 docs/latency/breakdown.py RUN.raw [RUN.ping]... [--json]
    python3 docs/latency/breakdown.py --compare LABEL=PREFIX... [--summary]

RUN.raw is what docs/latency/path.bt printed (measure.sh writes it); RUN.ping
is ping's output, whose own RTT percentiles are printed next to the trace's.
Several runs are pooled. --compare prints one column per LABEL (p50 per
stage) from the files PREFIX*.raw / PREFIX*.ping, and ping's own figures from
PREFIX-untraced*.ping; with --summary, the request's stages grouped (wake-up,
system calls, pipeline, send) as the median (mean) of each round trip's sum.
Each stage is the time from the previous event present in that round trip to
this one, so the stages of one round trip add up to its total. A stage that
did not happen (no wake-up while the worker polls) counts as absent and the
next stage absorbs nothing extra. Prints a markdown table: per stage the
median, the 90th percentile and in how many round trips it occurred.
"""
import json
import sys

# (phase, event, stage name); the order is the order along the path.
STAGES = [
    (1, "B", "sender's veth → switch-side port receives (backlog softirq, in ping's context)"),
    (1, "Wk", "port receives → worker woken (packet_rcv, sk_data_ready, ep_poll_callback)"),
    (1, "X", "woken → worker's vCPU leaves idle (IPI, HLT exit)"),
    (1, "Wr", "→ worker on CPU (scheduler)"),
    (1, "Ep", "→ epoll_wait returns"),
    (1, "Rx", "→ recvmmsg returns (rings: no call, the slot is read in the next stage)"),
    (1, "Sx", "pipeline: → sendmmsg entered (user space; rings: read the RX slot, pipeline, fill TX slots, → sendto kick)"),
    (1, "I", "switch transmits: send call → veth_xmit to the receiver (kernel: bridge forwarding)"),
    (1, "J", "→ receiver's netif_receive_skb"),
    (2, "A", "receiver's stack: request in → reply queued (icmp_rcv, icmp_reply)"),
    (2, "B", "receiver's veth → switch-side port receives"),
    (2, "Sy", "→ the request's send call returns (the reply came in during it)"),
    (2, "Wk", "→ worker woken"),
    (2, "X", "woken → worker's vCPU leaves idle"),
    (2, "Wr", "→ worker on CPU"),
    (2, "Ep", "→ epoll_wait returns"),
    (2, "Rx", "→ recvmmsg returns"),
    (2, "Sx", "pipeline"),
    (2, "I", "switch transmits: → veth_xmit to the sender (kernel: bridge forwarding)"),
    (2, "J", "→ sender's netif_receive_skb (the time ping reports)"),
    (2, "Pk", "→ ping woken"),
    (2, "PX", "woken → ping's vCPU leaves idle"),
    (2, "Pr", "→ ping on CPU"),
    (2, "E", "→ ping's recvmsg returns"),
]


LABELS = {1: "A", 2: "B", 3: "I", 4: "J", 5: "Wk", 6: "Pk", 7: "Wr", 8: "Ws", 9: "Pr",
          10: "X", 11: "Ep", 12: "Rx", 13: "Sx", 14: "Sy", 15: "E", 31: "T"}


def records(path):
    """Round trips from path.bt's map dump: lists of (phase, label, ns, cpu) that reached E."""
    ev = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("@ev["):
                continue
            key, val = line[4:].split("]:")
            n, k = (int(x) for x in key.split(","))
            v = int(val)
            ev.setdefault(n, {})[k] = ((v >> 5) & 1) + 1, LABELS.get(v & 31, "?"), v >> 12, (v >> 6) & 63
    for n in sorted(ev):
        rec = [ev[n][k] for k in sorted(ev[n])]
        if any(e[1] == "E" for e in rec) and not any(e[1] == "T" for e in rec):
            yield rec


def pick(rec):
    """The first occurrence of each stage's event, in path order and time order."""
    got = {}
    t = 0
    for phase, name, _ in STAGES:
        if name in ("X", "PX"):
            continue
        for p, n, ts, cpu in rec:
            if p == phase and n == name and ts >= t:
                got[(phase, name)] = (ts, cpu)
                t = ts
                break
    # Idle exits: on the CPU the woken task then runs on, between waking and running.
    for phase, wk, wr, x in [(1, "Wk", "Wr", "X"), (2, "Wk", "Wr", "X"), (2, "Pk", "Pr", "PX")]:
        if (phase, wk) in got and (phase, wr) in got:
            t0, t1, cpu = got[(phase, wk)][0], got[(phase, wr)][0], got[(phase, wr)][1]
            for p, n, ts, c in rec:
                if p == phase and n == "X" and c == cpu and t0 <= ts <= t1:
                    got[(phase, x)] = (ts, c)
                    break
    return got


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * q))] if v else float("nan")


def ping_times(path):
    out = []
    with open(path) as f:
        for line in f:
            if "time=" in line:
                out.append(float(line.split("time=")[1].split()[0]) * 1000)
    return out


def analyse(raws, pings):
    """Stage and total percentiles over the round trips of several runs."""
    recs = [pick(r) for f in raws for r in records(f)]
    recs = [r for r in recs if (1, "J") in r and (2, "J") in r]
    order = [(p, n) for p, n, _ in STAGES]
    stages = {k: [] for k in order}
    totals = {k: [] for k in TOTALS}
    for r in recs:
        prev = 0
        for k in order:
            if k in r:
                stages[k].append(r[k][0] - prev)
                prev = r[k][0]
        totals[TOTALS[0]].append(r[(1, "J")][0])
        if (2, "A") in r:
            totals[TOTALS[1]].append(r[(2, "J")][0] - r[(2, "A")][0])
        totals[TOTALS[2]].append(r[(2, "J")][0])
        if (2, "E") in r:
            totals[TOTALS[3]].append(r[(2, "E")][0])
    # The worker's wake-up itself (sched_waking -> on CPU), split by where it
    # runs: the waker's own vCPU (it runs once the waker blocks), the other
    # vCPU while halted (an idle exit in between), or the other vCPU while it
    # runs something else.
    wake = {"same": [], "halted": [], "busy": []}
    for r in recs:
        for ph in (1, 2):
            if (ph, "Wk") in r and (ph, "Wr") in r:
                d = r[(ph, "Wr")][0] - r[(ph, "Wk")][0]
                k = "same" if r[(ph, "Wk")][1] == r[(ph, "Wr")][1] else "halted" if (ph, "X") in r else "busy"
                wake[k].append(d)
    groups = {g: [] for g, _ in GROUPS}
    seen = {g: 0 for g, _ in GROUPS}
    for r in recs:
        prev, d = 0, {}
        for k in order:
            if k in r:
                d[k] = r[k][0] - prev
                prev = r[k][0]
        for g, ks in GROUPS:
            groups[g].append(sum(d.get(k, 0) for k in ks))
            seen[g] += any(k in d for k in ks)
    n = len(recs)
    pt = [t for f in pings for t in ping_times(f)]
    return {
        "round_trips": n,
        "stages": {f"{p} {name}": {"desc": d, "p50_us": pct(stages[(p, name)], 0.5) / 1000,
                                   "p90_us": pct(stages[(p, name)], 0.9) / 1000,
                                   "share": len(stages[(p, name)]) / max(n, 1)}
                   for p, name, d in STAGES if stages[(p, name)]},
        "totals": {k: {"p50_us": pct(v, 0.5) / 1000, "p90_us": pct(v, 0.9) / 1000}
                   for k, v in totals.items() if v},
        "ping_p50_us": pct(pt, 0.5), "ping_p99_us": pct(pt, 0.99), "pings": len(pt),
        "groups": {g: {"p50_us": pct(v, 0.5) / 1000, "p90_us": pct(v, 0.9) / 1000,
                       "mean_us": sum(v) / max(len(v), 1) / 1000, "share": seen[g] / max(n, 1)}
                   for g, v in groups.items()},
        "wake": {k: {"n": len(v), "p50_us": pct(v, 0.5) / 1000, "p90_us": pct(v, 0.9) / 1000}
                 for k, v in wake.items()},
    }


# The request's stages grouped as the issue names them (--summary).
GROUPS = [
    ("sender → switch-side port receives", [(1, "B")]),
    ("wake-up: signal, idle exit, scheduler", [(1, "Wk"), (1, "X"), (1, "Wr")]),
    ("epoll_wait returns", [(1, "Ep")]),
    ("receive system call (recvmmsg; rings: none)", [(1, "Rx")]),
    ("pipeline (rings: + RX slot read, TX slot fill)", [(1, "Sx")]),
    ("send: → veth_xmit (kernel: bridge forwarding)", [(1, "I")]),
    ("→ receiver's netif_receive_skb", [(1, "J")]),
]


TOTALS = ["one-way request (sender queued → receiver has it)", "one-way reply",
          "network RTT (ping's figure)", "RTT until ping's recvmsg returns"]


def single(a):
    print(f"{a['round_trips']} round trips traced; ping itself: p50 {a['ping_p50_us']:.0f} µs, "
          f"p99 {a['ping_p99_us']:.0f} µs over {a['pings']}")
    print("| | stage | p50 µs | p90 µs | in % of round trips |")
    print("|---|---|---|---|---|")
    for k, r in a["stages"].items():
        ph = "request" if k.startswith("1") else "reply"
        print(f"| {ph} | {r['desc']} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | {100 * r['share']:.0f} |")
    for k, t in a["totals"].items():
        print(f"| total | {k} | {t['p50_us']:.1f} | {t['p90_us']:.1f} | |")


def compare(cols):
    """Side by side: p50 µs per stage (with the share of round trips if < 95 %)."""
    print("| | stage | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for p, name, d in STAGES:
        k = f"{p} {name}"
        if not any(k in a["stages"] for _, a in cols):
            continue
        cells = []
        for _, a in cols:
            r = a["stages"].get(k)
            if r is None:
                cells.append("—")
            else:
                cells.append(f"{r['p50_us']:.1f}" + (f" ({100 * r['share']:.0f} %)" if r["share"] < 0.95 else ""))
        print(f"| {'request' if p == 1 else 'reply'} | {d} | " + " | ".join(cells) + " |")
    for k in TOTALS:
        print(f"| **total** | **{k}** | " + " | ".join(
            f"**{a['totals'][k]['p50_us']:.1f}** (p90 {a['totals'][k]['p90_us']:.0f})" if k in a["totals"] else "—"
            for _, a in cols) + " |")
    print("| untraced | ping's own RTT p50 / p99 (separate run, no probes) | " + " | ".join(
        f"{a['untraced_p50']:.0f} / {a['untraced_p99']:.0f}" if a.get("untraced_p50") == a.get("untraced_p50") and "untraced_p50" in a else "—"
        for _, a in cols) + " |")
    for k, what in [("same", "worker wake-up on the waker's vCPU: waking → on CPU, p50 / p90 (count)"),
                    ("halted", "worker wake-up on the other vCPU, halted: waking → on CPU, p50 / p90 (count)"),
                    ("busy", "worker wake-up on the other vCPU, running another task: p50 / p90 (count)")]:
        print(f"| wake-up | {what} | " + " | ".join(
            f"{a['wake'][k]['p50_us']:.1f} / {a['wake'][k]['p90_us']:.0f} ({a['wake'][k]['n']})" if a["wake"][k]["n"] else "—"
            for _, a in cols) + " |")
    print("| | round trips traced | " + " | ".join(str(a["round_trips"]) for _, a in cols) + " |")


def summary(cols):
    """The request path grouped by stage: p50 (mean) µs per column; a round trip
    without a stage counts 0 for it."""
    print("| one-way, sender queued → receiver has it | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for g, _ in GROUPS:
        print(f"| {g} | " + " | ".join(
            f"{a['groups'][g]['p50_us']:.1f} ({a['groups'][g]['mean_us']:.1f})" if a["groups"][g]["share"] else "—"
            for _, a in cols) + " |")
    k = TOTALS[0]
    print("| **total, p50 (p90)** | " + " | ".join(
        f"**{a['totals'][k]['p50_us']:.1f}** ({a['totals'][k]['p90_us']:.0f})" for _, a in cols) + " |")
    k = TOTALS[2]
    print("| network RTT (ping's figure), p50 (p90) | " + " | ".join(
        f"{a['totals'][k]['p50_us']:.1f} ({a['totals'][k]['p90_us']:.0f})" for _, a in cols) + " |")
    print("| untraced ping RTT p50 / p99 | " + " | ".join(
        f"{a['untraced_p50']:.0f} / {a['untraced_p99']:.0f}" if "untraced_p50" in a else "—" for _, a in cols) + " |")


def main():
    """breakdown.py RUN.raw [RUN.ping]...: one table; --compare LABEL=PREFIX...: side by side,
    where PREFIX* matches runs' .raw/.ping files and PREFIX-untraced* the untraced runs."""
    import glob
    if "--compare" in sys.argv:
        cols = []
        for arg in [a for a in sys.argv[sys.argv.index("--compare") + 1:] if not a.startswith("--")]:
            label, prefix = arg.split("=", 1)
            files = [f for f in sorted(glob.glob(prefix + "*")) if "-untraced" not in f]
            a = analyse([f for f in files if f.endswith(".raw")], [f for f in files if f.endswith(".ping")])
            un = [t for f in sorted(glob.glob(prefix + "-untraced*.ping")) for t in ping_times(f)]
            if un:
                a["untraced_p50"], a["untraced_p99"] = pct(un, 0.5), pct(un, 0.99)
            cols.append((label, a))
        (summary if "--summary" in sys.argv else compare)(cols)
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    a = analyse([f for f in args if f.endswith(".raw")], [f for f in args if f.endswith(".ping")])
    if "--json" in sys.argv:
        print(json.dumps(a))
    else:
        single(a)


if __name__ == "__main__":
    main()
