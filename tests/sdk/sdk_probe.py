"""Drives the official Couchbase Python SDK (PyPI `couchbase`, 4.x) against a
Conduit node: upsert/get/remove of JSON documents, CAS and flags preserved,
DocumentNotFound for missing documents, a wrong password refused.

Usage: sdk_probe.py HOST:PORT BUCKET USER PASSWORD COUNT
Prints one JSON line with what it did; exits non-zero on any failure.
"""
import json
import sys
from datetime import timedelta

from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.exceptions import AuthenticationException, DocumentNotFoundException
from couchbase.options import ClusterOptions, ClusterTimeoutOptions, GetOptions, UpsertOptions
from couchbase.transcoder import RawBinaryTranscoder


def connect(addr, user, password):
    timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=10), connect_timeout=timedelta(seconds=15),
                                     bootstrap_timeout=timedelta(seconds=15))
    return Cluster(f"couchbase://{addr}", ClusterOptions(PasswordAuthenticator(user, password), timeout_options=timeouts))


def main():
    addr, bucket_name, user, password, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    cluster = connect(addr, user, password)
    coll = cluster.bucket(bucket_name).default_collection()

    for i in range(count):
        key = f"doc-{i:05d}"
        doc = {"id": i, "name": f"user {i}", "tags": ["a", "b"], "nested": {"n": i * 2}}
        res = coll.upsert(key, doc)
        got = coll.get(key)
        assert got.content_as[dict] == doc, (key, got.content_as[dict])
        assert got.cas == res.cas, (key, got.cas, res.cas)

    # Flags round trip: the raw-binary transcoder stores other flags than JSON and
    # refuses to decode a document whose flags came back different.
    raw = bytes(range(256))
    coll.upsert("raw-doc", raw, UpsertOptions(transcoder=RawBinaryTranscoder()))
    assert coll.get("raw-doc", GetOptions(transcoder=RawBinaryTranscoder())).value == raw

    removed = 0
    for i in range(0, count, 2):
        coll.remove(f"doc-{i:05d}")
        removed += 1
    missing = 0
    for i in range(0, count, 2):
        try:
            coll.get(f"doc-{i:05d}")
        except DocumentNotFoundException:
            missing += 1
    assert missing == removed, (missing, removed)
    try:
        coll.remove("never-existed")
        raise AssertionError("remove of a missing document succeeded")
    except DocumentNotFoundException:
        pass
    kept = sum(1 for i in range(1, count, 2) if coll.get(f"doc-{i:05d}").content_as[dict]["id"] == i)
    assert kept == count - removed
    cluster.close()

    refused = False
    try:
        bad = connect(addr, user, password + "-wrong")
        bad.bucket(bucket_name).default_collection().get("doc-00001")
    except AuthenticationException:
        refused = True
    assert refused, "a wrong password was not refused"

    print(json.dumps({"ok": True, "upserted": count, "removed": removed, "missing_after_remove": missing,
                      "kept": kept, "wrong_password_refused": refused}))


if __name__ == "__main__":
    main()
