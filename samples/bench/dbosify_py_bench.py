#!/usr/bin/env python3
"""Benchmark DBOSify for Python (PyPI ``dbosify``) on a Postgres server.

This is the Python baseline for "DBOSify for Rust". Run both against the same
Postgres in the same benchmark run.

    pip install dbosify==0.4.0 dbos==2.31.1      # dbos 3.x breaks dbosify 0.4
    python3 samples/bench/dbosify_py_bench.py --url postgres://postgres@127.0.0.1:5432/test \
        [--scenarios seq_one_activity,activities_in_one_workflow,...] [--quick] \
        [--topology twoproc|inproc|both] [--n N] [--keep-db]

It prints ONE JSON object on stdout. Everything else (our logs, DBOS logs, child
process output) goes to stderr.

How a run works
---------------
* The orchestrator (this process, no DBOS runtime) creates a fresh database
  ``dbosify_bench_<utc>_<pid>`` on the server named by --url. If it may not
  create databases, it falls back to a fresh namespace (= Postgres schema
  ``dbosify_<ns>``) inside the --url database. The database is dropped at the
  end unless --keep-db is given.
* Each scenario runs in fresh child processes of this same script, on its own
  task queue:
    - ``--worker``: a dbosify ``Worker`` (one per process; dbosify allows only
      one) serving all benchmark workflows/activities until SIGTERM.
    - ``--client <scenario>``: a dbosify ``Client`` that drives the scenario and
      writes its result to a file. With topology ``inproc`` the client process
      also hosts the Worker (``async with worker:``, as in the dbosify README).
  The orchestrator enforces a per-scenario timeout by killing the process
  groups it started; a timed-out or failed scenario reports {"error": ...}.
* Default topology is ``twoproc`` (worker and client in separate processes)
  for every scenario; ``--topology inproc`` puts worker and client in one
  process; ``--topology both`` runs each scenario both ways (the in-process
  result is reported under ``<scenario>@inproc``). Each scenario records the
  topology it used.
* dbosify and DBOS run with their documented defaults: nothing is tuned
  (queue polling interval, result polling, notification listener and so on
  are left alone; their values are recorded under "dbos_defaults").

Scenarios (all activities are no-ops that echo a 256-byte string):
  seq_one_activity            N sequential execute_workflow() of a one-activity workflow; p50/p99 ms
  activities_in_one_workflow  one workflow running N sequential activities; activities/s
  concurrent_workflows        start N one-activity workflows at once, then await all; workflows/s
  signal_latency              client signal() call -> handler running in the workflow (handler
                              records time.time() and the client's send timestamp; same host clock)
  update_round_trip           execute_update() round trip, plus its split into request leg
                              (call -> handler ran) and reply leg (handler -> call returned)
"""

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

ALL_SCENARIOS = [
    "seq_one_activity",
    "activities_in_one_workflow",
    "concurrent_workflows",
    "signal_latency",
    "update_round_trip",
]

# Default sizes (full run) and --quick sizes.
SIZES_FULL = {
    "seq_one_activity": 50,
    "activities_in_one_workflow": 1000,
    "concurrent_workflows": 1000,
    "signal_latency": 50,
    "update_round_trip": 20,
}
SIZES_QUICK = {
    "seq_one_activity": 10,
    "activities_in_one_workflow": 100,
    "concurrent_workflows": 100,
    "signal_latency": 15,
    "update_round_trip": 5,
}

NAMESPACE = "bench"
PAYLOAD = "x" * 256
ACTIVITY_TIMEOUT = timedelta(seconds=60)
WORKER_READY_TIMEOUT_S = 90.0
SIGNAL_GAP_S = 0.1  # pause between signals so each one is measured unqueued


