"""S3 server-side encryption (``WALBACKUP_S3_SSE``, ``WALBACKUP_S3_SSE_KMS_KEY_ID``)
against the moto server: every PUT asks for it, and moto says what it stored
(``ServerSideEncryption`` and the KMS key on HEAD)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate
from tasks.storage import open_storage, segment_key, timeline_prefix
from tasks.storage.s3 import S3Storage
from tasks.storage.s3_small import WRITE_PROBE_KEY
from tests.cluster import SEG_SIZE, Cluster
from tests.fixtures_s3 import AWS_ENV, MotoServer, s3_client
from tests.integration.test_cli_cluster import assert_one_line, walbackup
from tests.integration.test_retention import name

pytestmark = pytest.mark.integration


@pytest.fixture
def kms_key(moto_server: MotoServer) -> str:
    """A key of moto's KMS, on the same server as its S3."""
    kms = boto3.client(
        "kms", endpoint_url=moto_server.endpoint_url, region_name=AWS_ENV["AWS_DEFAULT_REGION"]
    )
    key_id: str = kms.create_key(Description="walbackup test")["KeyMetadata"]["KeyId"]
    kms.close()
    return key_id


def head(moto_server: MotoServer, storage: S3Storage, key: str) -> tuple[str | None, str | None]:
    client = s3_client(moto_server.endpoint_url)
    full = f"{storage.prefix}/{key}" if storage.prefix else key
    response = client.head_object(Bucket=storage.bucket, Key=full)
    client.close()
    return response.get("ServerSideEncryption"), response.get("SSEKMSKeyId")


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / name(1)
    path.write_bytes(os.urandom(SEG_SIZE))
    yield path


@pytest.mark.parametrize("mode", ["AES256", "aws:kms"])
def test_every_put_asks_for_the_encryption(
    moto_server: MotoServer, s3_bucket_url: str, kms_key: str, segment: Path, mode: str
) -> None:
    key_id = kms_key if mode == "aws:kms" else None
    storage = open_storage(
        s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url, sse=mode, sse_kms_key_id=key_id
    )
    assert isinstance(storage, S3Storage)
    assert storage.put_args() == {"ServerSideEncryption": mode} | (
        {"SSEKMSKeyId": kms_key} if key_id else {}
    )
    ttid = TenantTimelineId("e" * 32, "1" * 32)
    key = segment_key(ttid, name(1))
    # Under SSE-KMS the ETag proves nothing: the upload is verified by reading it back.
    assert not storage.upload_file(key, segment, SEG_SIZE).already_present
    assert storage.upload_file(key, segment, SEG_SIZE).already_present
    storage.put_bytes(timeline_prefix(ttid) + "_retained", b"{}")
    storage.probe(write=True)
    for stored in (key, timeline_prefix(ttid) + "_retained", WRITE_PROBE_KEY):
        assert head(moto_server, storage, stored) == (mode, key_id)
    (listed,) = [i for i in storage.list(timeline_prefix(ttid)) if i.key == key]
    assert (listed.etag is None) == (mode == "aws:kms")  # a KMS ETag is no MD5
    storage.close()


def test_a_node_encrypts_what_it_uploads_and_status_says_so(
    make_cluster: Callable[..., Cluster], moto_server: MotoServer, s3_bucket_url: str, kms_key: str
) -> None:
    sse = {"WALBACKUP_S3_SSE": "aws:kms", "WALBACKUP_S3_SSE_KMS_KEY_ID": kms_key}
    cluster = make_cluster(
        remote_storage=s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url, settings=sse
    )
    cluster.start_node(1)
    cluster.start_beat()
    cluster.wait_nodes([1])
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    simulate([cluster.workdir(1)], [ttid], segments=4, seg_size=SEG_SIZE)
    cluster.wait_backup(ttid, Lsn(5 * SEG_SIZE), 60)
    env = {**sse, "WALBACKUP_REMOTE_STORAGE": s3_bucket_url}
    env |= {"WALBACKUP_S3_ENDPOINT_URL": moto_server.endpoint_url}
    retained = walbackup(
        "retain", str(ttid), "--before", name(2), "--yes", redis_url=cluster.redis_url, **env
    )
    assert retained.returncode == 0, retained.stderr

    storage = open_storage(s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    assert isinstance(storage, S3Storage)
    objects = [i.key for i in storage.list(timeline_prefix(ttid))]
    wal = [k for k in objects if "/_ledger/" not in k]
    assert len(wal) == 4  # segments 2-4 and the _retained marker
    assert any("/_ledger/deleted-" in k for k in objects)  # the retain, recorded
    for key in objects:  # the ledger's objects too
        assert head(moto_server, storage, key) == ("aws:kms", kms_key), key

    status = walbackup("status", redis_url=cluster.redis_url, **env)
    assert f"server-side encryption: aws:kms (KMS key {kms_key})" in status.stdout
    document = json.loads(walbackup("status", "--json", redis_url=cluster.redis_url, **env).stdout)
    assert document["storage"] == {
        "url": s3_bucket_url,
        "sse": "aws:kms",
        "sse_kms_key_id": kms_key,
    }
    assert "testing" not in status.stdout  # the (dummy) AWS credentials


def test_an_unknown_mode_fails_at_start_naming_the_variable(redis_url: str) -> None:
    for env, variable in (
        ({"WALBACKUP_S3_SSE": "aws:kms:dsse"}, "WALBACKUP_S3_SSE"),
        ({"WALBACKUP_S3_SSE_KMS_KEY_ID": "alias/wal"}, "WALBACKUP_S3_SSE_KMS_KEY_ID"),
    ):
        assert_one_line(walbackup("status", redis_url=redis_url, **env), 2, variable)
