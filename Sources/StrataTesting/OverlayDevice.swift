// OverlayDevice — a copy-on-write view over a base image: the cheap way to materialise a crash
// image.
//
// Theory. A crash image is "the base image plus these blocks". Copying a whole device per image
// would cap the harness at a few images per second; an overlay stores only the blocks that
// differ from its base (as `ArraySlice`s shared with the recording) and reads everything else
// through to the base. Writes — a system's recovery writes to the image it opens — land in the
// overlay and never touch the base, so one base serves thousands of images, and an untouched
// overlay can itself be the base of a further overlay (crash during recovery).
//
// Invariants: the base is never written through this device; the geometry (size, block size)
// is the base's; requests are validated like `BlockDevice`'s. Flush is a no-op: an overlay has
// no volatile cache, and crash semantics come from recording, not from here. Thread-safe: the
// overlay map sits behind a `Mutex`; the base must be safe to read concurrently.

import StrataIO
import Synchronization

/// A `BlockStorage` that reads through to an immutable `base` except where its own blocks
/// (initial crash-image blocks, or later writes) override it.
public final class OverlayDevice: BlockStorage {
    public let path: String
    public let base: any BlockStorage
    public var sizeBytes: UInt64 { base.sizeBytes }
    public var blockSizeBytes: Int { base.blockSizeBytes }
    public let isReadOnly: Bool
    private let map: Mutex<BlockMap>

    /// An overlay over `base` whose initial contents differ from the base by `blocks`
    /// (block index → exactly `base.blockSizeBytes` bytes).
    public init(base: any BlockStorage, blocks: [UInt64: ArraySlice<UInt8>] = [:], path: String? = nil,
                readOnly: Bool = false) {
        let blockCount = base.sizeBytes / UInt64(base.blockSizeBytes)
        assert(blocks.allSatisfy { $0.key < blockCount && $0.value.count == base.blockSizeBytes },
               "overlay block outside \(base.path) or of the wrong size")
        self.base = base
        self.path = path ?? base.path
        self.isReadOnly = readOnly
        self.map = Mutex(BlockMap(blockSizeBytes: base.blockSizeBytes, blocks: blocks))
    }

    /// How many blocks differ from the base.
    public var overlayBlockCount: Int { map.withLock { $0.blocks.count } }

    /// The blocks that differ from the base (block index → bytes).
    public var overlayBlocks: [UInt64: ArraySlice<UInt8>] { map.withLock { $0.blocks } }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try validateRange(path: path, offset: offset, length: buffer.count, blockSizeBytes: blockSizeBytes, sizeBytes: sizeBytes)
        let firstBlock = offset / UInt64(blockSizeBytes)
        let base = self.base
        try map.withLock { (map: inout BlockMap) throws(IOError) in
            try map.read(into: buffer, firstBlock: firstBlock) { (hole: UnsafeMutableRawBufferPointer, holeOffset: UInt64) throws(IOError) in
                try base.read(into: hole, at: holeOffset)
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

    /// Discarded blocks read as zeros (the overlay stores zero blocks: the base shows through
    /// otherwise).
    public func discard(offset: UInt64, length: UInt64) throws(IOError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        try validateRange(path: path, offset: offset, length: Int(length), blockSizeBytes: blockSizeBytes, sizeBytes: sizeBytes)
        let zero = BlockMap.zeroBlock(blockSizeBytes: blockSizeBytes)
        let firstBlock = offset / UInt64(blockSizeBytes)
        let count = length / UInt64(blockSizeBytes)
        map.withLock { map in
            for block in firstBlock..<(firstBlock + count) { map.blocks[block] = zero }
        }
    }
}
