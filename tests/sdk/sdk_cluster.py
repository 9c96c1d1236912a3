"""Drives the official Couchbase Python SDK (PyPI `couchbase`, 4.x) against a Conduit
cluster bootstrapped from one node: upserts, gets, removes, and every copy read back
with get_all_replicas / get_any_replica.

Usage: sdk_cluster.py HOST:KVPORT BUCKET USER PASSWORD COUNT REPLICAS
Prints one JSON line with what it did; exits non-zero on any failure.
"""
import json
import sys
import time
from datetime import timedelta

from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.exceptions import DocumentNotFoundException
from couchbase.options import ClusterOptions, ClusterTimeoutOptions


def main():
    addr, bucket_name, user, password = sys.argv[1:5]
    count, replicas = int(sys.argv[5]), int(sys.argv[6])
    timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=10), connect_timeout=timedelta(seconds=15),
                                     bootstrap_timeout=timedelta(seconds=15))
    cluster = Cluster(f"couchbase://{addr}", ClusterOptions(PasswordAuthenticator(user, password),
                                                             timeout_options=timeouts))
    coll = cluster.bucket(bucket_name).default_collection()
    docs = {}
    for i in range(count):
        key = f"doc-{i:05d}"
        doc = {"id": i, "body": "x" * (i % 50)}
        coll.upsert(key, doc)
        docs[key] = doc
    for key, doc in docs.items():
        assert coll.get(key).content_as[dict] == doc, key

    # Every copy: the active plus each replica, once replication caught up (bounded).
    deadline = time.time() + 60
    copies = None
    equal = False
    while time.time() < deadline:
        copies = min(len(list(coll.get_all_replicas(k))) for k in list(docs)[:50])
        equal = all(all(r.content_as[dict] == docs[k] for r in coll.get_all_replicas(k)) for k in list(docs)[:50])
        if copies == replicas + 1 and equal:
            break
        time.sleep(0.5)
    for key in list(docs)[:50]:
        assert coll.get_any_replica(key).content_as[dict] == docs[key], key

    removed = 0
    for key in list(docs)[::2]:
        coll.remove(key)
        removed += 1
    missing = 0
    for key in list(docs)[::2]:
        try:
            coll.get(key)
        except DocumentNotFoundException:
            missing += 1
    assert missing == removed, (missing, removed)
    cluster.close()
    print(json.dumps({"ok": True, "upserted": count, "removed": removed, "copies_per_doc": copies,
                      "replicas_equal": equal}))


if __name__ == "__main__":
    main()
