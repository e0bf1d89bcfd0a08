"""The one command that runs every benchmark: `python -m bench` (or `python -m bench.run`).

Each benchmark runs in its own interpreter (`python -m bench.<name> [--quick]`, one JSON
line on stdout) so none inherits another's imports, memory or event loop. The runner
prints one table, every figure beside its same-run baseline, the target and whether it
is met, plus the load average before and after each benchmark (the machine may be shared:
ratios to the baseline are what to compare across machines), and writes everything as
JSON (`--json PATH`, default bench/results/latest.json).

    python -m bench                      # everything, full sizes (~15-25 minutes)
    python -m bench --quick              # tiny sizes: proves the harness works
    python -m bench --only ticker,outage # a subset
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, BenchResult, Figure, load_average, machine

# Order matters a little: the stack benchmarks (ops up) come last so a failure there
# leaves the other figures intact.
BENCHES = ("ticker", "ingest", "outage", "dispatch", "dashboard", "health", "monitor",
           "stack")
PENDING_DASHBOARD = "bench/dashboard.py is not in the tree yet (its owner writes it)"
TIMEOUT_S = {"ticker": 600, "ingest": 600, "outage": 600, "dispatch": 300, "dashboard": 1300,
             "health": 300, "monitor": 600, "stack": 600}
# The dashboard row is bench/dash.py: it runs bench/dashboard.py (the dashboard owner's)
# and parses its printed figures, and measures `ops dash` idle CPU itself.
MODULES = {name: name for name in BENCHES} | {"dashboard": "dash"}


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Run `bench.<name>` in a subprocess; a failure becomes a result with `error` set."""
    if name == "dashboard" and not (ROOT / "bench" / "dashboard.py").exists():
        return BenchResult(name, error=f"pending: {PENDING_DASHBOARD}").to_json()
    argv = [sys.executable, "-m", f"bench.{MODULES[name]}"] + (["--quick"] if quick else [])
    before = load_average()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                              timeout=TIMEOUT_S[name])
    except subprocess.TimeoutExpired:
        return BenchResult(name, error=f"timed out after {time.monotonic() - t0:.0f}s",
                           load_before=before, load_after=load_average()).to_json()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        return BenchResult(name, error=f"exit {proc.returncode}: " + " | ".join(tail),
                           load_before=before, load_after=load_average()).to_json()
    result: dict[str, Any] = json.loads(lines[-1])
    return normalise(name, result, before)


def normalise(name: str, result: dict[str, Any], before: tuple[float, ...]) -> dict[str, Any]:
    """Accept a foreign benchmark's JSON (bench/dashboard.py) in the shape we print: either
    ours (`figures`) or a flat `{metric: value}` mapping, shown without baselines."""
    if "figures" in result:
        result.setdefault("bench", name)
        return result
    figures = [Figure(str(k), "", float(v)) for k, v in result.items()
               if isinstance(v, int | float) and not isinstance(v, bool)]
    out = BenchResult(name, figures=figures, params={"raw": result}, load_before=before,  # type: ignore[arg-type]
                      load_after=load_average())
    return out.to_json()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a fixed-width table, one block per benchmark."""
    head = ("benchmark", "metric", "value", "baseline", "baseline is", "target", "ok", "note")
    rows: list[tuple[str, ...]] = []
    for r in results:
        load = r.get("load_before")
        load_txt = f"load {load[0]:.2f}" if load else ""
        if r.get("error"):
            rows.append((r["bench"], "ERROR", "-", "-", "-", "-", "", r["error"][:100]))
            continue
        for i, f in enumerate(r["figures"]):
            ok = {True: "yes", False: "NO", None: ""}[f.get("meets")]
            rows.append((
                r["bench"] if i == 0 else (load_txt if i == 1 else ""),
                f["metric"] + (f" ({f['unit']})" if f.get("unit") else ""),
                _fmt(f["value"]), _fmt(f.get("baseline")), f.get("baseline_name", ""),
                f.get("target") or "", ok, f.get("note", "")[:70],
            ))
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The figures as a Markdown table (for docs/performance.md)."""
    lines = ["| benchmark | metric | value | baseline (same run) | target | met | load 1 min "
             "| note |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        load = r.get("load_before")
        load_txt = f"{load[0]:.2f}" if load else ""
        if r.get("error"):
            lines.append(f"| {r['bench']} | ERROR | | | | | {load_txt} | {r['error'][:160]} |")
            continue
        for f in r["figures"]:
            unit = f" {f['unit']}" if f.get("unit") else ""
            base = (f"{_fmt(f.get('baseline'))} ({f['baseline_name']})"
                    if f.get("baseline_name") else "")
            ok = {True: "yes", False: "**no**", None: ""}[f.get("meets")]
            lines.append(f"| {r['bench']} | {f['metric']} | {_fmt(f['value'])}{unit} | {base} "
                         f"| {f.get('target') or ''} | {ok} | {load_txt} | {f.get('note', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (harness smoke test)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"),
                        metavar="PATH", help="where to write the JSON results")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table of an existing --json file as Markdown and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; "
                     f"known: {', '.join(BENCHES)}")
    started = datetime.now(UTC)
    results = []
    for name in names:
        print(f"running {name}{' (quick)' if args.quick else ''} ... load {load_average()[0]:.2f}",
              file=sys.stderr, flush=True)
        results.append(run_one(name, args.quick))
    report = {
        "started": started.isoformat(), "finished": datetime.now(UTC).isoformat(),
        "command": "python -m bench" + (" --quick" if args.quick else "")
                   + (f" --only {args.only}" if args.only else ""),
        "machine": machine(), "quick": args.quick, "results": results,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(f"machine: {m['cpus']} CPU ({m['cpu_model']}), {m['memory_gb']} GB, "
          f"Python {m['python']}; load average at end {m['load_average']}")
    print(table(results))
    print(f"JSON: {out}")
    return 1 if any(r.get("error") and not r["error"].startswith("pending") for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
