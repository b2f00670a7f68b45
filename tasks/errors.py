"""The exception tree of walbackup.

    WalBackupError
    ├── Permanent                 retrying cannot help
    │   ├── InvalidInput          malformed id, LSN, segment name, URL, setting
    │   ├── SegmentFileError      a local segment file is missing, short or oversized
    │   │   └── DamagedCopy       this node's copy is unreadable or outvoted by its peers'
    │   ├── ChecksumMismatch      remote bytes differ from ours (split brain)
    │   ├── NotFound              the remote object does not exist
    │   ├── BucketMissing         the configured bucket does not exist
    │   └── AccessDenied          credentials rejected
    └── Retryable                 may succeed later
        ├── StorageUnavailable    endpoint unreachable, timeouts, throttling, 5xx
        ├── AgreementPending      a peer holding the segment has not published its checksum
        └── NoAgreement           the nodes' copies differ and no majority agrees

Only ``tasks/storage/s3.py`` translates botocore errors into this tree.
"""


class WalBackupError(Exception):
    """Base of every error walbackup raises on purpose."""


class Permanent(WalBackupError):
    """Retrying the same operation cannot succeed."""


class Retryable(WalBackupError):
    """The operation may succeed if tried again later."""


class InvalidInput(Permanent, ValueError):
    """A value given by a user or found on disk is malformed."""


class SegmentFileError(Permanent):
    """A local WAL segment file is missing or has the wrong size."""


class ChecksumMismatch(Permanent):
    """An object already stored remotely holds different bytes than ours."""


class NotFound(Permanent):
    """The requested remote object does not exist."""


class BucketMissing(Permanent):
    """The configured bucket does not exist."""


class AccessDenied(Permanent):
    """The storage refused our credentials."""


class StorageUnavailable(Retryable):
    """The storage endpoint is unreachable, throttling or failing."""


class DamagedCopy(SegmentFileError):
    """This node's copy of a segment cannot be archived: unreadable, or its
    bytes differ from those the other nodes agree on."""


class AgreementPending(Retryable):
    """A live peer holding the segment has not published its checksum yet."""


class NoAgreement(Retryable):
    """The nodes' copies of a segment differ and no majority agrees on one."""
