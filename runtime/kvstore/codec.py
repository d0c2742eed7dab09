"""The stored object: a header that says what the payload is valid for, then the engine's KV bytes.

    b"RKVS" | uint32 little-endian header length | header (JSON) | payload | HMAC-SHA256 (32 bytes)

The MAC covers every byte before it, keyed by a secret of the runtime's installation (derived from its
identity secret, runtime/spec/identity.py): an object written by anyone else (another installation or
namespace, a tenant with write access to its own bucket, a hand-edited file) is refused before a byte of
it is even parsed, let alone handed to `llama_state_seq_set_data`. Decoding then checks the rest: the
magic, the header, the format version, the payload length (a truncated object), the payload checksum, the
decompressed size, and then, in `check_scope`, that the snapshot belongs to the scope and its token ids to
the key. Any failure raises `SnapshotRejected` with a reason the store counts; wrong bytes are never handed
to an engine.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from dataclasses import dataclass
from typing import Literal

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engines.base import KVSnapshot
from .keys import FORMAT_VERSION, Scope, snapshot_hash

MAGIC = b"RKVS"
_LEN = struct.Struct("<I")
# A header holds the token ids: 16 MiB is ~2M tokens, far beyond any context.
MAX_HEADER_BYTES = 16 << 20

MAC_BYTES = 32

RejectReason = Literal["corrupt", "truncated", "mismatch", "forged"]
Compression = Literal["none", "zstd"]


class SnapshotRejected(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


class SnapshotHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    scope_hash: str = Field(description="Scope.root_hash: tenant salt, model, version, digest, fingerprint")
    model: str
    model_version: str
    model_digest: str
    engine_fingerprint: str
    block_size: int
    token_count: int
    token_ids: tuple[int, ...]
    compression: Compression
    payload_length: int = Field(description="bytes of the payload as stored (after compression)")
    raw_length: int = Field(description="bytes of the engine's KV data")
    checksum: str = Field(description="sha256 of the stored payload")
    created: float = Field(description="unix seconds")


@dataclass(frozen=True)
class CompressionPolicy:
    """Compress only where it pays. f16 KV gains ~1.09x from zstd (and costs ~80 ms per 46 MB to
    compress, ~47 ms to decompress), so it stays raw; quantized or sparse KV compresses well.

    A sample (a few slices spread over the payload) is compressed first; the payload is compressed only
    if the sample's ratio reaches `min_ratio`, and kept compressed only if the whole one does too.
    """

    enabled: bool = True
    level: int = 1
    min_ratio: float = 1.2
    min_bytes: int = 4096
    sample_slices: int = 4
    slice_bytes: int = 64 << 10

    def sample(self, data: bytes) -> bytes:
        if len(data) <= self.sample_slices * self.slice_bytes:
            return data
        step = len(data) // self.sample_slices
        return b"".join(data[i * step : i * step + self.slice_bytes] for i in range(self.sample_slices))

    def choose(self, data: bytes) -> tuple[Compression, bytes]:
        if not self.enabled or len(data) < self.min_bytes:
            return "none", data
        compressor = zstandard.ZstdCompressor(level=self.level)
        sample = self.sample(data)
        if (
            len(sample) < len(data)
            and len(sample) / max(1, len(compressor.compress(sample))) < self.min_ratio
        ):
            return "none", data
        packed = compressor.compress(data)
        if len(data) / max(1, len(packed)) < self.min_ratio:
            return "none", data
        return "zstd", packed


def _mac(key: bytes, data: bytes | memoryview) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def encode(
    scope: Scope,
    snapshot: KVSnapshot,
    policy: CompressionPolicy,
    *,
    mac_key: bytes,
    created: float | None = None,
) -> bytes:
    compression, payload = policy.choose(snapshot.data)
    header = SnapshotHeader(
        format_version=FORMAT_VERSION,
        scope_hash=scope.root_hash,
        model=scope.model,
        model_version=scope.model_version,
        model_digest=scope.model_digest,
        engine_fingerprint=snapshot.fingerprint,
        block_size=scope.block_size,
        token_count=len(snapshot.token_ids),
        token_ids=snapshot.token_ids,
        compression=compression,
        payload_length=len(payload),
        raw_length=len(snapshot.data),
        checksum=hashlib.sha256(payload).hexdigest(),
        created=time.time() if created is None else created,
    )
    head = header.model_dump_json().encode()
    body = b"".join((MAGIC, _LEN.pack(len(head)), head, payload))
    return body + _mac(mac_key, body)


def read_header(blob: bytes) -> tuple[SnapshotHeader, int]:
    """The header and the payload's offset; enough of the blob to hold the header is required."""
    if len(blob) < len(MAGIC) + _LEN.size:
        raise SnapshotRejected("truncated", f"{len(blob)} bytes, shorter than the preamble")
    if blob[: len(MAGIC)] != MAGIC:
        raise SnapshotRejected("corrupt", "bad magic")
    (length,) = _LEN.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if length > MAX_HEADER_BYTES:
        raise SnapshotRejected("corrupt", f"header length {length}")
    if len(blob) < start + length:
        raise SnapshotRejected("truncated", "object ends inside the header")
    try:
        header = SnapshotHeader.model_validate_json(blob[start : start + length])
    except ValidationError as exc:
        raise SnapshotRejected("corrupt", f"bad header: {exc.error_count()} errors") from None
    return header, start + length


