#!/usr/bin/env python3
"""Call pgnm with only a Redis client and MessagePack.

    pip install redis msgpack
    PGNM_REDIS_URL=redis://127.0.0.1:6379 PGNM_PREFIX=pgnm python3 ping.py

Sends `ping` to the checker role through the router, prints the reply, then
sends a command nobody serves and prints the typed error that comes back.
"""

import json
import os
import socket
import sys
import time
import uuid

import msgpack
import redis

PREFIX = os.environ.get("PGNM_PREFIX", "pgnm")
INGRESS = "{%s:router}:in" % PREFIX  # the router's inbox: every caller writes here
# Our own reply stream. It must live under "<prefix>:reply:"; the services only
# append to it if it exists (XADD NOMKSTREAM), so we create it and let it expire.
REPLY_STREAM = "%s:reply:py-%s-%s" % (PREFIX, socket.gethostname(), uuid.uuid4().hex[:8])
REPLY_TTL_MS = 30_000


def call(r, command, args=None, role=None, timeout_s=5.0):
    """Sends one command and waits for its reply until its deadline."""
    request_id = str(uuid.uuid4())
    request = {
        "version": 1,
        "id": request_id,  # also the idempotency key: re-send with the same id to retry
        "command": command,
        "replyTo": REPLY_STREAM,
        "deadline": int((time.time() + timeout_s) * 1000),  # Unix epoch milliseconds
        "caller": "python-example",
    }
    if role is not None:
        request["role"] = role
    if args is not None:
        request["args"] = args
    r.xadd(INGRESS, {"m": msgpack.packb(request)})

    last_id = "0-0"
    deadline = time.monotonic() + timeout_s + 1.0
    while time.monotonic() < deadline:
        r.pexpire(REPLY_STREAM, REPLY_TTL_MS)
        block_ms = max(1, int((deadline - time.monotonic()) * 1000))
        for _stream, entries in r.xread({REPLY_STREAM: last_id}, block=block_ms) or []:
            for entry_id, fields in entries:
                last_id = entry_id
                if b"m" not in fields:
                    continue  # the entry that created the stream
                reply = msgpack.unpackb(fields[b"m"])
                if reply["id"] == request_id:
                    r.xdel(REPLY_STREAM, entry_id)
                    return reply
    raise TimeoutError("no reply to %s within its deadline" % command)


def main():
    r = redis.Redis.from_url(os.environ.get("PGNM_REDIS_URL", "redis://127.0.0.1:6379"))
    r.xadd(REPLY_STREAM, {"created": "python-example"})
    r.pexpire(REPLY_STREAM, REPLY_TTL_MS)
    try:
        ok = call(r, "ping", {"echo": "hello from python"}, role="checker")
        print(json.dumps(ok, indent=2, sort_keys=True))
        if ok.get("error"):
            return 1
        err = call(r, "noSuchCommand")
        print(json.dumps(err, indent=2, sort_keys=True))
        return 0 if err["error"]["code"] == "UNKNOWN_COMMAND" else 1
    finally:
        r.delete(REPLY_STREAM)


if __name__ == "__main__":
    sys.exit(main())
