#!/usr/bin/env python3
"""The report of bench/run.sh --million: bench/results/<time>-million.json,
a table and the target checks.

Inputs, in the run's work directory (see bench/lib/million.sh):
  meta.tsv, scenarios.tsv  as for report.py; scenarios are named
                           small_<name> and million_<name>
  slices.tsv               the purge phase's 1 s slices: number, start and end
                           (µs since the epoch), the /users/me and the
                           refresh wrk outputs (with BENCH_QUANTILES=1)
  purge_done.json          the server's log line ending the first purge
Exit status: 0 for a valid run, 1 if any request failed.
"""

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import exit_status, failures_of, read_meta, read_wrk, scenario  # noqa: E402

COMPARED = [
    ("healthz", "GET /healthz (control)", False),
    ("me", "GET /users/me", True),
    ("login", "POST /auth/login", True),
    ("refresh", "POST /auth/refresh (chains)", True),
    ("admin_q", "GET /admin/users?q=<prefix>", True),
    ("admin_role", "GET /admin/users?role=admin", True),
]
RATIO_TARGET = 1.5
PURGE_P99_TARGET_MS = 20.0


def iso_to_us(text):
    t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(t.timestamp() * 1_000_000)


def merged_percentile(results, pct):
    """The pct-th percentile of the union of several wrk runs' requests,
    from each run's latency at every 0.1 percent, in ms."""
    points = []
    for r in results:
        q = r.get("quantiles_us") or []
        if not q or not r["requests"]:
            continue
        weight = r["requests"] / len(q)
        points += [(v, weight) for v in q]
    if not points:
        return None
    points.sort()
    total = sum(w for _, w in points)
    seen = 0.0
    for v, w in points:
        seen += w
        if seen >= total * pct / 100:
            return round(v / 1000, 3)
    return round(points[-1][0] / 1000, 3)


def slice_failures(kind, i, r):
    out = []
    bad = {k: v for k, v in r["statuses"].items() if not k.startswith("2")}
    if bad:
        out.append(f"purge slice {i} {kind}: non-2xx responses {bad}")
    errs = {k: v for k, v in r["errors"].items() if k != "status" and v}
    if errs:
        out.append(f"purge slice {i} {kind}: socket errors/timeouts {errs}")
    for k, v in r["counters"].items():
        out.append(f"purge slice {i} {kind}: {k} x{v}")
    return out


