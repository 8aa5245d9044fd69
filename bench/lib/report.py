#!/usr/bin/env python3
"""Turns one benchmark run's raw outputs into bench/results/<time>.json, a
table and the target checks.

Inputs (all written by bench/run.sh into its work directory):
  meta.tsv       key<TAB>value lines; dotted keys nest ("machine.nproc")
  scenarios.tsv  name, kind, connections, wrk threads, seconds, the server's
                 peak RSS (KiB), CPU time (clock ticks) and minor page faults
                 during the scenario, and the wrk output file; tab-separated
  hash.json      the output of `authgate hash-benchmark`
Exit status: 0 for a valid run, 1 if any request failed (a non-2xx status
other than the 503s expected in the 1,000-login storm, or a socket error or
timeout), since such a run is not a result.
"""

import argparse
import json
import os
import re
import sys

MIB = 1024 * 1024

LABELS = {
    "healthz": "GET /healthz",
    "me": "GET /users/me",
    "login": "POST /auth/login",
    "signup": "POST /auth/signup",
    "refresh": "POST /auth/refresh (chains)",
    "storm_me": "GET /users/me under login storm",
    "storm_login": "  the login storm itself",
    "rss_storm": "POST /auth/login RSS storm",
}


def number(text):
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*", text):
        return float(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            key, _, value = line.partition("\t")
            node = meta
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = number(value)
    return meta


def read_wrk(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        return None, str(e)
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):]), None
    return None, "wrk printed no BENCH_RESULT line: " + " | ".join(text.strip().splitlines()[-5:])


def scenario(row, clk_tck):
    name, kind, conns, threads, seconds, rss_kib, ticks, faults, out = row
    raw, error = read_wrk(out)
    s = {
        "name": name,
        "label": LABELS.get(name, name),
        "kind": kind,
        "connections": int(conns),
        "threads": int(threads),
        "seconds": float(seconds),
        "peak_rss_kib": int(rss_kib) if rss_kib.isdigit() else None,
        "server_cpu_s": round(int(ticks) / clk_tck, 2),
        "server_minor_faults": int(faults),
    }
    if raw is None:
        s["error"] = error
        return s
    duration_s = raw["duration_us"] / 1e6 if raw["duration_us"] else 0
    lat = raw["latency_us"]
    s.update({
        "requests": raw["requests"],
        "duration_s": round(duration_s, 3),
        "rps": round(raw["requests"] / duration_s, 1) if duration_s else 0.0,
        "p50_ms": round(lat["p50"] / 1000, 3),
        "p90_ms": round(lat["p90"] / 1000, 3),
        "p99_ms": round(lat["p99"] / 1000, 3),
        "max_ms": round(lat["max"] / 1000, 3),
        "mean_ms": round(lat["mean"] / 1000, 3),
        "server_cores_busy": round(int(ticks) / clk_tck / duration_s, 2) if duration_s else None,
        "server_cpu_ms_per_request": round(int(ticks) / clk_tck * 1000 / raw["requests"], 3) if raw["requests"] else None,
        "server_faults_per_request": round(int(faults) / raw["requests"], 1) if raw["requests"] else None,
        "non2xx": raw["non2xx"],
        "statuses": raw["statuses"],
        "socket_errors": raw["errors"],
        "counters": raw["counters"],
        "wrk": raw,
    })
    return s


def failures_of(s):
    """The failed requests of a scenario, as human-readable strings."""
    if "error" in s:
        return [f"{s['name']}: {s['error']}"]
    out = []
    statuses = s["statuses"]
    bad = {code: n for code, n in statuses.items() if not code.startswith("2")}
    if s["kind"] == "rss_storm":
        bad.pop("503", None)
    if bad:
        out.append(f"{s['name']}: non-2xx responses {bad}")
    errs = {k: v for k, v in s["socket_errors"].items() if k != "status" and v}
    if errs:
        out.append(f"{s['name']}: socket errors/timeouts {errs}")
    for k, v in s["counters"].items():
        out.append(f"{s['name']}: {k} x{v}")
    if s["requests"] == 0:
        out.append(f"{s['name']}: no request completed")
    return out


