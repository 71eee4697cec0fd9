"""An independent KEDA-like client (grpcio, C-core HTTP/2) for orascale's black-box tests.

Generates the stubs from proto/externalscaler.proto at run time, then plays KEDA's call pattern
against ADDR: GetMetricSpec -> GetMetrics -> IsActive under a 3 s deadline, with the metric name
upper-cased, then opens StreamIsActive and waits for the first message. Prints one JSON object.

usage: keda_client.py ADDR QUERY [METRIC_NAME]
"""
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def stubs():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tempfile.mkdtemp(prefix="orascale-py-")
    rc = protoc.main([
        "protoc",
        f"-I{os.path.join(root, 'proto')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "externalscaler.proto",
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    import externalscaler_pb2  # noqa: E402
    import externalscaler_pb2_grpc  # noqa: E402
    return externalscaler_pb2, externalscaler_pb2_grpc


def main():
    addr, query = sys.argv[1], sys.argv[2]
    metric = sys.argv[3] if len(sys.argv) > 3 else "py-metric"
    pb, rpc = stubs()
    result = {}
    with grpc.insecure_channel(addr) as channel:
        stub = rpc.ExternalScalerStub(channel)
        ref = pb.ScaledObjectRef(
            name="py-worker",
            namespace="py",
            scalerMetadata={
                "query": query,
                "targetQueryValue": "2",
                "metricName": metric,
                "scalerAddress": addr,
            },
        )
        spec = stub.GetMetricSpec(ref, timeout=3)
        result["specs"] = [
            {"name": s.metricName, "targetSize": s.targetSize, "targetSizeFloat": s.targetSizeFloat}
            for s in spec.metricSpecs
        ]
        metrics = stub.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref, metricName=metric.upper()), timeout=3
        )
        result["values"] = [
            {"name": v.metricName, "value": v.metricValue, "valueFloat": v.metricValueFloat}
            for v in metrics.metricValues
        ]
        result["active"] = stub.IsActive(ref, timeout=3).result
        stream = stub.StreamIsActive(ref, timeout=10)
        result["pushed"] = next(stream).result
        stream.cancel()
        bad = pb.ScaledObjectRef(name="bad", namespace="py", scalerMetadata={"query": query})
        try:
            stub.GetMetricSpec(bad, timeout=3)
            result["bad"] = "OK"
        except grpc.RpcError as e:
            result["bad"] = e.code().name
            result["bad_message"] = e.details()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
