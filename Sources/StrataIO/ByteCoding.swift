// ByteCoding — little-endian field writers and readers for fixed-layout on-disk blocks.
//
// Every on-disk structure of Strata (pool labels and uberblocks, space-map tables, log blocks,
// dnodes, extent-map and xattr blocks) is a fixed-size block with fields at fixed offsets,
// written little-endian whatever the host. A writer never grows its block; a field past the end is
// a programmer error and traps. Readers check bounds the same way: the caller has validated the
// block's size (and, where it has one, its checksum) first. One coder for every layer, so that a
// field is encoded the same way wherever it lives.

public struct ByteWriter {
    public let bytes: UnsafeMutableRawBufferPointer

    @inlinable
    public init(_ bytes: UnsafeMutableRawBufferPointer) { self.bytes = bytes }

    @inlinable
    public func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "field at \(offset) past block end \(bytes.count)")
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    /// Copies `source` to `[offset, offset + source.count)`.
    @inlinable
    public func put(bytes source: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset + source.count <= bytes.count, "\(source.count) bytes at \(offset) past block end \(bytes.count)")
        source.withUnsafeBytes { raw in
            guard let base = raw.baseAddress, let target = bytes.baseAddress else { return }
            (target + offset).copyMemory(from: base, byteCount: raw.count)
        }
    }

    /// Stores `text` as UTF-8 in a zero-padded field of `capacity` bytes.
    public func put(ascii text: String, at offset: Int, capacity: Int) {
        let utf8 = Array(text.utf8)
        precondition(utf8.count <= capacity, "string of \(utf8.count) bytes exceeds field of \(capacity)")
        put(bytes: utf8 + [UInt8](repeating: 0, count: capacity - utf8.count), at: offset)
    }

    /// Stores crc32c of `[0, count-4)` in the last four bytes (for blocks that carry their own
    /// checksum because nothing points to them: labels, uberblocks, log blocks).
    public func sealWithChecksum() {
        let body = UnsafeRawBufferPointer(rebasing: bytes[0..<(bytes.count - 4)])
        put(CRC32C.checksum(body), at: bytes.count - 4)
    }
}

public struct ByteReader {
    public let bytes: UnsafeRawBufferPointer

    @inlinable
    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    @inlinable
    public func get<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "field at \(offset) past block end \(bytes.count)")
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// True when `expected` stands at `offset` (false when it would run past the end).
    @inlinable
    public func matches(_ expected: [UInt8], at offset: Int) -> Bool {
        offset >= 0 && offset + expected.count <= bytes.count && bytes[offset ..< offset + expected.count].elementsEqual(expected)
    }

    /// The UTF-8 string in `[offset, offset + length)`, or nil when it is not valid UTF-8.
    public func string(at offset: Int, length: Int) -> String? {
        precondition(offset >= 0 && offset + length <= bytes.count, "string at \(offset) past block end \(bytes.count)")
        return String(validating: bytes[offset..<(offset + length)], as: UTF8.self)
    }

    /// True when the last four bytes hold crc32c of the rest.
    public var checksumMatches: Bool {
        let body = UnsafeRawBufferPointer(rebasing: bytes[0..<(bytes.count - 4)])
        return CRC32C.checksum(body) == get(UInt32.self, at: bytes.count - 4)
    }

    /// True when every byte is zero (eight bytes at a time: label reads check many slots).
    public var isAllZero: Bool {
        let words = bytes.count / 8
        for index in 0..<words where bytes.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) != 0 { return false }
        for index in (words * 8)..<bytes.count where bytes[index] != 0 { return false }
        return true
    }
}