def purge_report(work, meta, failures):
    p = meta.get("purge", {})
    started = p.get("server_started_us")
    ready = p.get("server_ready_us")
    interval = p.get("interval_s")
    out = {"interval_s": interval, "stopped": p.get("stopped"), "rows_left": p.get("rows_left")}
    try:
        with open(os.path.join(work, "purge_done.json")) as f:
            done = json.loads(f.readline())
    except (OSError, ValueError):
        done = None
    start_us = started + interval * 1_000_000 if started and interval else None
    end_us = iso_to_us(done["timestamp"]) if done else None
    if done:
        out["rows"] = done.get("rows")
    if start_us and end_us:
        out["seconds"] = round((end_us - start_us) / 1e6, 2)
        # The purge task's clock starts between the process start and its
        # first answer: the start is known to within that time.
        out["start_uncertainty_ms"] = round((ready - started) / 1000, 1) if ready else None
    slices = {"before": {"me": [], "refresh": []}, "during": {"me": [], "refresh": []},
              "after": {"me": [], "refresh": []}}
    per_slice = []
    path = os.path.join(work, "slices.tsv")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for i, s0, s1, me_out, refresh_out in rows:
        s0, s1 = int(s0), int(s1)
        if start_us is None:
            phase = "before"
        else:
            end = end_us if end_us else float("inf")
            overlap = max(0, min(s1, end) - max(s0, start_us))
            # Mostly inside the purge, or holding most of a short one.
            if overlap >= (s1 - s0) / 2 or overlap >= (end - start_us) / 2:
                phase = "during"
            elif s1 <= start_us + (s1 - s0) / 2:
                phase = "before"
            else:
                phase = "after"
        entry = {"slice": int(i), "phase": phase,
                 "offset_s": round((s0 - start_us) / 1e6, 2) if start_us else None}
        for kind, out_path in (("me", me_out), ("refresh", refresh_out)):
            r, error = read_wrk(out_path)
            if r is None:
                failures.append(f"purge slice {i} {kind}: {error}")
                continue
            failures.extend(slice_failures(kind, i, r))
            slices[phase][kind].append(r)
            entry[f"{kind}_requests"] = r["requests"]
            entry[f"{kind}_p99_ms"] = round(r["latency_us"]["p99"] / 1000, 3)
        per_slice.append(entry)
    out["slices"] = per_slice
    for phase, kinds in slices.items():
        for kind, results in kinds.items():
            secs = sum(r["duration_us"] for r in results) / 1e6
            out[f"{phase}_{kind}"] = {
                "slices": len(results),
                "requests": sum(r["requests"] for r in results),
                "rps": round(sum(r["requests"] for r in results) / secs, 1) if secs else None,
                "p50_ms": merged_percentile(results, 50),
                "p99_ms": merged_percentile(results, 99),
                "worst_slice_p99_ms": max((round(r["latency_us"]["p99"] / 1000, 3)
                                           for r in results), default=None),
            }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    meta = read_meta(os.path.join(a.work, "meta.tsv"))
    with open(os.path.join(a.work, "scenarios.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    scenarios = {r[0]: scenario(r, meta.get("clk_tck", 100)) for r in rows}
    failures = []
    for s in scenarios.values():
        failures += failures_of(s)
    if meta.get("failures_list"):
        failures += meta["failures_list"].split("|")

    comparison = []
    for name, label, target in COMPARED:
        small = scenarios.get(f"small_{name}", {})
        big = scenarios.get(f"million_{name}", {})
        sp, bp = small.get("p99_ms"), big.get("p99_ms")
        ratio = round(bp / sp, 3) if sp and bp is not None else None
        verdict = "n/a" if ratio is None else (
            ("PASS" if ratio <= RATIO_TARGET else "FAIL") if target else "info")
        comparison.append({
            "name": name, "label": label,
            "small_rps": small.get("rps"), "million_rps": big.get("rps"),
            "small_p50_ms": small.get("p50_ms"), "million_p50_ms": big.get("p50_ms"),
            "small_p99_ms": sp, "million_p99_ms": bp,
            "p99_ratio": ratio, "target": f"<= {RATIO_TARGET}" if target else None,
            "verdict": verdict,
        })

    purge = purge_report(a.work, meta, failures)
    purge_checks = []
    for kind, label in (("me", "/users/me p99 during the purge"),
                        ("refresh", "refresh p99 during the purge")):
        during = purge.get(f"during_{kind}", {})
        v = during.get("p99_ms")
        finished = purge.get("seconds") is not None
        verdict = "n/a" if v is None else ("PASS" if v <= PURGE_P99_TARGET_MS and finished
                                           else "FAIL")
        purge_checks.append({"name": label, "value": v, "target": f"<= {PURGE_P99_TARGET_MS} ms",
                             "verdict": verdict,
                             "note": None if finished else "the purge did not finish"})

    result = dict(meta)
    result.pop("failures_list", None)
    result["scenarios"] = list(scenarios.values())
    result["comparison"] = comparison
    result["purge"] = purge
    result["purge_checks"] = purge_checks
    result["failures"] = failures
    result["valid"] = not failures
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    load = meta.get("million", {}).get("load", {})
    print()
    print(f"authgate million-accounts benchmark: backend {meta.get('backend')}, commit"
          f" {meta.get('commit')}{' (dirty tree)' if meta.get('dirty') else ''},"
          f" {meta.get('machine', {}).get('nproc')} cores, {meta.get('seconds_per_scenario')} s"
          f" per scenario{' (SMOKE)' if meta.get('smoke') else ''}")
    print(f"loaded {load.get('accounts')} accounts, {load.get('live_sessions')} live and"
          f" {load.get('expired_sessions')} expired sessions, {load.get('refresh_tokens')} refresh"
          f" tokens in {load.get('load_seconds')} s {load.get('steps_seconds', {})};"
          f" database {meta.get('million', {}).get('database_bytes', 0) / 2**20:.0f} MiB;"
          f" restart to ready {meta.get('million', {}).get('startup', {}).get('ready_wall_ms')} ms")
    print()
    header = (f"{'scenario':<30} {'small req/s':>11} {'million req/s':>13} {'small p99':>10}"
              f" {'million p99':>11} {'ratio':>6}  verdict")
    print(header)
    print("-" * len(header))
    for c in comparison:
        def num(v, fmt):
            return "-" if v is None else format(v, fmt)
        print(f"{c['label']:<30} {num(c['small_rps'], '11.1f')} {num(c['million_rps'], '13.1f')}"
              f" {num(c['small_p99_ms'], '10.2f')} {num(c['million_p99_ms'], '11.2f')}"
              f" {num(c['p99_ratio'], '6.2f')}  {c['verdict']}")
    print("(p99 in ms; target: million p99 <= 1.5 x small p99)")
    print()
    print(f"purge: {purge.get('rows')} rows in {purge.get('seconds')} s"
          f" (start known to +-{purge.get('start_uncertainty_ms')} ms);"
          f" expired rows left {purge.get('rows_left')}")
    for phase in ("before", "during", "after"):
        me, rf = purge.get(f"{phase}_me", {}), purge.get(f"{phase}_refresh", {})
        print(f"  {phase:<7} {me.get('slices', 0):>3} slices: /users/me {me.get('rps')} req/s,"
              f" p99 {me.get('p99_ms')} ms (worst slice {me.get('worst_slice_p99_ms')});"
              f" refresh {rf.get('rps')} req/s, p99 {rf.get('p99_ms')} ms"
              f" (worst slice {rf.get('worst_slice_p99_ms')})")
    for c in purge_checks:
        note = f"  ({c['note']})" if c.get("note") else ""
        print(f"  {c['name']:<40} {c['value']!s:>8} ms target {c['target']:<10} {c['verdict']}{note}")
    print()
    print(f"results: {a.out}")
    return exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
