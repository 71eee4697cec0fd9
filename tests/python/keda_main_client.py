"""KEDA main's call sequence for an external-push trigger (for v2.21), played with grpcio.

GetMetricSpec first (KEDA builds the HPA from it), then StreamIsActive and StreamMetricSpec open
side by side on one channel; the DBA changes the target row in the SQLite database DB; the new
target must arrive on StreamMetricSpec within WITHIN seconds, and GetMetricSpec must then return
the same spec. Prints one JSON object.

usage: keda_main_client.py ADDR DB WITHIN
"""
import json
import queue
import sqlite3
import sys
import threading
import time

import grpc

from keda_client import stubs

TARGET_QUERY = "select target from targets where name = 'jobs'"


def set_target(db, value):
    conn = sqlite3.connect(db, timeout=5)
    with conn:
        conn.execute("update targets set target = ? where name = 'jobs'", (value,))
    conn.close()


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
    addr, db, within = sys.argv[1], sys.argv[2], float(sys.argv[3])
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
        deadline = time.monotonic() + 10
        while spec_of(stub.GetMetricSpec(ref, timeout=3))[0]["targetSizeFloat"] != 10.0:
            if time.monotonic() > deadline:
                raise SystemExit("GetMetricSpec never served the queried target 10")
            time.sleep(0.05)
        result["spec"] = spec_of(stub.GetMetricSpec(ref, timeout=3))

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
        # Nothing else is waiting: one change, one message.
        try:
            kind, msg = specs.get_nowait()
            result["extra"] = spec_of(msg) if kind == "msg" else kind
        except queue.Empty:
            result["extra"] = None
        active_stream.cancel()
        spec_stream.cancel()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
