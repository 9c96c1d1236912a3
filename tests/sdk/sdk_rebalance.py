"""Drives the official Couchbase Python SDK (PyPI `couchbase`, 4.x) against a Conduit
cluster while it rebalances (cluster.md §10.2 T9): a loop of upsert + get on a key set,
bootstrapped from one node, for a duration or until a stop file appears. Counts the
operations that failed after the SDK's own retries and the acknowledged upserts; at
the end re-reads every acknowledged key and compares it with its last acknowledged
value.

Usage: sdk_rebalance.py HOST:KVPORT BUCKET USER PASSWORD KEYS MAX_SECONDS STOP_FILE [READY_FILE]
Prints one JSON line:
  {"ok":…,"ops":…,"upserts_acked":…,"gets":…,"failed":…,"failures":[…],
   "keys_acked":…,"reread_ok":…,"reread_bad":[…],"seconds":…}
Exits non-zero when an operation failed or an acknowledged upsert does not read back.
"""
import json
import os
import sys
import time
from datetime import timedelta

from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.exceptions import CouchbaseException
from couchbase.options import ClusterOptions, ClusterTimeoutOptions


def main():
    addr, bucket_name, user, password = sys.argv[1:5]
    keys, max_seconds, stop_file = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
    ready_file = sys.argv[8] if len(sys.argv) > 8 else None
    timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=10), connect_timeout=timedelta(seconds=15),
                                     bootstrap_timeout=timedelta(seconds=15))
    cluster = Cluster(f"couchbase://{addr}", ClusterOptions(PasswordAuthenticator(user, password),
                                                             timeout_options=timeouts))
    cluster.wait_until_ready(timedelta(seconds=30))
    coll = cluster.bucket(bucket_name).default_collection()
    acked = {}
    failures = []
    failed = ops = gets = upserts = 0
    started = time.time()
    i = 0
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ready\n")
    while time.time() - started < max_seconds and not os.path.exists(stop_file):
        i += 1
        key = f"sdk-{i % keys:05d}"
        doc = {"i": i, "key": key}
        ops += 1
        try:
            coll.upsert(key, doc)
            acked[key] = i
            upserts += 1
        except CouchbaseException as e:
            failed += 1
            if len(failures) < 20:
                failures.append(f"upsert {key}: {type(e).__name__}: {e}"[:400])
            continue
        ops += 1
        try:
            got = coll.get(key).content_as[dict]
            gets += 1
            if got.get("i") != i:
                failed += 1
                if len(failures) < 20:
                    failures.append(f"get {key}: read {got}, wrote {i}")
        except CouchbaseException as e:
            failed += 1
            if len(failures) < 20:
                failures.append(f"get {key}: {type(e).__name__}: {e}"[:400])

    reread_bad = []
    for key, want in sorted(acked.items()):
        try:
            got = coll.get(key).content_as[dict].get("i")
        except CouchbaseException as e:
            got = f"{type(e).__name__}"
        if got != want:
            reread_bad.append([key, want, got])
    cluster.close()
    ok = failed == 0 and not reread_bad
    print(json.dumps({"ok": ok, "ops": ops, "upserts_acked": upserts, "gets": gets, "failed": failed,
                      "failures": failures, "keys_acked": len(acked), "reread_ok": len(acked) - len(reread_bad),
                      "reread_bad": reread_bad[:20], "seconds": round(time.time() - started, 1)}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