def check(name, value, op, target, unit="", applies=True, note=None):
    if value is None:
        verdict = "n/a"
    elif not applies:
        verdict = "info"
    elif op == ">=":
        verdict = "PASS" if value >= target else "FAIL"
    else:
        verdict = "PASS" if value <= target else "FAIL"
    r = {"name": name, "value": None if value is None else round(value, 3),
         "op": op, "target": target, "unit": unit, "verdict": verdict}
    if note:
        r["note"] = note
    return r


def exit_status(failures):
    """Reports failed requests loudly; the script's exit status: 1 if any."""
    if failures:
        bar = "!" * 78
        print(bar, file=sys.stderr)
        print("!!! FAILED REQUESTS: this run is NOT a result.", file=sys.stderr)
        for f_ in failures:
            print(f"!!!   {f_}", file=sys.stderr)
        print(bar, file=sys.stderr)
        return 1
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    meta = read_meta(os.path.join(a.work, "meta.tsv"))
    rows = []
    with open(os.path.join(a.work, "scenarios.tsv")) as f:
        for line in f:
            if line.strip():
                rows.append(line.rstrip("\n").split("\t"))
    scenarios = {r[0]: scenario(r, meta.get("clk_tck", 100)) for r in rows}
    try:
        with open(os.path.join(a.work, "hash.json")) as f:
            hash_bench = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as e:
        hash_bench = {"error": f"no hash-benchmark result: {e}"}

    warnings = []
    proc = meta.get("hash_benchmark_process", {})
    if "error" not in hash_bench and proc.get("wall_s"):
        busy = proc["cpu_s"] / proc["wall_s"]
        hash_bench["cores_busy"] = round(busy, 2)
        workers = hash_bench.get("workers", 1)
        if busy < 0.75 * workers:
            # Hashing scales linearly over cores (one single-threaded hash per
            # worker), so the rate per busy core times the workers estimates
            # what all workers would do.
            hash_bench["hashes_per_second_all_workers"] = round(
                hash_bench["hashes_per_second"] * workers / busy, 1)
            warnings.append(
                f"hash-benchmark kept only {busy:.2f} cores busy with {workers} workers, so its"
                f" hashes_per_second ({hash_bench['hashes_per_second']:.1f}) understates the raw rate;"
                f" the login and signup ratios use it scaled to {workers} busy workers"
                f" ({hash_bench['hashes_per_second_all_workers']:.1f}/s)")
    if meta.get("server", {}).get("log_errors"):
        warnings.append(f"the server logged {meta['server']['log_errors']} errors, the first:"
                        f" {meta['server'].get('first_error', '?')}")

    failures = []
    for s in scenarios.values():
        failures += failures_of(s)
    if "error" in hash_bench:
        failures.append("hash-benchmark: " + hash_bench["error"])
    failures += meta.get("failures_list", "").split("|") if meta.get("failures_list") else []

    def get(name, field):
        s = scenarios.get(name)
        return s.get(field) if s and field in s else None

    def ratio(x, y):
        return x / y if x is not None and y else None

    raw_rate = hash_bench.get("hashes_per_second_all_workers", hash_bench.get("hashes_per_second"))
    postgres = meta.get("backend") == "postgres"
    rss_peak = get("rss_storm", "peak_rss_kib")
    ratios = [
        check("/users/me rps / /healthz rps", ratio(get("me", "rps"), get("healthz", "rps")), ">=", 0.60),
        check("login rps / argon2 raw rate", ratio(get("login", "rps"), raw_rate), ">=", 0.90),
        check("signup rps / argon2 raw rate", ratio(get("signup", "rps"), raw_rate), ">=", 0.90),
        check("/users/me rps under storm / unloaded", ratio(get("storm_me", "rps"), get("me", "rps")), ">=", 0.50),
        check("/users/me p99 under storm", get("storm_me", "p99_ms"), "<=", 20, "ms"),
        check("/users/me p99 unloaded", get("me", "p99_ms"), "<=", 5, "ms"),
        check("refresh rps", get("refresh", "rps"), ">=", 2000, "req/s", applies=postgres,
              note=None if postgres else "target applies to PostgreSQL"),
        check("idle RSS", meta["idle_rss_kib"] / 1024 if "idle_rss_kib" in meta else None, "<=", 30, "MiB"),
        check("RSS storm peak RSS", rss_peak / 1024 if rss_peak else None, "<=", 256, "MiB"),
        check("start to ready (wall clock)", meta.get("startup", {}).get("ready_wall_ms"), "<=", 200, "ms"),
        check("release binary size", meta["binary_bytes"] / MIB if "binary_bytes" in meta else None, "<=", 30, "MiB"),
    ]

    result = dict(meta)
    result.pop("failures_list", None)
    result["scenarios"] = list(scenarios.values())
    result["hash_benchmark"] = hash_bench
    result["ratios"] = ratios
    result["warnings"] = warnings
    result["failures"] = failures
    result["valid"] = not failures
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    # The table.
    print()
    print(f"authgate benchmark: backend {meta.get('backend')}, commit {meta.get('commit')}"
          f"{' (dirty tree)' if meta.get('dirty') else ''}, {meta.get('machine', {}).get('nproc')} cores,"
          f" {meta.get('seconds_per_scenario')} s per scenario{' (SMOKE)' if meta.get('smoke') else ''}")
    st = meta.get("startup", {})
    print(f"start to ready: {st.get('ready_wall_ms')} ms wall clock, {st.get('ready_inproc_ms')} ms in-process;"
          f" idle RSS {meta.get('idle_rss_kib', 0) / 1024:.1f} MiB;"
          f" binary {meta.get('binary_bytes', 0) / MIB:.1f} MiB")
    print("(peak RSS: VmHWM during the scenario; srv cores: server CPU seconds per second;"
          " faults/req: the server's minor page faults per request)")
    header = (f"{'scenario':<34} {'conns':>5} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'non-2xx':>12}"
              f" {'peak RSS MiB':>13} {'srv cores':>9} {'faults/req':>10}")
    print()
    print(header)
    print("-" * len(header))
    for s in scenarios.values():
        rss = f"{s['peak_rss_kib'] / 1024:.1f}" if s.get("peak_rss_kib") else "-"
        if "error" in s:
            print(f"{s['label']:<34} {s['connections']:>5} {'ERROR':>10}  {s['error']}")
            continue
        non2xx = str(s["non2xx"])
        if s["kind"] == "rss_storm":
            n503 = s["statuses"].get("503", 0)
            non2xx = f"{s['non2xx'] - n503}+{n503}x503"
        cores = "-" if s["server_cores_busy"] is None else f"{s['server_cores_busy']:.2f}"
        faults = "-" if s["server_faults_per_request"] is None else f"{s['server_faults_per_request']:.1f}"
        print(f"{s['label']:<34} {s['connections']:>5} {s['rps']:>10.1f} {s['p50_ms']:>9.2f}"
              f" {s['p99_ms']:>9.2f} {non2xx:>12} {rss:>13} {cores:>9} {faults:>10}")
    if "error" not in hash_bench:
        print(f"{'argon2id raw (hash-benchmark)':<34} {hash_bench.get('workers', ''):>5}"
              f" {hash_bench['hashes_per_second']:>10.1f} {'':>9} {'':>9} {'':>12} {'-':>13}"
              f" {hash_bench.get('cores_busy', '-'):>9}")
        if "hashes_per_second_all_workers" in hash_bench:
            print(f"{'  scaled to all workers busy':<34} {'':>5}"
                  f" {hash_bench['hashes_per_second_all_workers']:>10.1f}")
    print()
    for r in ratios:
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        target = f"{r['op']} {r['target']}{(' ' + r['unit']) if r['unit'] else ''}"
        note = f"  ({r['note']})" if r.get("note") else ""
        print(f"  {r['name']:<40} {value:>10} {r['unit']:<6} target {target:<14} {r['verdict']}{note}")
    print()
    for w in warnings:
        print(f"WARNING: {w}")
    print(f"results: {a.out}")
    return exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
