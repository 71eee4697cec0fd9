"""An independent reflection client: grpcio + grpcio-reflection, which speaks only
`grpc.reflection.v1alpha` (as grpcurl < 1.9, grpcui and most language clients do).

It knows nothing of orascale's proto: every service, method and message comes from the server's
reflection answers. It runs grpcurl command lines — the very lines in docs/operations.md — with
the subset of grpcurl's syntax those use:

    grpcurl [-plaintext] [-cacert F] [-cert F] [-key F] [-authority NAME] [-d JSON] ADDR list
    grpcurl ... ADDR describe SYMBOL
    grpcurl ... -d JSON ADDR SERVICE/METHOD

usage: reflection_client.py ADDR FILE
  FILE holds one grpcurl command line per line; the ADDR in each is replaced by the given one.
  Prints one JSON array: per command, its verb and result (or its error).
"""
import json
import shlex
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def parse(argv):
    opts = {"plaintext": False, "cacert": None, "cert": None, "key": None, "authority": None, "d": None}
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-plaintext":
            opts["plaintext"] = True
        elif a in ("-cacert", "-cert", "-key", "-authority", "-d"):
            opts[a[1:]] = argv[i + 1]
            i += 1
        elif a.startswith("-"):
            raise SystemExit(f"unsupported grpcurl flag {a}")
        else:
            rest.append(a)
        i += 1
    return opts, rest


def channel(addr, opts):
    if opts["plaintext"]:
        return grpc.insecure_channel(addr)
    read = lambda p: open(p, "rb").read() if p else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(opts["cacert"]),
        private_key=read(opts["key"]),
        certificate_chain=read(opts["cert"]),
    )
    options = []
    if opts["authority"]:
        options.append(("grpc.ssl_target_name_override", opts["authority"]))
    return grpc.secure_channel(addr, creds, options)


def run(addr, line):
    argv = shlex.split(line)
    assert argv[0] == "grpcurl", line
    opts, rest = parse(argv[1:])
    rest[0] = addr  # the documented address → the test server's
    with channel(addr, opts) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        pool = descriptor_pool.DescriptorPool(db)
        verb = rest[1]
        if verb == "list":
            return {"verb": "list", "services": sorted(db.get_services())}
        if verb == "describe":
            svc = pool.FindServiceByName(rest[2])
            return {
                "verb": "describe",
                "service": svc.full_name,
                "methods": {
                    m.name: {
                        "input": m.input_type.full_name,
                        "output": m.output_type.full_name,
                        "server_streaming": bool(getattr(m, "server_streaming", False)),
                    }
                    for m in svc.methods
                },
            }
        service, method = verb.rsplit("/", 1)
        m = pool.FindServiceByName(service).methods_by_name[method]
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        request = json_format.Parse(opts["d"] or "{}", req_cls())
        call = ch.unary_unary(
            f"/{service}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        response = call(request, timeout=3)
        return {
            "verb": "call",
            "method": verb,
            "response": json_format.MessageToDict(response),
        }


def main():
    addr, path = sys.argv[1], sys.argv[2]
    out = []
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        try:
            out.append(run(addr, line))
        except grpc.RpcError as e:
            out.append({"command": line, "error": f"{e.code().name}: {e.details()}"})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
