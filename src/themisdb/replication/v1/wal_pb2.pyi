from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamRequest(_message.Message):
    __slots__ = ("follower_id", "from_lsn", "epoch", "last_epoch")
    FOLLOWER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    follower_id: str
    from_lsn: int
    epoch: int
    last_epoch: int
    def __init__(self, follower_id: _Optional[str] = ..., from_lsn: _Optional[int] = ..., epoch: _Optional[int] = ..., last_epoch: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("lsn", "op", "table", "key", "payload", "crc32", "ts", "epoch")
    LSN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    op: str
    table: str
    key: str
    payload: str
    crc32: int
    ts: float
    epoch: int
    def __init__(self, lsn: _Optional[int] = ..., op: _Optional[str] = ..., table: _Optional[str] = ..., key: _Optional[str] = ..., payload: _Optional[str] = ..., crc32: _Optional[int] = ..., ts: _Optional[float] = ..., epoch: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("epoch", "leader_lsn", "leader_time", "records")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEADER_LSN_FIELD_NUMBER: _ClassVar[int]
    LEADER_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    leader_lsn: int
    leader_time: float
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, epoch: _Optional[int] = ..., leader_lsn: _Optional[int] = ..., leader_time: _Optional[float] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("follower_id", "applied_lsn", "epoch")
    FOLLOWER_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    follower_id: str
    applied_lsn: int
    epoch: int
    def __init__(self, follower_id: _Optional[str] = ..., applied_lsn: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class AckReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FollowerStatus(_message.Message):
    __slots__ = ("follower_id", "applied_lsn", "lag_records", "lag_seconds", "last_seen")
    FOLLOWER_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    follower_id: str
    applied_lsn: int
    lag_records: int
    lag_seconds: float
    last_seen: float
    def __init__(self, follower_id: _Optional[str] = ..., applied_lsn: _Optional[int] = ..., lag_records: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., last_seen: _Optional[float] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("node_id", "role", "epoch", "last_lsn", "first_lsn", "followers")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    FIRST_LSN_FIELD_NUMBER: _ClassVar[int]
    FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    epoch: int
    last_lsn: int
    first_lsn: int
    followers: _containers.RepeatedCompositeFieldContainer[FollowerStatus]
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., last_lsn: _Optional[int] = ..., first_lsn: _Optional[int] = ..., followers: _Optional[_Iterable[_Union[FollowerStatus, _Mapping]]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("follower_id",)
    FOLLOWER_ID_FIELD_NUMBER: _ClassVar[int]
    follower_id: str
    def __init__(self, follower_id: _Optional[str] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("data", "lsn", "epoch", "sha256", "last")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    lsn: int
    epoch: int
    sha256: bytes
    last: bool
    def __init__(self, data: _Optional[bytes] = ..., lsn: _Optional[int] = ..., epoch: _Optional[int] = ..., sha256: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...
