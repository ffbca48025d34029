// BlockMap — sparse block contents, the storage behind MemoryDevice, OverlayDevice and crash
// images.
//
// Theory. A device image is a map from block index to that block's bytes; a block that is not
// in the map reads from a fallback (zeros for a MemoryDevice, the base image for an
// OverlayDevice). Values are `ArraySlice<UInt8>`s, so one recorded write of many blocks is a
// single array shared (copy-on-write) by every image that keeps it: materialising a crash
// image copies dictionary entries, never data. Invariant: every value holds exactly
// `blockSizeBytes` bytes, and every key is below the device's block count. Nothing here is on
// disk; it lives and dies with the process.

import StrataIO

/// Checks a request against a device's geometry: aligned offset and length, non-empty, inside
/// the device. Shared by every `BlockStorage` in this module so they refuse the same inputs as
/// `BlockDevice` does.
func validateRange(path: String, offset: UInt64, length: Int, blockSizeBytes: Int,
                   sizeBytes: UInt64) throws(IOError) {
    let alignment = UInt64(blockSizeBytes)
    guard offset % alignment == 0 else {
        throw .misaligned(path: path, what: "offset", value: offset, alignment: alignment)
    }
    guard length > 0 else {
        throw .badLength(path: path, length: 0, maximum: sizeBytes)
    }
    guard UInt64(length) % alignment == 0 else {
        throw .misaligned(path: path, what: "length", value: UInt64(length), alignment: alignment)
    }
    guard offset <= sizeBytes, UInt64(length) <= sizeBytes - offset else {
        throw .outOfRange(path: path, offset: offset, length: UInt64(length), sizeBytes: sizeBytes)
    }
}

struct BlockMap: Sendable {
    let blockSizeBytes: Int
    var blocks: [UInt64: ArraySlice<UInt8>]

    init(blockSizeBytes: Int, blocks: [UInt64: ArraySlice<UInt8>] = [:]) {
        precondition(blockSizeBytes > 0 && blockSizeBytes.nonzeroBitCount == 1,
                     "block size \(blockSizeBytes) is not a power of two")
        self.blockSizeBytes = blockSizeBytes
        self.blocks = blocks
    }

    /// Stores a copy of `bytes` (a whole number of blocks) starting at block `firstBlock`.
    /// The copy is one array; each block is a slice of it.
    mutating func store(_ bytes: UnsafeRawBufferPointer, firstBlock: UInt64) {
        precondition(bytes.count % blockSizeBytes == 0, "store of \(bytes.count) bytes is not whole blocks")
        store(array: [UInt8](bytes), firstBlock: firstBlock)
    }

    /// Stores an already-copied array (a whole number of blocks) starting at `firstBlock`.
    mutating func store(array: [UInt8], firstBlock: UInt64) {
        precondition(array.count % blockSizeBytes == 0, "store of \(array.count) bytes is not whole blocks")
        let count = array.count / blockSizeBytes
        for index in 0..<count {
            let start = index * blockSizeBytes
            blocks[firstBlock + UInt64(index)] = array[start..<(start + blockSizeBytes)]
        }
    }

    /// Fills `buffer` (whole blocks from `firstBlock`) from the map; runs of missing blocks are
    /// passed to `missing` with their sub-buffer and device offset.
    func read(into buffer: UnsafeMutableRawBufferPointer, firstBlock: UInt64,
              missing: (UnsafeMutableRawBufferPointer, UInt64) throws(IOError) -> Void) throws(IOError) {
        precondition(buffer.count % blockSizeBytes == 0, "read of \(buffer.count) bytes is not whole blocks")
        let count = buffer.count / blockSizeBytes
        var runStart: Int? = nil
        for index in 0...count {
            let present: ArraySlice<UInt8>? = index < count ? blocks[firstBlock + UInt64(index)] : nil
            if index < count, present == nil {
                if runStart == nil { runStart = index }
                continue
            }
            if let start = runStart {
                let sub = UnsafeMutableRawBufferPointer(rebasing: buffer[(start * blockSizeBytes)..<(index * blockSizeBytes)])
                try missing(sub, (firstBlock + UInt64(start)) * UInt64(blockSizeBytes))
                runStart = nil
            }
            if let slice = present {
                assert(slice.count == blockSizeBytes, "stored block of \(slice.count) bytes")
                slice.withUnsafeBytes { source in
                    UnsafeMutableRawBufferPointer(rebasing: buffer[(index * blockSizeBytes)..<((index + 1) * blockSizeBytes)])
                        .copyMemory(from: source)
                }
            }
        }
    }

    /// A block of zeros, shared by every discard.
    static func zeroBlock(blockSizeBytes: Int) -> ArraySlice<UInt8> {
        ArraySlice(repeating: 0, count: blockSizeBytes)
    }
}