def authenticate(blob: bytes, mac_key: bytes) -> memoryview:
    """The object without its MAC, once the MAC is right; nothing of it is parsed before."""
    if len(blob) < len(MAGIC) + _LEN.size + MAC_BYTES:
        raise SnapshotRejected("truncated", f"{len(blob)} bytes, shorter than the preamble and MAC")
    body = memoryview(blob)[:-MAC_BYTES]
    if not hmac.compare_digest(_mac(mac_key, body), blob[-MAC_BYTES:]):
        raise SnapshotRejected("forged", "the MAC does not match this installation's key")
    return body


def decode(blob: bytes, *, mac_key: bytes) -> tuple[SnapshotHeader, KVSnapshot]:
    """Authenticate, parse and verify an object on its own (not yet against a scope: see `check_scope`)."""
    body = authenticate(blob, mac_key)
    header, offset = read_header(bytes(body[: len(MAGIC) + _LEN.size + MAX_HEADER_BYTES]))
    if header.format_version != FORMAT_VERSION:
        raise SnapshotRejected("mismatch", f"format version {header.format_version}")
    if header.token_count != len(header.token_ids):
        raise SnapshotRejected("corrupt", "token count disagrees with the token ids")
    payload = body[offset:]
    if len(payload) < header.payload_length:
        raise SnapshotRejected("truncated", f"payload {len(payload)} of {header.payload_length} bytes")
    if len(payload) > header.payload_length:
        raise SnapshotRejected("corrupt", "bytes after the payload")
    if hashlib.sha256(payload).hexdigest() != header.checksum:
        raise SnapshotRejected("corrupt", "payload checksum")
    if header.compression == "zstd":
        try:
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=header.raw_length)
        except zstandard.ZstdError as exc:
            raise SnapshotRejected("corrupt", f"zstd: {exc}") from None
    else:
        data = bytes(payload)
    if len(data) != header.raw_length:
        raise SnapshotRejected("corrupt", f"raw length {len(data)} != {header.raw_length}")
    return header, KVSnapshot(token_ids=header.token_ids, data=data, fingerprint=header.engine_fingerprint)


def check_scope(header: SnapshotHeader, scope: Scope, block_hash: str) -> None:
    """The object belongs to `scope` and its token ids hash to `block_hash` (the key it was found under)."""
    if header.scope_hash != scope.root_hash or header.block_size != scope.block_size:
        raise SnapshotRejected("mismatch", "scope (tenant salt, model, version, digest or fingerprint)")
    if header.engine_fingerprint != scope.engine_fingerprint:
        raise SnapshotRejected("mismatch", "engine fingerprint")
    if header.model_digest != scope.model_digest:
        raise SnapshotRejected("mismatch", "model digest")
    if snapshot_hash(scope, header.token_ids) != block_hash:
        raise SnapshotRejected("mismatch", "token ids do not hash to the key")
