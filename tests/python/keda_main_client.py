"""KEDA main's call sequence for an external-push trigger (for v2.21), played with grpcio.

GetMetricSpec once first (KEDA builds the HPA from it; on a new server that is the static
fallback, since GetMetricSpec never waits for the target query), then StreamIsActive and
StreamMetricSpec open side by side on one channel, with no GetMetricSpec loop before (KEDA has
none): the stream's open message must already be the queried target. The DBA changes the target
row in the SQLite database DB; the new target must arrive on StreamMetricSpec within WITHIN
seconds, GetMetricSpec must then return the same spec, and after at least two more target polls
(counted on the server's metrics at METRICS) no other message may have come. Prints one JSON
object.

usage: keda_main_client.py ADDR DB WITHIN METRICS
"""
import json
import queue
import sqlite3
import sys
import threading
import time
import urllib.request

import grpc

from keda_client import stubs

TARGET_QUERY = "select target from targets where name = 'jobs'"


def set_target(db, value):
    conn = sqlite3.connect(db, timeout=5)
    with conn:
        conn.execute("update targets set target = ? where name = 'jobs'", (value,))
    conn.close()


def polls(metrics):
    """Polls completed on the server so far (orascale_polls_total, every connection and result)."""
    text = urllib.request.urlopen("http://%s/metrics" % metrics, timeout=3).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("orascale_polls_total{")
    )


def wait_polls(metrics, n):
    """Waits until the server has completed `n` more polls."""
    start, deadline = polls(metrics), time.monotonic() + 20
    while polls(metrics) < start + n:
        if time.monotonic() > deadline:
            raise SystemExit("fewer than %d polls in 20 s" % n)
        time.sleep(0.05)


def spec_of(msg):
    return [
        {"name": s.metricName, "targetSize": s.targetSize, "targetSizeFloat": s.targetSizeFloat}
        for s in msg.metricSpecs
    ]


def drain(stream, out):
    """Puts each message of a server stream on `out` (a thread per stream, as KEDA's goroutines)."""
    try:
        for msg in stream:
            out.put(("msg", msg))
        out.put(("end", "OK"))
    except grpc.RpcError as e:
        out.put(("end", e.code().name))


def main():
    addr, db, within, metrics = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    pb, rpc = stubs()
    result = {}
    with grpc.insecure_channel(addr) as channel:
        stub = rpc.ExternalScalerStub(channel)
        ref = pb.ScaledObjectRef(
            name="py-push",
            namespace="py",
            scalerMetadata={
                "query": "select count(*) from jobs where status = 'queued'",
                "targetQueryValue": "5",
                "metricName": "py-jobs",
                "targetQuery": TARGET_QUERY,
                "targetPollInterval": "500ms",
                "scalerAddress": addr,
            },
        )
        # The target poller is created by this call; its first poll follows in the background.
        result["first_spec"] = spec_of(stub.GetMetricSpec(ref, timeout=3))

        active, specs = queue.Queue(), queue.Queue()
        active_stream = stub.StreamIsActive(ref)
        spec_stream = stub.StreamMetricSpec(ref)
        threading.Thread(target=drain, args=(active_stream, active), daemon=True).start()
        threading.Thread(target=drain, args=(spec_stream, specs), daemon=True).start()
        kind, msg = specs.get(timeout=10)
        result["on_open"] = spec_of(msg) if kind == "msg" else kind
        kind, msg = active.get(timeout=10)
        result["active"] = msg.result if kind == "msg" else kind

        set_target(db, 25)
        changed = time.monotonic()
        kind, msg = specs.get(timeout=10)
        result["changed_after_s"] = time.monotonic() - changed
        result["within"] = result["changed_after_s"] <= within
        result["changed"] = spec_of(msg) if kind == "msg" else kind
        result["get_after_change"] = spec_of(stub.GetMetricSpec(ref, timeout=3))
        # One change, one message: past at least two more target polls (three polls on the
        # server, in case the trigger's own poller is one of them), and a moment for a message
        # the last one would have caused, nothing else has come.
        wait_polls(metrics, 3)
        try:
            kind, msg = specs.get(timeout=0.3)
            result["extra"] = spec_of(msg) if kind == "msg" else kind
        except queue.Empty:
            result["extra"] = None
        active_stream.cancel()
        spec_stream.cancel()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
