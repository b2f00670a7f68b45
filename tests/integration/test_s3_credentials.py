"""S3 refusing us. Rotated S3 credentials are found without a restart (found
by a drill: a node kept its first boto3 session, so after its key was rotated
in the shared credentials file and the old key deleted, every upload was
refused until the worker restarted). A bucket policy that denies PutObject but
not ListBucket is seen, and its repair too, by the write probe the node's
prober sends after a refused upload (``StorageHealth``).

A moto server of the test's own enforces IAM auth (``INITIAL_NO_AUTH_ACTION_COUNT``:
the setup's first actions pass unsigned, every later one needs a live key of
an IAM user); the storage reads its credentials only from
``AWS_SHARED_CREDENTIALS_FILE``, which the test rewrites as an operator would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from tasks.backup.health import StorageHealth
from tasks.errors import AccessDenied
from tasks.storage import open_storage, s3_clients
from tasks.storage.s3 import S3Storage
from tasks.storage.s3_small import WRITE_PROBE_KEY
from tests.cluster import wait_for
from tests.fixtures_s3 import AWS_ENV_CLEARED, MotoServer
from tests.servers import free_port

pytestmark = pytest.mark.integration

USER = "walbackup-node"
BUCKET = "walbackup-rotation"
REGION = "us-east-1"
ALLOW_ALL = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
)
DENY_PUT = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", '
    f'"Action": "s3:PutObject", "Resource": "arn:aws:s3:::{BUCKET}/*"}}]}}'
)
SETUP_ACTIONS = 4
"""create_user, put_user_policy, create_access_key, create_bucket: unsigned."""

Key = tuple[str, str]


def _iam(endpoint_url: str, key: Key) -> BaseClient:
    return boto3.client("iam", endpoint_url=endpoint_url, region_name=REGION,
                        aws_access_key_id=key[0], aws_secret_access_key=key[1])  # fmt: skip


def _new_key(iam: BaseClient) -> Key:
    created = iam.create_access_key(UserName=USER)["AccessKey"]
    return created["AccessKeyId"], created["SecretAccessKey"]


def _write_credentials(path: Path, key: Key) -> None:
    """Atomically, as a secrets agent rotating the file would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"[default]\naws_access_key_id = {key[0]}\naws_secret_access_key = {key[1]}\n")
    os.replace(tmp, path)


@pytest.fixture
def auth_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MotoServer, Key]]:
    """A moto server enforcing IAM auth, with a bucket and an IAM user allowed
    everything; its first access key."""
    server = MotoServer(free_port(), tmp_path / "moto.log")
    with monkeypatch.context() as env:
        env.setenv("INITIAL_NO_AUTH_ACTION_COUNT", str(SETUP_ACTIONS))
        server.start()
    try:
        anyone = ("testing", "testing")
        iam = _iam(server.endpoint_url, anyone)
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="all", PolicyDocument=ALLOW_ALL)
        key = _new_key(iam)
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=REGION,
                          aws_access_key_id=anyone[0], aws_secret_access_key=anyone[1])  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        # Auth is on from here: a key no user has is refused.
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            s3.list_objects_v2(Bucket=BUCKET)
        yield server, key
    finally:
        server.stop()


@pytest.fixture
def credentials_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """boto3 finds credentials only in this file (the suite's dummy keys and a
    developer's profile are out of its environment)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *AWS_ENV_CLEARED):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "credentials"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return path


def _rotate(server: MotoServer, path: Path, old: Key) -> Key:
    """A new key in the file, the old one deleted: what an operator does."""
    new = _new_key(_iam(server.endpoint_url, old))
    _write_credentials(path, new)
    _iam(server.endpoint_url, new).delete_access_key(UserName=USER, AccessKeyId=old[0])
    return new


def test_rotated_keys_in_the_credentials_file_are_used_after_one_refusal(
    auth_moto: tuple[MotoServer, Key], credentials_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, k1 = auth_moto
    _write_credentials(credentials_file, k1)
    storage = open_storage(f"s3://{BUCKET}/p", s3_endpoint_url=server.endpoint_url, max_attempts=1)
    assert isinstance(storage, S3Storage)
    storage.put_bytes("one", b"1")

    k2 = _rotate(server, credentials_file, k1)
    # The first call still signs with the deleted key ...
    with pytest.raises(AccessDenied, match="InvalidAccessKeyId"):
        storage.put_bytes("two", b"2")
    # ... and the refusal made the storage read the file again: no restart.
    storage.put_bytes("two", b"2")
    assert storage.read_bytes("two") == b"2"

    # A refusal within RECHECK_CREDENTIALS_S of the last re-read reads nothing
    # (a real permission problem rebuilds no clients at every attempt) ...
    k3 = _rotate(server, credentials_file, k2)
    for _ in range(2):
        with pytest.raises(AccessDenied, match="InvalidAccessKeyId"):
            storage.put_bytes("three", b"3")
    # ... and once it has passed, the next refusal does.
    monkeypatch.setattr(s3_clients, "RECHECK_CREDENTIALS_S", 0.0)
    with pytest.raises(AccessDenied, match="InvalidAccessKeyId"):
        storage.put_bytes("three", b"3")
    storage.put_bytes("three", b"3")
    assert [o.key for o in storage.list("")] == ["one", "three", "two"]
    assert _iam(server.endpoint_url, k3).list_access_keys(UserName=USER)["AccessKeyMetadata"]
    storage.close()


def test_a_write_probe_sees_a_policy_deny_puts_and_allow_them_again(
    auth_moto: tuple[MotoServer, Key], credentials_file: Path
) -> None:
    server, key = auth_moto
    _write_credentials(credentials_file, key)
    storage = open_storage(f"s3://{BUCKET}/p", s3_endpoint_url=server.endpoint_url, max_attempts=1)
    admin = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=REGION,
                         aws_access_key_id=key[0], aws_secret_access_key=key[1])  # fmt: skip
    # A versioned bucket: probes must not pile versions up during an outage.
    admin.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    storage.probe(write=True)  # creates the probe object

    admin.put_bucket_policy(Bucket=BUCKET, Policy=DENY_PUT)
    with pytest.raises(AccessDenied):
        storage.put_bytes("x", b"x")
    storage.probe()  # listing is still allowed: a read-only probe cannot tell
    refused: list[bool] = []

    def probe(write: bool) -> None:
        try:
            storage.probe(write)
        except AccessDenied:
            refused.append(write)
            raise

    health = StorageHealth(probe, interval_s=0.05)
    health.start()
    try:
        health.failed(refused_write=True)
        # Only a probe that failed, then passes, is a recovery: the prober's
        # first probe must come before the repair (a loaded machine was late).
        wait_for(lambda: refused, 10, "the prober's write probe to be refused")
        assert refused[0] is True and health.degraded and health.recoveries == 0
        admin.delete_bucket_policy(Bucket=BUCKET)
        wait_for(lambda: health.recoveries == 1, 10, "the prober to see PUTs allowed")
    finally:
        health.stop()
    storage.put_bytes("x", b"x")
    versions = admin.list_object_versions(Bucket=BUCKET, Prefix=f"p/{WRITE_PROBE_KEY}")
    assert len(versions["Versions"]) == 1  # however many probes passed or were refused
    storage.close()
