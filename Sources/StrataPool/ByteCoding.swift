// ByteCoding — little-endian field writers and readers for fixed-layout on-disk blocks.
//
// Every on-disk structure of the pool (configuration slots, uberblocks, space-map checksum
// tables) is a fixed-size block with fields at fixed offsets, written little-endian whatever the
// host. A writer never grows its block; a field past the end is a programmer error and traps.
// Readers check bounds the same way: the caller validated the block's size and checksum first.

import StrataIO

struct ByteWriter {
    let bytes: UnsafeMutableRawBufferPointer

    init(_ bytes: UnsafeMutableRawBufferPointer) { self.bytes = bytes }

    func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "field at \(offset) past block end \(bytes.count)")
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    func put(_ uuid: PoolUUID, at offset: Int) {
        put(uuid.high, at: offset)
        put(uuid.low, at: offset + 8)
    }

    func put(ascii text: String, at offset: Int, capacity: Int) {
        let utf8 = Array(text.utf8)
        precondition(utf8.count <= capacity, "string of \(utf8.count) bytes exceeds field of \(capacity)")
        for (index, byte) in utf8.enumerated() { bytes[offset + index] = byte }
        for index in utf8.count..<capacity { bytes[offset + index] = 0 }
    }

    /// Stores crc32c of `[0, count-4)` in the last four bytes.
    func sealWithChecksum() {
        let body = UnsafeRawBufferPointer(rebasing: bytes[0..<(bytes.count - 4)])
        put(CRC32C.checksum(body), at: bytes.count - 4)
    }
}

struct ByteReader {
    let bytes: UnsafeRawBufferPointer

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    func get<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "field at \(offset) past block end \(bytes.count)")
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    func uuid(at offset: Int) -> PoolUUID {
        PoolUUID(high: get(UInt64.self, at: offset), low: get(UInt64.self, at: offset + 8))
    }

    func string(at offset: Int, length: Int) -> String? {
        precondition(offset + length <= bytes.count)
        return String(validating: bytes[offset..<(offset + length)], as: UTF8.self)
    }

    /// True when the last four bytes hold crc32c of the rest.
    var checksumMatches: Bool {
        let body = UnsafeRawBufferPointer(rebasing: bytes[0..<(bytes.count - 4)])
        return CRC32C.checksum(body) == get(UInt32.self, at: bytes.count - 4)
    }

    /// True when every byte is zero (eight bytes at a time: every label read checks 68 slots).
    var isAllZero: Bool {
        let words = bytes.count / 8
        for index in 0..<words where bytes.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) != 0 { return false }
        for index in (words * 8)..<bytes.count where bytes[index] != 0 { return false }
        return true
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

    func checkHeader(magic: [UInt8], version supported: UInt32) -> HeaderCheck {
        if isAllZero { return .empty }
        guard bytes.prefix(8).elementsEqual(magic) else { return .invalid("bad magic") }
        guard checksumMatches else { return .invalid("checksum mismatch") }
        let version = get(UInt32.self, at: 8)
        if version > supported { return .newerVersion(version) }
        guard version == supported, get(UInt32.self, at: 12) == UInt32(bytes.count) else {
            return .invalid("bad version \(version) or block size")
        }
        return .current
    }
}
