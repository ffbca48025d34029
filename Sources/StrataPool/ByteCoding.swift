// ByteCoding — the pool's additions to StrataIO's little-endian coder: UUIDs, block pointers,
// and the common header of the pool's self-checksummed blocks (configuration slots, uberblocks).

import StrataIO

extension ByteWriter {
    func put(_ uuid: PoolUUID, at offset: Int) {
        put(uuid.high, at: offset)
        put(uuid.low, at: offset + 8)
    }

    /// The canonical 32-byte block pointer (`BlockPointer.encode`).
    public func put(_ pointer: BlockPointer, at offset: Int) {
        pointer.encode(into: bytes, at: offset)
    }
}

extension ByteReader {
    func uuid(at offset: Int) -> PoolUUID {
        PoolUUID(high: get(UInt64.self, at: offset), low: get(UInt64.self, at: offset + 8))
    }

    /// The canonical 32-byte block pointer (`BlockPointer.decode`).
    public func pointer(at offset: Int) -> BlockPointer {
        BlockPointer.decode(from: bytes, at: offset)
    }

    /// What the common header of a self-checksummed pool block says: magic (bytes 0-7), format
    /// version (8-11), block size (12-15), crc32c of the rest in the last four bytes.
    enum HeaderCheck: Equatable {
        /// All zero: never written.
        case empty
        case invalid(String)
        case newerVersion(UInt32)
        case current
    }

    /// `supported`: the version this build writes; `oldest`: the oldest it still reads.
    func checkHeader(magic: [UInt8], version supported: UInt32, oldest: UInt32? = nil) -> HeaderCheck {
        if isAllZero { return .empty }
        guard bytes.prefix(8).elementsEqual(magic) else { return .invalid("bad magic") }
        guard checksumMatches else { return .invalid("checksum mismatch") }
        let version = get(UInt32.self, at: 8)
        if version > supported { return .newerVersion(version) }
        guard version >= (oldest ?? supported), get(UInt32.self, at: 12) == UInt32(bytes.count) else {
            return .invalid("bad version \(version) or block size")
        }
        return .current
    }
}