def log(msg: str) -> None:
    ts = datetime.now(timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    print(f"[bench {ts} pid={os.getpid()}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Workflow and activity definitions (used by worker and client processes).
# Imported lazily-guarded so the orchestrator can still report a JSON error
# if dbosify isn't installed.
# ---------------------------------------------------------------------------
try:
    import time as _wallclock  # real wall clock, deliberately used in handlers

    from dbosify import activity, workflow

    _IMPORT_ERROR: Optional[str] = None

    @activity.defn
    async def noop_activity(payload: str) -> str:
        return payload

    @workflow.defn
    class OneActivityWorkflow:
        @workflow.run
        async def run(self, payload: str) -> str:
            return await workflow.execute_activity(
                noop_activity, payload, start_to_close_timeout=ACTIVITY_TIMEOUT
            )

    @workflow.defn
    class ManyActivitiesWorkflow:
        @workflow.run
        async def run(self, n: int, payload: str) -> Dict[str, float]:
            # Real wall clock (not workflow.time(), which is virtual) so we can
            # report the in-workflow activity rate, free of queue-dequeue and
            # result-polling delays. Harmless here: nothing is replayed.
            t_first = _wallclock.time()
            for _ in range(n):
                out = await workflow.execute_activity(
                    noop_activity, payload, start_to_close_timeout=ACTIVITY_TIMEOUT
                )
                assert out == payload
            return {"t_first": t_first, "t_last": _wallclock.time()}

    @workflow.defn
    class MessageWorkflow:
        """Target for signal and update measurements."""

        def __init__(self) -> None:
            self.received: List[List[float]] = []
            self.counter = 0
            self.done = False

        @workflow.run
        async def run(self) -> List[List[float]]:
            await workflow.wait_condition(lambda: self.done)
            return self.received

        @workflow.signal
        def ping(self, seq: int, sent_at: float) -> None:
            # Record when the handler actually runs (wall clock, same host as
            # the client), next to the client's pre-call timestamp.
            self.received.append([seq, sent_at, _wallclock.time()])

        @workflow.signal
        def finish(self) -> None:
            self.done = True

        @workflow.update
        def bump(self, x: int) -> List[float]:
            self.counter += x
            return [self.counter, _wallclock.time()]

        @workflow.query
        def count(self) -> int:
            return len(self.received)

    ALL_WORKFLOWS = [OneActivityWorkflow, ManyActivitiesWorkflow, MessageWorkflow]
    ALL_ACTIVITIES = [noop_activity]
except Exception as _e:  # pragma: no cover - reported in JSON
    _IMPORT_ERROR = f"{type(_e).__name__}: {_e}"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def pct(values: List[float], p: float) -> Optional[float]:
    """Percentile with linear interpolation (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize_ms(values: List[float]) -> Dict[str, Any]:
    if not values:
        return {"n": 0}
    r = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return {
        "n": len(values),
        "p50_ms": r(pct(values, 50)),
        "p90_ms": r(pct(values, 90)),
        "p99_ms": r(pct(values, 99)),
        "mean_ms": r(statistics.fmean(values)),
        "min_ms": r(min(values)),
        "max_ms": r(max(values)),
    }


def normalize_url(url: str) -> str:
    """postgres://... -> postgresql://... (SQLAlchemy/DBOS want the latter)."""
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://") :]
    return url


def url_with_db(url: str, dbname: str) -> str:
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc, "/" + dbname, p.query, p.fragment))


