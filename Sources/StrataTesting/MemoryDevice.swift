// MemoryDevice — a sparse, zero-filled block device in memory.
//
// Theory. The base image of every crash test: systems under test are formatted onto
// MemoryDevices, and crash images are overlays over snapshots of them. It stores only blocks
// that were written (a `BlockMap`); every other block reads as zeros, so a 1 GiB device costs
// nothing until it is written. `snapshot()` is O(blocks written) dictionary copy and shares
// every block's bytes copy-on-write, so a frozen snapshot is cheap and never changes.
//
// Invariants: offsets and lengths are checked exactly like `BlockDevice` (aligned, non-empty,
// inside the device) and refused with the same `IOError`s; a read-only device refuses writes,
// flushes and discards. Crash behaviour: none of its own — every write is "durable" at once.
// Crash semantics are added by recording (RecordingDevice) and replaying into overlays
// (CrashImageMaterializer), not here. Thread-safe: the map sits behind a `Mutex`.

import StrataIO
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A sparse in-memory `BlockStorage`: unwritten blocks read as zeros, writes are immediate.
///
/// Use it as the device a system under test is formatted on, and take `snapshot()`s as the
/// immutable base images crash images are built over.
public final class MemoryDevice: BlockStorage {
    public let path: String
    public let sizeBytes: UInt64
    public let blockSizeBytes: Int
    public let isReadOnly: Bool
    private let map: Mutex<BlockMap>

    /// A zero-filled device of `sizeBytes` (a multiple of `blockSizeBytes`).
    public init(path: String = "memory", sizeBytes: UInt64, blockSizeBytes: Int = 4096, readOnly: Bool = false) {
        precondition(blockSizeBytes >= 512 && blockSizeBytes.nonzeroBitCount == 1,
                     "block size \(blockSizeBytes) must be a power of two ≥ 512")
        precondition(sizeBytes > 0 && sizeBytes % UInt64(blockSizeBytes) == 0,
                     "size \(sizeBytes) is not a positive multiple of the \(blockSizeBytes)-byte block")
        self.path = path
        self.sizeBytes = sizeBytes
        self.blockSizeBytes = blockSizeBytes
        self.isReadOnly = readOnly
        self.map = Mutex(BlockMap(blockSizeBytes: blockSizeBytes))
    }

    private init(path: String, sizeBytes: UInt64, blockSizeBytes: Int, readOnly: Bool, map: BlockMap) {
        self.path = path
        self.sizeBytes = sizeBytes
        self.blockSizeBytes = blockSizeBytes
        self.isReadOnly = readOnly
        self.map = Mutex(map)
    }

    /// A frozen copy of the current contents (read-only unless asked otherwise). Shares block
    /// bytes copy-on-write; later writes to either device do not show in the other.
    public func snapshot(path: String? = nil, readOnly: Bool = true) -> MemoryDevice {
        let copy = map.withLock { $0 }
        return MemoryDevice(path: path ?? self.path, sizeBytes: sizeBytes, blockSizeBytes: blockSizeBytes,
                            readOnly: readOnly, map: copy)
    }

    /// How many blocks hold data (were written and not discarded).
    public var storedBlockCount: Int { map.withLock { $0.blocks.count } }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try validateRange(path: path, offset: offset, length: buffer.count, blockSizeBytes: blockSizeBytes, sizeBytes: sizeBytes)
        let firstBlock = offset / UInt64(blockSizeBytes)
        try map.withLock { (map: inout BlockMap) throws(IOError) in
            try map.read(into: buffer, firstBlock: firstBlock) { (hole: UnsafeMutableRawBufferPointer, _: UInt64) throws(IOError) in
                // memset: `initializeMemory(as:repeating:)` is a byte loop in debug builds.
                if let base = hole.baseAddress { memset(base, 0, hole.count) }
            }
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        try validateRange(path: path, offset: offset, length: buffer.count, blockSizeBytes: blockSizeBytes, sizeBytes: sizeBytes)
        let copy = [UInt8](buffer)
        let firstBlock = offset / UInt64(blockSizeBytes)
        map.withLock { $0.store(array: copy, firstBlock: firstBlock) }
    }

    public func flush() throws(IOError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
    }

    public func discard(offset: UInt64, length: UInt64) throws(IOError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        try validateRange(path: path, offset: offset, length: Int(length), blockSizeBytes: blockSizeBytes, sizeBytes: sizeBytes)
        let firstBlock = offset / UInt64(blockSizeBytes)
        let count = length / UInt64(blockSizeBytes)
        map.withLock { map in
            for block in firstBlock..<(firstBlock + count) { map.blocks[block] = nil }
        }
    }
}
