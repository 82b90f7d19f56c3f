"""Sends raw, hand-encoded requests to registro.v1.Store/Store with the official grpcio client and
prints each outcome as JSON: {"case": ..., "code": "OK" | <grpc status name>, "details": ...}.

Usage: python raw_requests.py HOST:PORT
The bytes are written by hand because no well-behaved client would send them.
"""

import json
import sys

import grpc


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    length, out = len(payload), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(out) + payload


CASES = {
    "valid": field(1, "hola desde grpcio".encode()),
    "invalid_utf8": field(1, b"\xff\xfe bad"),
    "truncated_protobuf": field(1, b"hello")[:-2],
    "garbage_bytes": b"\xff\xff\xff\xff\xff",
    "over_transport_limit": field(1, b"x" * (4 * 1024 * 1024 + 16)),
    "empty_message": b"",
}


def main() -> None:
    target = sys.argv[1]
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        store = channel.unary_unary("/registro.v1.Store/Store")
        calls = [(case, body, None) for case, body in CASES.items()]
        # A valid message, gzip-compressed: registro's servers take no compressed requests.
        calls.append(("gzip_compressed", CASES["valid"], grpc.Compression.Gzip))
        for case, body, compression in calls:
            try:
                store(body, timeout=10, compression=compression)
                print(json.dumps({"case": case, "code": "OK", "details": ""}))
            except grpc.RpcError as e:
                print(json.dumps({"case": case, "code": e.code().name, "details": e.details()}))


if __name__ == "__main__":
    main()