def url_db(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/") or "postgres"


def libpq_url(url: str) -> str:
    """A URL psycopg accepts (no SQLAlchemy driver suffix)."""
    p = urllib.parse.urlsplit(url)
    scheme = "postgresql"
    return urllib.parse.urlunsplit((scheme, p.netloc, p.path, p.query, p.fragment))


def pkg_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def db_breakdown(url: str, schema: str, ids: List[str]) -> Dict[str, Any]:
    """Server-side timestamps of the given DBOS workflow ids: queue wait
    (created -> dequeued by the worker) and execution (dequeued -> completed).
    The remainder of the client-observed latency is client-side result
    polling plus the client's own start overhead."""
    import psycopg

    if not ids:
        return {}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT workflow_uuid, status, created_at, started_at_epoch_ms, "
            f"completed_at, updated_at FROM {schema}.workflow_status "
            f"WHERE workflow_uuid = ANY(%s)",
            (ids,),
        ).fetchall()
    statuses: Dict[str, int] = {}
    qwait, execd = [], []
    first_created, last_done = None, None
    for _id, status, created, started, completed, updated in rows:
        statuses[status] = statuses.get(status, 0) + 1
        done = completed or updated
        if created is not None and started is not None:
            qwait.append(float(started - created))
        if started is not None and done is not None:
            execd.append(float(done - started))
        if created is not None:
            first_created = created if first_created is None else min(first_created, created)
        if done is not None:
            last_done = done if last_done is None else max(last_done, done)
    out: Dict[str, Any] = {
        "statuses": statuses,
        "queue_wait": summarize_ms(qwait),
        "execution": summarize_ms(execd),
    }
    if first_created is not None and last_done is not None:
        out["span_first_created_to_last_completed_ms"] = float(last_done - first_created)
    return out


# ---------------------------------------------------------------------------
# Client-side scenarios (run in a --client child process)
# ---------------------------------------------------------------------------
async def scen_seq_one_activity(client: Any, tq: str, n: int, url: str, tag: str) -> Dict[str, Any]:
    warmup = 2
    lat: List[float] = []
    ids: List[str] = []
    for i in range(warmup + n):
        wid = f"{tag}-seq-{i}"
        t0 = time.perf_counter()
        out = await client.execute_workflow(
            OneActivityWorkflow.run, PAYLOAD, id=wid, task_queue=tq
        )
        dt = (time.perf_counter() - t0) * 1000.0
        if out != PAYLOAD:
            raise RuntimeError(f"unexpected result {out!r:.40}")
        if i >= warmup:
            lat.append(dt)
            ids.append(wid)
    res = summarize_ms(lat)
    res["warmup"] = warmup
    res["server_side"] = db_breakdown(url, f"dbosify_{NAMESPACE_ACTIVE}", ids)
    return res


async def scen_activities_in_one_workflow(client: Any, tq: str, n: int, url: str, tag: str) -> Dict[str, Any]:
    # Warm-up: one one-activity workflow (also proves the worker is live).
    await client.execute_workflow(OneActivityWorkflow.run, PAYLOAD, id=f"{tag}-warm", task_queue=tq)
    wid = f"{tag}-many"
    t0 = time.time()
    out = await client.execute_workflow(
        ManyActivitiesWorkflow.run, args=[n, PAYLOAD], id=wid, task_queue=tq
    )
    t1 = time.time()
    wall = t1 - t0
    inwf = out["t_last"] - out["t_first"]
    return {
        "activities": n,
        "activities_per_sec": round(n / wall, 2),
        "wall_s": round(wall, 3),
        "activities_per_sec_in_workflow": round(n / inwf, 2) if inwf > 0 else None,
        "in_workflow_s": round(inwf, 3),
        "ms_per_activity_in_workflow": round(inwf * 1000.0 / n, 3),
        "start_to_first_activity_ms": round((out["t_first"] - t0) * 1000.0, 1),
        "last_activity_to_result_ms": round((t1 - out["t_last"]) * 1000.0, 1),
        "server_side": db_breakdown(url, f"dbosify_{NAMESPACE_ACTIVE}", [wid]),
    }


