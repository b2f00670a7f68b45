"""What an S3 segment upload puts on the wire (moto server): the body is bound
to the SigV4 signature through signed checksum headers, not through a
SHA-256 pass of botocore's over the body (``S3Storage``'s client config).
And what the prober's write probes leave in a bucket under object lock."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tasks.storage import open_storage
from tasks.storage.s3 import S3Storage
from tasks.storage.s3_small import WRITE_PROBE_KEY
from tests.fixtures_s3 import MotoServer, s3_client

pytestmark = pytest.mark.integration

SEG_SIZE = 1 << 20


def test_a_segment_put_signs_its_checksums_not_its_payload(
    moto_server: MotoServer, s3_bucket_url: str, tmp_path: Path
) -> None:
    data = os.urandom(SEG_SIZE)
    path = tmp_path / "000000010000000000000001"
    path.write_bytes(data)
    storage = open_storage(s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    assert isinstance(storage, S3Storage)
    sent: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                for k, v in request.headers.items()
            }
        )

    storage._client().meta.events.register("before-send.s3.PutObject", capture)
    assert not storage.upload_file("t/l/000000010000000000000001", path, SEG_SIZE).already_present
    storage.close()
    (headers,) = sent
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert headers["content-md5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert (
        headers["x-amz-checksum-sha256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    )
    signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-md5", "x-amz-checksum-sha256", "if-none-match"} <= set(signed)


def test_write_probes_leave_one_object_under_object_lock(moto_server: MotoServer) -> None:
    """Versioned, every version kept for a day: a probe that wrote a version
    each time would pile them up for as long as an outage lasts."""
    client = s3_client(moto_server.endpoint_url)
    bucket = "walbackup-locked"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
    })  # fmt: skip
    storage = open_storage(f"s3://{bucket}/p", s3_endpoint_url=moto_server.endpoint_url)
    for _ in range(3):
        storage.probe(write=True)
    versions = client.list_object_versions(Bucket=bucket)["Versions"]
    assert [v["Key"] for v in versions] == [f"p/{WRITE_PROBE_KEY}"]
    storage.close()
    client.close()
