"""The exception tree of walbackup.

    WalBackupError
    ├── Permanent                 retrying cannot help
    │   ├── InvalidInput          malformed id, LSN, segment name, URL, setting
    │   ├── SegmentFileError      a local segment file is missing, short, oversized,
    │   │   │                     or changed while we hashed and sent it
    │   │   └── DamagedCopy       this node's copy is unreadable or outvoted by its peers'
    │   │       └── InvalidWalHeader  its first page is no valid long page header for it
    │   ├── ChecksumMismatch      remote bytes differ from ours (split brain), or
    │   │                         a stored object fails its own checksum (corrupt)
    │   ├── NotFound              the remote object does not exist
    │   ├── BucketMissing         the configured bucket does not exist
    │   ├── AccessDenied          credentials rejected
    │   └── LedgerConflict        the archive ledger records two different bytes for a
    │                             segment, or one of its pages is unreadable
    └── Retryable                 may succeed later
        ├── StorageUnavailable    endpoint unreachable, timeouts, throttling, 5xx
        ├── UploadCorrupted       the server received other bytes than we sent
        │                         (corrupted in transit); nothing is left stored
        ├── AgreementPending      a peer holding the segment has not published its checksum
        ├── NoAgreement           the nodes' copies differ and no majority agrees
        └── ForeignArchive        this node's storage is not the cluster's archive

Only ``tasks/storage/s3_errors.py`` translates botocore errors into this tree.
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
    """A local WAL segment file is missing, has the wrong size, or changed
    between being hashed and being stored."""


class ChecksumMismatch(Permanent):
    """Remote bytes are not the ones expected: an object already stored holds
    different bytes than ours (split brain), or an object read back does not
    match the checksum stored with it (corrupt in storage)."""


class NotFound(Permanent):
    """The requested remote object does not exist."""


class BucketMissing(Permanent):
    """The configured bucket does not exist."""


class AccessDenied(Permanent):
    """The storage refused our credentials."""


class NotReplicated(Retryable):
    """Redis took a write no replica confirmed: an act that must not follow a
    write a failover could undo waits (``LeaseWindow.confirm_replicated``)."""


class StorageUnavailable(Retryable):
    """The storage endpoint is unreachable, throttling or failing."""


class ForeignArchive(Retryable):
    """This node's storage is not the cluster's archive (another endpoint,
    bucket or prefix): it uploads nothing there until that is fixed."""


class DamagedCopy(SegmentFileError):
    """This node's copy of a segment cannot be archived: unreadable, or its
    bytes differ from those the other nodes agree on."""


class InvalidWalHeader(DamagedCopy):
    """A complete segment's first page is not a valid PostgreSQL long page
    header for it (SPEC §5): the message names the field, what it holds and
    what was expected."""


class AgreementPending(Retryable):
    """A live peer holding the segment has not published its checksum yet."""


class NoAgreement(Retryable):
    """The nodes' copies of a segment differ and no majority agrees on one."""


class UploadCorrupted(Retryable):
    """An upload reached the server with other bytes than the ones we hashed
    (the server refused them, or stored them and we deleted the object):
    nothing corrupt is left under the key, and sending again may succeed."""


class BrokerUnavailable(Retryable):
    """Celery's broker could not take a task message (Redis down or restarting)."""


class LedgerConflict(Permanent):
    """Two writers recorded different bytes for a segment in the archive ledger,
    or a ledger page in the bucket cannot be read as one."""


class SegmentLost(Permanent):
    """A segment the archive ledger records as archived has no object: the
    archive lost it (a deletion, a lifecycle rule), which a restore must not
    read as the end of the archive."""