async def scen_concurrent_workflows(client: Any, tq: str, n: int, url: str, tag: str) -> Dict[str, Any]:
    await client.execute_workflow(OneActivityWorkflow.run, PAYLOAD, id=f"{tag}-warm", task_queue=tq)
    ids = [f"{tag}-conc-{i}" for i in range(n)]
    t0 = time.perf_counter()
    handles = await asyncio.gather(
        *[client.start_workflow(OneActivityWorkflow.run, PAYLOAD, id=wid, task_queue=tq) for wid in ids]
    )
    t_started = time.perf_counter()
    results = await asyncio.gather(*[h.result() for h in handles])
    t1 = time.perf_counter()
    bad = sum(1 for r in results if r != PAYLOAD)
    if bad:
        raise RuntimeError(f"{bad} workflows returned unexpected results")
    wall = t1 - t0
    server = db_breakdown(url, f"dbosify_{NAMESPACE_ACTIVE}", ids)
    span = server.get("span_first_created_to_last_completed_ms")
    return {
        "workflows": n,
        "workflows_per_sec": round(n / wall, 2),
        "wall_s": round(wall, 3),
        "start_phase_s": round(t_started - t0, 3),
        "starts_per_sec": round(n / (t_started - t0), 2),
        "server_side_workflows_per_sec": round(n / (span / 1000.0), 2) if span else None,
        "server_side": server,
    }


async def _start_message_workflow(client: Any, tq: str, wid: str) -> Any:
    handle = await client.start_workflow(MessageWorkflow.run, id=wid, task_queue=tq)
    # Warm-up / readiness: an update round trip proves the run is live and
    # draining its inbox.
    await asyncio.wait_for(handle.execute_update(MessageWorkflow.bump, 0), 60)
    return handle


async def scen_signal_latency(client: Any, tq: str, n: int, url: str, tag: str) -> Dict[str, Any]:
    handle = await _start_message_workflow(client, tq, f"{tag}-sig")
    warmup = 3
    call_ms: List[float] = []
    for i in range(-warmup, n):
        sent_at = time.time()
        t0 = time.perf_counter()
        await handle.signal(MessageWorkflow.ping, args=[i, sent_at])
        if i >= 0:
            call_ms.append((time.perf_counter() - t0) * 1000.0)
        await asyncio.sleep(SIGNAL_GAP_S)
    await handle.signal(MessageWorkflow.finish)
    received = await asyncio.wait_for(handle.result(), 60)
    lat = [(rcv - sent) * 1000.0 for seq, sent, rcv in received if seq >= 0]
    if len(lat) != n:
        raise RuntimeError(f"handler saw {len(lat)} of {n} signals")
    res = summarize_ms(lat)
    res["warmup"] = warmup
    res["gap_between_signals_ms"] = SIGNAL_GAP_S * 1000.0
    res["signal_call_returned"] = summarize_ms(call_ms)
    res["method"] = (
        "client takes time.time() right before handle.signal(); the signal handler "
        "records time.time() when it runs (worker process, same host clock); "
        "timestamps come back in the workflow result"
    )
    return res


async def scen_update_round_trip(client: Any, tq: str, n: int, url: str, tag: str) -> Dict[str, Any]:
    handle = await _start_message_workflow(client, tq, f"{tag}-upd")
    warmup = 2
    rtt: List[float] = []
    req_leg: List[float] = []
    reply_leg: List[float] = []
    for i in range(-warmup, n):
        t_call = time.time()
        t0 = time.perf_counter()
        out = await asyncio.wait_for(handle.execute_update(MessageWorkflow.bump, 1), 90)
        dt = (time.perf_counter() - t0) * 1000.0
        t_ret = time.time()
        if i >= 0:
            rtt.append(dt)
            req_leg.append((out[1] - t_call) * 1000.0)
            reply_leg.append((t_ret - out[1]) * 1000.0)
    await handle.signal(MessageWorkflow.finish)
    await asyncio.wait_for(handle.result(), 60)
    res = summarize_ms(rtt)
    res["warmup"] = warmup
    res["request_leg_call_to_handler"] = summarize_ms(req_leg)
    res["reply_leg_handler_to_return"] = summarize_ms(reply_leg)
    return res


SCENARIO_FUNCS = {
    "seq_one_activity": scen_seq_one_activity,
    "activities_in_one_workflow": scen_activities_in_one_workflow,
    "concurrent_workflows": scen_concurrent_workflows,
    "signal_latency": scen_signal_latency,
    "update_round_trip": scen_update_round_trip,
}

