"""Benchmark: the remote worker under N concurrent clients on loopback (and remote vs local).

Run: ``python Testing/benchmarks/worker_load.py [--clients 1,2,4] [--jobs 3] [--steps 2]
[--model DIR] [--device cpu|cuda] [--max-queue 8] [--cancel-every K] [--time-limit 120]``; prints a
table and writes ``Testing/benchmarks/results/worker_load.json``.

The worker runs in this process (uvicorn in a thread) with the tiny test model (or ``--model``).
First the same case is predicted locally and through the worker (one client, whole
prepare → sample → restore path): their latencies give the remote overhead, and their doses must be
identical. Then each client count submits ``--jobs`` jobs per client (prepared channels, sequential
per client, clients concurrent) for jobs/s and latency percentiles (submit → result). Every
submitted job must end as done, cancelled (every ``--cancel-every``-th, after its first step) or
rejected with a reason (queue full, 422); anything else counts as lost. A full queue answers 503
with Retry-After and the client comes back (with jitter), so a job waits rather than failing; the
fairness columns give each client's mean wait (submit → result) and the worst client's against the
median client's (the worker promises within 3×).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from dosediffusion.conditioning.prepare import prepare
from dosediffusion.errors import Cancelled
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.remote.client import RemoteBusy, RemoteClient, RemoteRejected, predict_remote
from dosediffusion.remote.server import create_app, serve_in_thread

TESTS = Path(__file__).resolve().parents[1] / "python"
TOKEN = "benchmark-token-not-secret"


def load_model(folder: str | None) -> tuple[DoseDiffusionPipeline, str]:
    if folder:
        return DoseDiffusionPipeline.from_pretrained(folder), Path(folder).name
    sys.path.insert(0, str(TESTS))
    from model_builders import tiny_pipeline

    return tiny_pipeline(), "tiny (Testing/python/model_builders.py)"


def remote_vs_local(pipeline, case, url: str, args) -> dict:
    """Median seconds of the whole prediction, locally and through the worker, and whether they agree."""
    options = {"steps": args.steps, "seed": 0, "num_candidates": args.candidates}
    timings: dict[str, list[float]] = {"local": [], "remote": []}
    doses = {}
    for _ in range(args.repeats + 1):  # the first of each is a warm-up
        for side in ("local", "remote"):
            start = time.perf_counter()
            if side == "local":
                doses[side] = pipeline(case, device=args.device, **options).dose_gy
            else:
                doses[side] = predict_remote(case, url, TOKEN, **options).dose_gy
            timings[side].append(time.perf_counter() - start)
    local, remote = (float(np.median(timings[s][1:])) for s in ("local", "remote"))
    return {"local_s": local, "remote_s": remote, "overhead_s": remote - local,
            "identical": bool(np.array_equal(doses["local"], doses["remote"]))}


def one_client(url: str, channels, seeds: list[int], args, deadline: float, outcomes: list, name: int) -> None:
    """Submit this client's jobs one after another; record each one's outcome and latency."""
    with RemoteClient(url, TOKEN, poll_s=0.5) as client:
        for seed in seeds:
            if time.monotonic() > deadline:
                outcomes.append({"outcome": "not submitted", "reason": "time limit"})
                continue
            cancelling = args.cancel_every and seed % args.cancel_every == args.cancel_every - 1
            messages: list[str] = []
            start = time.perf_counter()
            try:
                client.sample(channels, args.steps, seed, args.candidates,
                              progress=lambda f, m, seen=messages: seen.append(m),
                              cancel=(lambda seen=messages: any(m.startswith("step") for m in seen)) if cancelling else None)
                record = {"outcome": "done", "timing": dict(client.last_timing)}
            except Cancelled:
                record = {"outcome": "cancelled"}
            except (RemoteBusy, RemoteRejected) as error:
                record = {"outcome": "rejected", "reason": error.problem}
            except Exception as error:  # counted as lost below
                record = {"outcome": "lost", "reason": f"{type(error).__name__}: {error}"}
            record["latency_s"], record["client"] = time.perf_counter() - start, name
            outcomes.append(record)


def load(url: str, channels, clients: int, args) -> dict:
    outcomes: list[dict] = []
    deadline = time.monotonic() + args.time_limit
    threads = [threading.Thread(target=one_client, args=(url, channels, list(range(c * args.jobs, (c + 1) * args.jobs)),
                                                         args, deadline, outcomes, c)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.time_limit + 120)
    wall = time.perf_counter() - start
    counts = {k: sum(o["outcome"] == k for o in outcomes) for k in ("done", "cancelled", "rejected", "lost")}
    counts["lost"] += clients * args.jobs - len(outcomes) - sum(o["outcome"] == "not submitted" for o in outcomes)
    done = [o for o in outcomes if o["outcome"] == "done"]
    latency = np.array([o["latency_s"] for o in done]) if done else np.array([np.nan])
    waits = [float(np.mean([o["latency_s"] for o in done if o["client"] == c])) for c in range(clients)
             if any(o["client"] == c for o in done)]
    return {"clients": clients, "submitted": sum(o["outcome"] != "not submitted" for o in outcomes), **counts,
            "wall_s": wall, "jobs_per_s": len(done) / wall,
            "p50_s": float(np.percentile(latency, 50)), "p90_s": float(np.percentile(latency, 90)),
            "p99_s": float(np.percentile(latency, 99)),
            "mean_queued_s": float(np.mean([o["timing"]["queued_s"] for o in done])) if done else float("nan"),
            "mean_run_s": float(np.mean([o["timing"]["run_s"] for o in done])) if done else float("nan"),
            "client_wait_s": waits, "client_wait_p50_s": float(np.percentile(waits, 50)) if waits else float("nan"),
            "client_wait_p99_s": float(np.percentile(waits, 99)) if waits else float("nan"),
            "worst_over_median": max(waits) / float(np.median(waits)) if waits else float("nan"),
            "reasons": sorted({o["reason"] for o in outcomes if "reason" in o})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,2,4", help="comma-separated client counts (default 1,2,4)")
    parser.add_argument("--jobs", type=int, default=3, help="jobs per client (default 3)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="remote-vs-local repeats (default 3)")
    parser.add_argument("--model", help="pipeline folder (default: the tiny test model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--cancel-every", type=int, default=0, help="cancel every K-th job (default: none)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds after which no job is submitted")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from phantoms import make_phantom_case

    pipeline, model_name = load_model(args.model)
    case = make_phantom_case(spacing=(5.0, 5.0, 5.0))[0]
    channels = prepare(case, pipeline.preprocessing, include_dose=False).channels
    app = create_app(pipeline, TOKEN, device=args.device, max_queued=args.max_queue)
    with serve_in_thread(app) as url:
        compare = remote_vs_local(pipeline, case, url, args)
        rows = [load(url, channels, int(n), args) for n in args.clients.split(",")]
        settle = time.monotonic() + 60  # a cancelled job stops at its next step
        while (leftover := [j for j in list(app.state.jobs.jobs.values()) if j.state in ("queued", "running")]) \
                and time.monotonic() < settle:
            time.sleep(0.1)
    print(f"model {model_name}, {args.steps} steps, {args.candidates} candidate(s), device {args.device}")
    print(f"one prediction: local {compare['local_s']:.3f} s, remote {compare['remote_s']:.3f} s, "
          f"overhead {compare['overhead_s']:+.3f} s, identical doses: {compare['identical']}")
    print(f"{'clients':>7} {'jobs':>5} {'done':>5} {'canc':>5} {'rej':>4} {'lost':>5} {'jobs/s':>7} "
          f"{'p50 s':>6} {'p90 s':>6} {'p99 s':>6} {'queued s':>8} {'run s':>6} {'client p50':>10} "
          f"{'client p99':>10} {'worst/med':>9}")
    for r in rows:
        print(f"{r['clients']:>7} {r['submitted']:>5} {r['done']:>5} {r['cancelled']:>5} {r['rejected']:>4} "
              f"{r['lost']:>5} {r['jobs_per_s']:>7.2f} {r['p50_s']:>6.2f} {r['p90_s']:>6.2f} {r['p99_s']:>6.2f} "
              f"{r['mean_queued_s']:>8.2f} {r['mean_run_s']:>6.2f} {r['client_wait_p50_s']:>10.2f} "
              f"{r['client_wait_p99_s']:>10.2f} {r['worst_over_median']:>9.2f}")
        for reason in r["reasons"]:
            print(f"{'':>7} reason: {reason}")
    lost = sum(r["lost"] for r in rows) + len(leftover)
    print("nothing lost" if lost == 0 else f"LOST {lost} job(s)")
    out = Path(__file__).parent / "results" / "worker_load.json"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    out.write_text(json.dumps({"model": model_name, "device": device, "threads": torch.get_num_threads(),
                               "steps": args.steps, "candidates": args.candidates, "max_queue": args.max_queue,
                               "remote_vs_local": compare, "rows": rows, "lost": lost}, indent=2))
    print(f"wrote {out}")
    if lost or not compare["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
