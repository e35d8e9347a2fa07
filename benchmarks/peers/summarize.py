"""Print markdown tables from results.jsonl. Usage: python3 summarize.py [results.jsonl]
1. every record, in file order;
2. tfp_flows (ours) next to the peers: for each model and each of our modes, our train steps/s, the best peer's
   (any framework other than tfp_flows, any mode) and the ratio ours / best peer; also ours / stock TFP in the same
   mode (fit is compared with stock xla) and the same for sampling throughput.
Table 2 uses the LAST record per (bench, framework, mode); a record whose run_id is not the latest run's is marked
"older run" (its case may have been skipped or lost in the latest run)."""
import json, os, sys
p = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")
recs = [json.loads(l) for l in open(p) if l.strip()]

print("| bench | framework | mode | params | steps/s (median) | min-max | samples/s (10k) | first step s | peak RSS MB | note |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in recs:
    if r["bench"].startswith("matmul"):
        print(f"| matmul 2048 | {r['framework']} {r['version']} | | | {r['gflops_median']} GFLOP/s | best {r['gflops_best']} | | | {r['peak_rss_mb']} | |"); continue
    a = r.get("steps_per_s_all") or []
    mm = f"{min(a)}-{max(a)}" if a else ""
    note = []
    if "nfe_train_step" in r: note.append(f"NFE step/sample {r['nfe_train_step']}/{r['nfe_sample']}")
    if "nfe_train_forward" in r: note.append(f"NFE fwd solve first/last step {r['nfe_train_forward']}, adjoint {r.get('nfe_train_adjoint', '-')}, sample {r.get('nfe_sample')}")
    if "nfe_train_forward_epoch_mean" in r: note.append(f"NFE fwd solve (epoch mean) {r['nfe_train_forward_epoch_mean']}")
    if r.get("sample_finite") is False: note.append("samples non-finite")
    if "error" in r: note.append(r["error"][:120])
    print(f"| {r['bench']} | {r['framework']} | {r.get('mode','')} | {r.get('params','')} | {r.get('steps_per_s','-')} | {mm} | {r.get('samples_per_s','-')} | {r.get('first_step_s','')} | {r.get('peak_rss_mb','')} | {'; '.join(note)} |")

# ---------------------------------------------------------------- ours next to the peers
OURS = "tfp_flows"
PEER_BENCH = {"glowl": "glow", "tarflow": "glow"}          # ours-only variants compared with the peers of another bench
ORDER = ["nsf2d", "nsf64", "glow", "glowl", "tarflow", "res2d", "res64", "ffjord2d"]
MODE_ORDER = ["fn", "xla", "fit", "fit_spe", "fn-concat_squash", "xla-concat_squash"]
STOCK_MODE = {"fn": "fn", "xla": "xla", "fit": "xla", "fit_spe": "xla", "fn-concat_squash": "fn",
              "xla-concat_squash": "xla"}
latest, latest_ok = {}, {}   # last record / last record with a steps/s, per (bench, framework, mode)
for r in recs:
    if not r["bench"].startswith("matmul"):
        latest[(r["bench"], r["framework"], r.get("mode", ""))] = r
        if r.get("steps_per_s"):
            latest_ok[(r["bench"], r["framework"], r.get("mode", ""))] = r
run_ids = [r["run_id"] for r in recs if r.get("run_id")]
last_run = run_ids[-1] if run_ids else None
ours = [r for k, r in latest.items() if k[1] == OURS]
if not ours:
    sys.exit(0)

def f(x, nd=2):
    return "-" if x is None else (f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}")

def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"

def old(r):
    return last_run is not None and r.get("run_id") != last_run

print()
print(f"## tfp_flows vs peers (last record per bench/framework/mode; latest run {last_run or 'unknown'})")
print()
print("| bench | ours mode | ours steps/s | best peer (steps/s) | ours / best peer | ours / stock tfp same mode | "
      "ours samples/s | best peer samples/s | samples ours / best | params ours / peer | ours first step s | "
      "ours peak RSS MB | all peers, steps/s | note |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for b in sorted({r["bench"] for r in ours}, key=lambda x: (ORDER.index(x) if x in ORDER else 99, x)):
    pb = PEER_BENCH.get(b, b)
    # peers: a peer whose latest record failed falls back on its last timed record (marked "older run")
    peers = [latest_ok.get(k, r) for k, r in latest.items() if k[0] == pb and k[1] != OURS]
    timed = sorted([r for r in peers if r.get("steps_per_s")], key=lambda r: -r["steps_per_s"])
    best = timed[0] if timed else None
    sampled = sorted([r for r in peers if r.get("samples_per_s")], key=lambda r: -r["samples_per_s"])
    best_s = sampled[0] if sampled else None
    allp = ", ".join(f"{r['framework']} {r.get('mode','')} {r['steps_per_s']}{' (older run)' if old(r) else ''}" for r in timed)
    failed = [f"{r['framework']} {r.get('mode','')}{' (older run)' if old(r) else ''}: {r['error'][:60]}"
              for k, r in latest.items() if k[0] == pb and k[1] != OURS and "error" in r and not r.get("steps_per_s")]
    modes = sorted([k[2] for k in latest if k[0] == b and k[1] == OURS],
                   key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else 99, m))
    for m in modes:
        r = latest[(b, OURS, m)]
        sk = (pb, "tfp", STOCK_MODE.get(m, m)); stock = latest_ok.get(sk, latest.get(sk))
        note = []
        if old(r): note.append("older run")
        if "error" in r: note.append("ERROR " + r["error"][:100])
        if b != pb: note.append(f"compared with {pb} peers")
        if "nfe_train_forward" in r: note.append(f"NFE fwd first/last {r['nfe_train_forward']} adjoint {r.get('nfe_train_adjoint', '-')} sample {r.get('nfe_sample')}")
        if "nfe_train_forward_epoch_mean" in r: note.append(f"NFE fwd epoch mean {r['nfe_train_forward_epoch_mean']}")
        if r.get("sample_finite") is False: note.append("samples non-finite")
        if failed and m == modes[0]: note.append("peer failures: " + "; ".join(failed))
        bp = f"{best['framework']} {best.get('mode','')} {best['steps_per_s']}{' (older run)' if old(best) else ''}" if best else "-"
        bps = f"{best_s['samples_per_s']:,.0f} ({best_s['framework']} {best_s.get('mode','')})" if best_s else "-"
        pp = f"{r.get('params','-')} / {best.get('params','-')}" if best else f"{r.get('params','-')}"
        print(f"| {b} | {m} | {f(r.get('steps_per_s'))} | {bp} | {ratio(r.get('steps_per_s'), best and best['steps_per_s'])} | "
              f"{ratio(r.get('steps_per_s'), stock and stock.get('steps_per_s'))} | {f(r.get('samples_per_s'), 0)} | {bps} | "
              f"{ratio(r.get('samples_per_s'), best_s and best_s['samples_per_s'])} | {pp} | {r.get('first_step_s', '-')} | "
              f"{r.get('peak_rss_mb', '-')} | {allp or '-'} | {'; '.join(note)} |")