NAMESPACE_ACTIVE = NAMESPACE  # overridden by --namespace in child processes


def make_worker(url: str, tq: str) -> Any:
    from dbosify.worker import Worker

    return Worker(
        url,
        task_queue=tq,
        namespace=NAMESPACE_ACTIVE,
        workflows=ALL_WORKFLOWS,
        activities=ALL_ACTIVITIES,
    )


async def client_main(args: argparse.Namespace) -> Dict[str, Any]:
    from dbosify.client import Client

    func = SCENARIO_FUNCS[args.client]
    tag = f"{args.client[:12]}-{args.tag}"

    async def drive() -> Dict[str, Any]:
        client = await Client.connect(args.url, namespace=NAMESPACE_ACTIVE)
        try:
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            res = await func(client, args.task_queue, args.n, args.url, tag)
            res["scenario_wall_s"] = round(time.perf_counter() - t0, 3)
            res["client_process_cpu_s"] = round(time.process_time() - cpu0, 2)
            return res
        finally:
            await client.close()

    if args.inproc:
        worker = make_worker(args.url, args.task_queue)
        async with worker:
            return await drive()
    return await drive()


def run_client_mode(args: argparse.Namespace) -> int:
    try:
        res = asyncio.run(client_main(args))
    except BaseException as e:  # report, don't hang
        traceback.print_exc(file=sys.stderr)
        res = {"error": f"{type(e).__name__}: {e}"}
    with open(args.result_file, "w") as f:
        json.dump(res, f)
    sys.stderr.flush()
    # DBOS may leave non-daemon threads around; the result is written, so leave now.
    os._exit(0)


async def worker_main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = make_worker(args.url, args.task_queue)
    async with worker:
        # run() launches DBOS and then registers the queue; wait until launched.
        for _ in range(400):
            if worker.is_running:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        with open(args.ready_file, "w") as f:
            f.write(str(os.getpid()))
        log(f"worker ready on task queue {args.task_queue}")
        cpu0 = time.process_time()
        await stop.wait()
        log("worker shutting down")
        if args.result_file:
            with open(args.result_file, "w") as f:
                json.dump({"worker_process_cpu_s": round(time.process_time() - cpu0, 2)}, f)


def run_worker_mode(args: argparse.Namespace) -> int:
    try:
        asyncio.run(worker_main(args))
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------
def spawn(argv: List[str]) -> subprocess.Popen:
    # Own process group, so a timeout can kill exactly what we started.
    # Child stdout -> our stderr, keeping our stdout for the single JSON object.
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)] + argv,
        stdout=sys.stderr.fileno(),
        stderr=sys.stderr.fileno(),
        start_new_session=True,
    )


def kill_group(p: Optional[subprocess.Popen], grace_s: float = 15.0) -> None:
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    p.wait(timeout=10)


TIMEOUT_SCALE = 1.0  # --timeout-scale


def scenario_timeout_s(name: str, n: int) -> float:
    per = {
        "seq_one_activity": 5.0,  # ~1 s each expected
        "activities_in_one_workflow": 0.5,  # ~15 ms each expected
        "concurrent_workflows": 0.5,
        "signal_latency": 2.0,
        "update_round_trip": 6.0,
    }[name]
    return (120.0 + per * n) * TIMEOUT_SCALE


