// BlockStorage — the synchronous device protocol every layer above StrataIO is written against.
//
// Theory. The hot path runs through an `IOEngine`, but cold paths (labels, uberblocks, space-map
// loads, tools) and everything the crash harness fakes need one small synchronous shape: read,
// write (optionally FUA), flush, discard, and the device's geometry. `BlockDevice` is the real
// implementation; `StrataTesting` wraps it (recording, fault-injecting, copy-on-write crash images)
// without the pool knowing. The contract each implementation keeps:
//
//   - offsets and lengths are multiples of `blockSizeBytes` and inside `[0, sizeBytes)`; a
//     violation is an `IOError` (misaligned / outOfRange), never a partial transfer;
//   - `write(_:at:fua: true)` returns only once the bytes are durable;
//   - `flush()` returns only once every write that completed before the call is durable;
//   - a write that has not been covered by a completed flush or FUA may be lost, reordered or
//     torn at sector granularity by a crash (DESIGN.md, "Crash model");
//   - `path` names the device in every error.
//
// Buffers passed to `BlockDevice` must be aligned for O_DIRECT (use `AlignedBufferPool` or an
// aligned allocation); other implementations accept any address.

#if canImport(Glibc)
import Glibc
#endif

public protocol BlockStorage: AnyObject, Sendable {
    /// The name used in every error and log line about this device.
    var path: String { get }
    /// Usable size; a multiple of `blockSizeBytes`.
    var sizeBytes: UInt64 { get }
    /// The unit of offsets and lengths (the logical block size; 4096 for files).
    var blockSizeBytes: Int { get }
    /// True when writes, flushes and discards are refused.
    var isReadOnly: Bool { get }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError)
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError)
    func flush() throws(IOError)
    func discard(offset: UInt64, length: UInt64) throws(IOError)
}

extension BlockDevice: BlockStorage {
    public var blockSizeBytes: Int { Int(logicalBlockSize) }
}

/// Allocates `byteCount` bytes aligned to 4096 (enough for O_DIRECT on every device we open),
/// zero-filled. The caller deallocates. For cold paths; the hot path uses `AlignedBufferPool`.
public func allocateAlignedBuffer(byteCount: Int) -> UnsafeMutableRawBufferPointer {
    precondition(byteCount > 0 && byteCount % 4096 == 0, "aligned buffer size \(byteCount) is not a positive multiple of 4096")
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: byteCount, alignment: 4096)
    // memset, not `initializeMemory(as:repeating:)`: the generic one is a byte loop in debug
    // builds, where zeroing the space-map buffers of an import dominated the crash tests.
    memset(buffer.baseAddress!, 0, byteCount)
    return buffer
}

extension BlockStorage {
    /// A plain (non-FUA) write.
    @inlinable
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(IOError) {
        try write(buffer, at: offset, fua: false)
    }
}
