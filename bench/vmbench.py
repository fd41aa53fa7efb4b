"""Shared by the sandbox throughput benches (blk.py, net.py): printing cella-vmm against QEMU."""

import statistics


def log(msg=""):
    print(msg, flush=True)


def report_vs_qemu(rates, runs_word):
    """rates: {"cella-vmm"|"qemu": {round: MiB/s}}. Prints each side's median and range, then the
    ratio of medians against the >= 1.00x target and the median of per-round ratios."""
    for label in ("cella-vmm", "qemu"):
        xs = list(rates.get(label, {}).values())
        if xs:
            log(f"  {label:<10} {statistics.median(xs):8.1f} MiB/s  (min {min(xs):.1f}, max {max(xs):.1f}, "
                f"{len(xs)} {runs_word})")
    c, q = rates.get("cella-vmm", {}), rates.get("qemu", {})
    if c and q:
        ratio = statistics.median(c.values()) / statistics.median(q.values())
        per_round = [c[i] / q[i] for i in c if i in q]
        log(f"  cella-vmm/qemu: {ratio:.2f}x [target >= 1.00x: {'MET' if ratio >= 1 else 'NOT MET'}]; "
            f"median of per-round ratios {statistics.median(per_round):.2f}x")