def loadavg() -> Optional[List[float]]:
    """1/5/15-minute load average: other work on the box skews throughput."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pg_xact_commits(admin_url: str, dbname: str) -> Optional[int]:
    try:
        import psycopg

        with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,)
            ).fetchone()
            return int(row[0]) if row else None
    except Exception:
        return None


def run_scenario(
    name: str, n: int, url: str, topology: str, run_tag: str, admin_url: str, dbname: str, key: str
) -> Dict[str, Any]:
    tq = f"bench_{name}_{topology}_{run_tag}"
    timeout = scenario_timeout_s(name, n)
    tmpdir = tempfile.mkdtemp(prefix="dbosify_bench_")
    ready_file = os.path.join(tmpdir, "worker.ready")
    worker_stats_file = os.path.join(tmpdir, "worker.json")
    result_file = os.path.join(tmpdir, "result.json")
    common = ["--url", url, "--task-queue", tq, "--namespace", NAMESPACE_ACTIVE]
    worker = client = None
    t_begin = time.perf_counter()
    commits0 = pg_xact_commits(admin_url, dbname)
    load_before = loadavg()
    try:
        if topology == "twoproc":
            worker = spawn(["--worker", "--ready-file", ready_file, "--result-file", worker_stats_file] + common)
            deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
            while not os.path.exists(ready_file):
                if worker.poll() is not None:
                    return {"error": f"worker exited early with code {worker.returncode}"}
                if time.monotonic() > deadline:
                    return {"error": f"worker not ready within {WORKER_READY_TIMEOUT_S}s"}
                time.sleep(0.05)
        argv = ["--client", name, "--n", str(n), "--result-file", result_file, "--tag", f"{topology}-{run_tag}"] + common
        if topology == "inproc":
            argv.append("--inproc")
        log(f"scenario {name}: n={n} topology={topology} timeout={timeout:.0f}s")
        client = spawn(argv)
        deadline = time.monotonic() + timeout
        while client.poll() is None:
            if worker is not None and worker.poll() is not None:
                return {"error": f"worker died during scenario (exit code {worker.returncode})"}
            if time.monotonic() > deadline:
                return {"error": f"timeout after {timeout:.1f}s (scenario did not finish)"}
            time.sleep(0.1)
        if not os.path.exists(result_file):
            return {"error": f"client exited with code {client.returncode} and no result"}
        with open(result_file) as f:
            res = json.load(f)
        return res
    finally:
        kill_group(client, grace_s=5.0)
        kill_group(worker)
        elapsed = time.perf_counter() - t_begin
        log(f"scenario {name} finished in {elapsed:.1f}s")
        time.sleep(1.5)  # let pg_stat counters flush
        commits1 = pg_xact_commits(admin_url, dbname)
        worker_cpu = None
        try:
            with open(worker_stats_file) as f:
                worker_cpu = json.load(f).get("worker_process_cpu_s")
        except (OSError, ValueError):
            pass
        _last_meta[key] = {
            "topology": topology,
            "task_queue": tq,
            "timeout_s": timeout,
            "elapsed_s_including_process_startup": round(elapsed, 2),
            "db_xact_commits_all_txns": (commits1 - commits0) if commits0 is not None and commits1 is not None else None,
            "host_loadavg_before": load_before,
            "host_loadavg_after": loadavg(),
        }
        if worker_cpu is not None:
            _last_meta[key]["worker_process_cpu_s_since_ready"] = worker_cpu
        for p in (ready_file, result_file, worker_stats_file):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(tmpdir)
        except OSError:
            pass


_last_meta: Dict[str, Dict[str, Any]] = {}

NOTES = {
    "latency_floor": (
        "With dbos defaults a queued workflow is dequeued by the worker's queue poller every "
        "~1 s (jittered 0.95-1.05), and Client result()/execute_workflow polls the workflow "
        "status every 1 s (first check immediately). execute_workflow latency is therefore "
        "quantized to ~1 s steps: ~1 s when queue wait + execution < 1 s, ~2 s otherwise."
    ),
    "update_reply": (
        "execute_update waits for the reply event with DBOSClient.get_event; dbosify's "
        "Client.connect builds the DBOSClient without LISTEN/NOTIFY, so the reply is found by "
        "a 1 s re-check: request leg is tens of ms, reply leg ~1 s."
    ),
    "signal": (
        "Signals are DBOS send() rows; the worker's recv is woken by LISTEN/NOTIFY, so "
        "signal latency is not poll-bound."
    ),
    "server_side": (
        "server_side.* comes from workflow_status timestamps: queue_wait = created_at -> "
        "started_at_epoch_ms (dequeued), execution = dequeued -> completed_at."
    ),
    "db_xact_commits_all_txns": (
        "delta of pg_stat_database.xact_commit for the bench database over the scenario, "
        "including process start-up, read-only polling transactions and idle pollers"
    ),
    "host_loadavg": "1/5/15-min load average; other jobs on the host skew throughput numbers",
}


def dbos_defaults() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    try:
        from dbos import _core, _queue
        from dbos._sys_db import SystemDatabase

        out["queue_polling_interval_sec"] = _queue.DEFAULT_QUEUE_POLLING_INTERVAL_SEC
        out["client_get_result_polling_interval_sec"] = _core.DEFAULT_POLLING_INTERVAL
        out["recv_get_event_fallback_recheck_with_listener_sec"] = (
            SystemDatabase._notification_fallback_polling_interval
        )
        out["dbos_client_use_listen_notify_in_dbosify_connect"] = False
        out["notification_listener_polling_interval_sec_default"] = 1.0
    except Exception as e:
        out["error"] = repr(e)
    try:
        from dbosify import client as _dc

        out["dbosify_reply_sweep_interval_sec"] = _dc.REPLY_SWEEP_INTERVAL_SECONDS
    except Exception as e:
        out["dbosify_error"] = repr(e)
    return out


def setup_database(url: str, run_tag: str, keep: bool) -> Dict[str, Any]:
    """Create a fresh database on the URL's server; fall back to a fresh
    namespace in the given database if we may not create databases."""
    import psycopg

    global NAMESPACE_ACTIVE
    dbname = f"dbosify_bench_{run_tag}"
    admin_url = url  # connect to the database named in the URL to issue CREATE DATABASE
    try:
        with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
            server_version = conn.execute("SHOW server_version").fetchone()[0]
        log(f"created database {dbname}")
        return {
            "mode": "fresh_database",
            "database": dbname,
            "url": url_with_db(url, dbname),
            "admin_url": admin_url,
            "namespace": NAMESPACE_ACTIVE,
            "schema": f"dbosify_{NAMESPACE_ACTIVE}",
            "server_version": server_version,
            "drop": not keep,
        }
    except Exception as e:
        log(f"cannot create a database ({e}); using a fresh namespace in {url_db(url)}")
        NAMESPACE_ACTIVE = f"bench_{run_tag}"
        with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
            server_version = conn.execute("SHOW server_version").fetchone()[0]
        return {
            "mode": "fresh_namespace",
            "database": url_db(url),
            "url": url,
            "admin_url": admin_url,
            "namespace": NAMESPACE_ACTIVE,
            "schema": f"dbosify_{NAMESPACE_ACTIVE}",
            "server_version": server_version,
            "drop": not keep,
        }


def teardown_database(db: Dict[str, Any]) -> Optional[str]:
    if not db.get("drop"):
        return None
    import psycopg

    err = None
    for attempt in range(6):  # e.g. the server may be briefly out of connection slots
        try:
            with psycopg.connect(libpq_url(db["admin_url"]), autocommit=True) as conn:
                if db["mode"] == "fresh_database":
                    conn.execute(f'DROP DATABASE IF EXISTS "{db["database"]}" WITH (FORCE)')
                else:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{db["schema"]}" CASCADE')
            return None
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            log(f"teardown attempt {attempt + 1} failed: {err}")
            time.sleep(5)
    what = f'database "{db["database"]}"' if db["mode"] == "fresh_database" else f'schema "{db["schema"]}"'
    log(f"could not drop {what}; drop it by hand")
    return err


def orchestrate(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    url = normalize_url(args.url)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else list(ALL_SCENARIOS)
    unknown = [s for s in scenarios if s not in ALL_SCENARIOS]
    sizes = dict(SIZES_QUICK if args.quick else SIZES_FULL)
    if args.n is not None:
        sizes = {k: args.n for k in sizes}
    out: Dict[str, Any] = {
        "benchmark": "dbosify-py",
        "started_at": started_at,
        "quick": bool(args.quick),
        "versions": {
            "dbosify": pkg_version("dbosify"),
            "dbos": pkg_version("dbos"),
            "python": platform.python_version(),
            "psycopg": pkg_version("psycopg"),
            "sqlalchemy": pkg_version("sqlalchemy"),
        },
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_start": loadavg()},
        "sizes": {s: sizes[s] for s in scenarios if s in sizes},
        "payload_bytes": len(PAYLOAD),
    }
    if unknown:
        out["error"] = f"unknown scenarios {unknown}; choose from {ALL_SCENARIOS}"
        print(json.dumps(out, indent=2))
        return 2
    if _IMPORT_ERROR is not None:
        out["error"] = f"cannot import dbosify: {_IMPORT_ERROR}"
        print(json.dumps(out, indent=2))
        return 1
    out["dbos_defaults"] = dbos_defaults()
    run_tag = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + f"_{os.getpid()}"
    try:
        db = setup_database(url, run_tag, args.keep_db)
    except Exception as e:
        out["error"] = f"database setup failed: {type(e).__name__}: {e}"
        print(json.dumps(out, indent=2))
        return 1
    out["postgres"] = {
        "server_version": db["server_version"],
        "isolation": db["mode"],
        "database": db["database"],
        "schema": db["schema"],
        "kept": not db["drop"],
    }
    results: Dict[str, Any] = {}
    try:
        topologies = ["twoproc", "inproc"] if args.topology == "both" else [args.topology]
        for name in scenarios:
            for topo in topologies:
                # The default topology's result goes under the plain scenario
                # name; the in-process variant of a "both" run under name@inproc.
                key = name if topo == topologies[0] else f"{name}@{topo}"
                try:
                    res = run_scenario(
                        name, sizes[name], db["url"], topo, run_tag, db["admin_url"], db["database"], key
                    )
                except Exception as e:
                    res = {"error": f"{type(e).__name__}: {e}"}
                res = {**res, **_last_meta.get(key, {})}
                results[key] = res
                log(f"{key}: {json.dumps(res)}")
    finally:
        err = teardown_database(db)
        if err:
            out["postgres"]["teardown_error"] = err
            out["postgres"]["kept"] = True
    out["scenarios"] = results
    out["notes"] = NOTES
    out["total_run_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=2))
    sys.stdout.flush()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="postgres://user@host:port/db (server to benchmark on)")
    ap.add_argument("--scenarios", default="", help=f"comma list; default all: {','.join(ALL_SCENARIOS)}")
    ap.add_argument("--quick", action="store_true", help="small sizes for a fast smoke run")
    ap.add_argument("--n", type=int, default=None, help="override the size of every selected scenario")
    ap.add_argument(
        "--topology",
        choices=["twoproc", "inproc", "both"],
        default="twoproc",
        help="twoproc: worker and client in separate processes (default); inproc: one process "
        "(client hosts the Worker); both: run each scenario both ways (inproc results under <scenario>@inproc)",
    )
    ap.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        help="multiply every scenario timeout (default timeouts are 120 s + a per-item allowance)",
    )
    ap.add_argument("--keep-db", action="store_true", help="do not drop the fresh database/schema")
    # internal child modes
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--inproc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--task-queue", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--namespace", default=NAMESPACE, help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="x", help=argparse.SUPPRESS)
    args = ap.parse_args()

    global NAMESPACE_ACTIVE, TIMEOUT_SCALE
    NAMESPACE_ACTIVE = args.namespace
    TIMEOUT_SCALE = args.timeout_scale
    if args.worker:
        return run_worker_mode(args)
    if args.client:
        return run_client_mode(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
