"""The URLs a user configures, checked without contacting anything, and shown
without their secrets.

Settings check them at start (``tasks.config``), so a mistyped port, database
or endpoint stops the process with the variable's name instead of surfacing
later as a traceback in every task, or as a silent fallback (redis-py reads
``redis://host/abc`` as database 0; botocore rejects an endpoint only when the
first client is built). ``split_storage_url`` is also what ``open_storage``
builds its backend from.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from tasks.errors import InvalidInput

_USERINFO = re.compile(r"//[^/]*@")
"""Up to the last ``@`` of the authority: a password may hold one unencoded."""
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*")

STORAGE_EXPECTED = "expected s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def redact(url: str) -> str:
    """``url`` fit for messages and logs: any ``user:password@`` and
    ``password=`` query value (redis-py reads one) replaced."""
    return _PASSWORD_PARAM.sub(r"\1***", _USERINFO.sub("//***@", url, count=1))


# The checks below never quote the URL they reject: a password with an
# unencoded "/", "#" or "?" splits it where no redaction can find the secret.
# The setting's name says which URL it is.


def _split(url: str) -> SplitResult:
    """``urlsplit`` with its port checked (``.port`` raises on a bad one)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed for the check
    except ValueError:
        raise ValueError(
            "not a valid URL: its port is not a number 0-65535, or its host is malformed "
            "(a password's reserved characters, such as / # ? @ :, must be percent-encoded)"
        ) from None
    return parts


def _database(parts: SplitResult) -> None:
    """The database number, from the path (``/N``) or ``?db=N``, if given."""
    db = parts.path.strip("/")
    query = parse_qs(parts.query).get("db", [])
    for value in ([db] if db else []) + query:
        if not unquote(value).isdigit():
            raise ValueError(f"the database must be a number, not {value!r}")


def check_redis_url(url: str) -> None:
    """A ``redis://``/``rediss://`` URL with a valid port and database, or a
    ``unix://`` one with a socket path; ``ValueError`` saying what is wrong."""
    parts = _split(url)
    if parts.scheme in ("redis", "rediss"):
        if "/" in parts.path.strip("/"):
            raise ValueError(
                "expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (a password's reserved "
                "characters, such as / # ? @ :, must be percent-encoded)"
            )
        _database(parts)
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("expected unix:///PATH/TO/SOCKET[?db=DB]")
        _database(parts._replace(path=""))
    else:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")


def check_broker_url(url: str) -> None:
    """Kombu's: ``amqp://``/``amqps://`` or Redis (``redis://``, ``rediss://``,
    ``redis+socket://``), each with a valid port; several Redis URLs
    separated by ``;`` are a failover list. Kombu has no ``unix://``."""
    for one in url.split(";"):
        if one.startswith("unix://"):
            raise ValueError(
                "a unix:// socket cannot be Celery's broker (kombu has no such transport): "
                "write it redis+socket:///PATH/TO/SOCKET[?virtual_host=DB]"
            )
        if one.startswith(("amqp://", "amqps://", "redis+socket://")):
            _split(one)
        elif one.startswith(("redis://", "rediss://")):
            check_redis_url(one)
        else:
            raise ValueError(
                "must be a redis://, rediss://, redis+socket://, amqp:// or amqps:// URL"
            )


def check_endpoint_url(url: str) -> None:
    """An S3 endpoint: ``http(s)://HOST[:PORT][/PATH]``."""
    parts = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://HOST[:PORT]")
    if parts.query or parts.fragment:
        raise ValueError("no query or fragment allowed")


def validate_bucket_name(bucket: str) -> str:
    """S3's bucket naming rules (the ones that matter for a URL)."""
    if _BUCKET_NAME.fullmatch(bucket) is None or ".." in bucket or _IPV4.fullmatch(bucket):
        raise InvalidInput(
            f"invalid S3 bucket name {bucket!r}: 3 to 63 lower-case letters, digits, '.' "
            "or '-', starting and ending with a letter or digit"
        )
    return bucket


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as addresses; ``ValueError`` naming the bad one."""
    out = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item.strip()!r} is not host:port (a comma-separated list)")
        out.append((host.strip("[]"), int(port)))
    return out


class StorageUrl(NamedTuple):
    scheme: str
    """``file`` or ``s3``."""
    location: str
    """The directory (``file``) or the bucket (``s3``)."""
    prefix: str
    """``s3`` only: the key prefix, without surrounding slashes."""


def split_storage_url(url: str) -> StorageUrl:
    """``file:///PATH`` or ``s3://BUCKET[/PREFIX]``; ``InvalidInput`` naming
    what is wrong (the URL shown redacted)."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidInput(f"invalid storage URL {shown!r}: {STORAGE_EXPECTED}") from None
    if parts.query or parts.fragment:
        raise InvalidInput(f"invalid storage URL {shown!r}: no query or fragment allowed")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidInput(
                f"invalid storage URL {shown!r}: a file URL takes an absolute path, file:///PATH"
            )
        return StorageUrl("file", unquote(parts.path), "")
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            raise InvalidInput(
                f"invalid storage URL {shown!r}: credentials do not belong in the URL; "
                "boto3 reads them from its standard chain (environment, ~/.aws, instance role)"
            )
        if not parts.netloc:
            raise InvalidInput(f"invalid storage URL {shown!r}: no bucket; {STORAGE_EXPECTED}")
        try:
            bucket = validate_bucket_name(parts.netloc)
        except InvalidInput as exc:
            raise InvalidInput(f"invalid storage URL {shown!r}: {exc}") from None
        return StorageUrl("s3", bucket, unquote(parts.path).strip("/"))
    raise InvalidInput(f"unsupported storage URL {shown!r}: {STORAGE_EXPECTED}")
