#!/usr/bin/env python3
"""A gRPC client that is not ours: discovers keybroker through server reflection only.

Knows no .proto file. It lists services, pulls their descriptors by reflection, builds message
classes at run time, then makes a GenerateDataKey -> Decrypt round trip with a bearer token.
Prints one JSON line describing what it saw; exits non-zero on any failure.

usage: reflection_client.py ENDPOINT_HOST:PORT CA_PEM TOKEN_FILE KEY
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(**kw):
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**kw)])))
        if resp.HasField("error_response"):
            raise RuntimeError(resp.error_response.error_message)
        return resp

    services = [s.name for s in ask(list_services="").list_services_response.service]
    pool = descriptor_pool.DescriptorPool()
    seen = set()

    def add_files(blobs):
        for blob in blobs:
            fd = descriptor_pb2.FileDescriptorProto.FromString(blob)
            if fd.name in seen:
                continue
            seen.add(fd.name)
            for dep in fd.dependency:
                if dep not in seen:
                    add_files(ask(file_by_filename=dep).file_descriptor_response.file_descriptor_proto)
            pool.Add(fd)

    add_files(ask(file_containing_symbol="keybroker.v1.DataKeys").file_descriptor_response.file_descriptor_proto)
    return services, pool


def main():
    endpoint, ca, token_file, key = sys.argv[1:5]
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with open(token_file) as f:
        token = f.read().strip()
    channel = grpc.secure_channel(endpoint, creds)
    services, pool = reflect(channel)
    svc = pool.FindServiceByName("keybroker.v1.DataKeys")

    def call(method_name, **fields):
        m = svc.FindMethodByName(method_name)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        rpc = channel.unary_unary(
            f"/keybroker.v1.DataKeys/{method_name}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return rpc(req_cls(**fields), metadata=[("authorization", f"Bearer {token}")], timeout=30)

    context = {"dataset": "reflection", "run": "py-1"}
    generated = call("GenerateDataKey", key=key, context=context)
    opened = call("Decrypt", ciphertext=generated.ciphertext, context=context)
    try:
        call("Decrypt", ciphertext=generated.ciphertext, context={"dataset": "other"})
        wrong_context = "OK"
    except grpc.RpcError as e:
        wrong_context = e.code().name
    try:
        channel.unary_unary("/keybroker.v1.DataKeys/GenerateDataKey")(b"", timeout=30)
        no_token = "OK"
    except grpc.RpcError as e:
        no_token = e.code().name
    print(json.dumps({
        "services": sorted(services),
        "methods": sorted(m.name for m in svc.methods),
        "key_version": generated.key_version,
        "plaintext_len": len(generated.plaintext),
        "round_trip": opened.plaintext == generated.plaintext,
        "wrong_context": wrong_context,
        "no_token": no_token,
    }))


if __name__ == "__main__":
    main()
