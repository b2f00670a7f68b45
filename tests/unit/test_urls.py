"""The URLs a user configures (``tasks.core.urls``): checked without contacting
anything, shown without their secrets."""

from __future__ import annotations

import pytest

from tasks.core.urls import (
    StorageUrl,
    check_broker_url,
    check_endpoint_url,
    check_redis_url,
    redact,
    split_storage_url,
)
from tasks.errors import InvalidInput


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("s3://key:secret@bucket/p", "s3://***@bucket/p"),
        ("s3://key:p@ss@bucket/p", "s3://***@bucket/p"),
        ("redis://ad:pa@ss@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
        ("unix:///run/r.sock?password=Secret&db=1", "unix:///run/r.sock?password=***&db=1"),
        ("s3://bucket/p@q", "s3://bucket/p@q"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redact_hides_user_info(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@redis.internal",
        "rediss://user:pw@host:6380/15",
        "redis://host/2?socket_timeout=5",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=3",
    ],
)
def test_good_redis_urls(url: str) -> None:
    check_redis_url(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:notaport/0", "not a valid URL"),
        ("redis://h:70000/0", "not a valid URL"),
        ("redis://h:6379/abc", "database must be a number"),
        ("redis://h:6379/1?db=x", "database must be a number"),
        ("redis://h:6379/1/2", "expected redis://"),
        ("unix://", "expected unix:///PATH"),
        ("http://h", "must be a redis://"),
    ],
)
def test_bad_redis_urls_say_why(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_redis_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Xy7#Secret@redis.internal:6379/0",
        "redis://:Ab/Cd+Ef@redis.internal:6379/0",
        "redis://:Ab?Secret@redis.internal:6379/0",
        "unix:///run/redis.sock?password=Secret&db=x",
    ],
)
def test_a_rejected_url_is_never_quoted(url: str) -> None:
    """A password with an unencoded reserved character splits the URL where
    no redaction finds it: the message names the problem, not the URL."""
    with pytest.raises(ValueError) as caught:
        check_redis_url(url)
    assert "Secret" not in str(caught.value) and "Cd+Ef" not in str(caught.value)


def test_broker_urls() -> None:
    for good in (
        "amqp://guest:guest@localhost:5672//",
        "redis://h1:6379/0;redis://h2:6379/0",  # kombu's failover list
        "redis+socket:///run/redis.sock?virtual_host=2",
    ):
        check_broker_url(good)
    with pytest.raises(ValueError, match="redis\\+socket:///PATH"):
        check_broker_url("unix:///run/redis.sock")
    with pytest.raises(ValueError, match="database must be a number"):
        check_broker_url("redis://h1:6379/0;redis://h2:6379/x")


def test_endpoints() -> None:
    check_endpoint_url("http://127.0.0.1:9000")
    check_endpoint_url("https://s3.eu-west-1.amazonaws.com")
    for bad in ("notaurl", "http://", "ftp://host", "http://h:x", "http://h?x=1"):
        with pytest.raises(ValueError):
            check_endpoint_url(bad)


def test_storage_urls() -> None:
    assert split_storage_url("s3://wal-bucket/a/b/") == StorageUrl("s3", "wal-bucket", "a/b")
    assert split_storage_url("file:///srv/w%20al") == StorageUrl("file", "/srv/w al", "")
    for bad, problem in [
        ("s3://", "no bucket"),
        ("s3://key:secret@bucket", "credentials do not belong"),
        ("s3://Bad_Bucket", "invalid S3 bucket name"),
        ("file://relative/p", "absolute path"),
        ("ftp://x/y", "unsupported storage URL"),
        ("s3://bucket/p?x=1", "no query"),
    ]:
        with pytest.raises(InvalidInput, match=problem) as caught:
            split_storage_url(bad)
        assert "secret" not in str(caught.value)
