// BlockPointer — a checksummed pointer to a block, with one or two places (ZFS's "ditto"
// copies of metadata), in 32 bytes.
//
// Theory. A parent names a child block with a pointer that carries the child's crc32c, so a torn,
// misdirected or rotted block is caught by whoever follows the pointer (DESIGN.md, "Checksums
// everywhere"). A pool that keeps `copies.metadata = 2` writes every metadata block to two places
// on two devices; the pointer names both, and a reader that finds one copy unreadable or wrong
// reads the other. Every structure embeds pointers at a fixed 32 bytes (index-tree branches,
// extent-map index nodes, dnodes, dnode-table entries, uberblock roots), so the second address
// is packed into the same 32 bytes rather than widening every layout: metadata blocks are
// always whole 4 KiB units at 4 KiB-aligned offsets, so offsets and the length are stored in
// 4 KiB units, which frees the room. The one-address form is the original layout, unchanged
// byte for byte: pools written before the two-address form read as they always did.
//
// Layout (32 bytes, little-endian). The u16 at byte 26, zero in the original form, is the flags.
//
//   flags = 0: one address (the original form; all 32 bytes zero = null)
//     0   8  offset, bytes
//     8   8  length, bytes
//     16  8  birth checkpoint
//     24  2  device index
//     26  2  flags = 0
//     28  4  crc32c of the pointed-to bytes
//
//   flags bit 0 set: two addresses, packed (both copies hold the same bytes)
//     0   6  offset of copy 0, 4 KiB units (u48: 2^60 bytes)
//     6   6  offset of copy 1, 4 KiB units (u48)
//     12  2  device index of copy 1
//     14  2  length, 4 KiB units (u16, ≥ 1: up to 256 MiB − 4 KiB; metadata blocks are ≤ 1 MiB)
//     16  8  birth checkpoint
//     24  2  device index of copy 0
//     26  2  flags = 0x0001
//     28  4  crc32c of the pointed-to bytes
//   Birth, copy 0's device, the flags and the checksum keep their places in both forms.
//
// Decoding is total: any 32 bytes decode without trapping. Flags with a bit this build does not
// know (a newer format, or corruption the parent's checksum did not catch) and a malformed
// two-address form (length 0, or both copies at one place) decode to a pointer that records the
// flags in `undecodedFlags` and keeps the raw bytes read as the one-address form — so that
// re-encoding it writes the same 32 bytes back — and that is never null: readers refuse to
// follow it (`formatProblem` says why) instead of misreading an address out of it.
//
// Copies are limited to `copiesMax` = 2 by this format: a third address does not fit in 32
// bytes. Writing more copies needs a wider pointer (and a format version on every structure
// that embeds one).

import StrataIO

/// One place of a block: a device of the pool and a byte offset on it.
public struct BlockAddress: Hashable, Sendable, Codable, CustomStringConvertible {
    public var deviceIndex: Int
    public var offsetBytes: UInt64

    public init(deviceIndex: Int, offsetBytes: UInt64) {
        self.deviceIndex = deviceIndex
        self.offsetBytes = offsetBytes
    }

    public var description: String { "device \(deviceIndex) offset \(offsetBytes)" }
}

/// A checksummed pointer to a run of bytes on one device, or to two identical copies on two
/// places; the checksum lives here, in the parent.
public struct BlockPointer: Equatable, Sendable, Codable {
    /// Copy 0's device (the copy read first).
    public var deviceIndex: Int
    /// Copy 0's offset.
    public var offsetBytes: UInt64
    public var lengthBytes: UInt64
    public var birthCheckpoint: UInt64
    public var checksum: UInt32
    /// Copy 1's place, when the block has two copies (same length and checksum as copy 0).
    public var secondCopy: BlockAddress?
    /// Non-nil when the 32 bytes this pointer was decoded from are not a form this build can
    /// follow: the flags found (unknown bits, or a malformed two-address form). The other fields
    /// then hold the raw bytes read as the one-address form; readers must refuse the pointer
    /// (`formatProblem`). Nil for every pointer this build makes.
    public var undecodedFlags: UInt16?

    public init(deviceIndex: Int, offsetBytes: UInt64, lengthBytes: UInt64, birthCheckpoint: UInt64, checksum: UInt32,
                secondCopy: BlockAddress? = nil) {
        self.deviceIndex = deviceIndex
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
        self.birthCheckpoint = birthCheckpoint
        self.checksum = checksum
        self.secondCopy = secondCopy
        self.undecodedFlags = nil
    }

    /// A pointer to the copies of one allocation (`copies.count` of 1...`copiesMax`, one length).
    public init(copies: ExtentCopies, birthCheckpoint: UInt64, checksum: UInt32) {
        precondition((1...BlockPointer.copiesMax).contains(copies.count), "a block pointer holds 1...\(BlockPointer.copiesMax) copies, not \(copies.count)")
        let first = copies[0]
        precondition(copies.allSatisfy { $0.lengthBytes == first.lengthBytes }, "copies of different lengths: \(copies)")
        self.init(deviceIndex: first.deviceIndex, offsetBytes: first.offsetBytes, lengthBytes: first.lengthBytes,
                  birthCheckpoint: birthCheckpoint, checksum: checksum,
                  secondCopy: copies.count == 2 ? BlockAddress(deviceIndex: copies[1].deviceIndex, offsetBytes: copies[1].offsetBytes) : nil)
    }

    public static let null = BlockPointer(deviceIndex: 0, offsetBytes: 0, lengthBytes: 0, birthCheckpoint: 0, checksum: 0)
    public var isNull: Bool { lengthBytes == 0 && secondCopy == nil && undecodedFlags == nil }

    /// The most copies a pointer names: two addresses are all that fit in 32 bytes (see the
    /// theory). `copies.metadata` above it is refused by the stores that write pointers.
    public static let copiesMax = 2

    /// The one on-disk size of a block pointer, in both forms.
    public static let encodedByteCount = 32

    /// Flag bit 0 of byte 26: two addresses, packed.
    public static let flagTwoAddresses: UInt16 = 0x0001
    static let flagsKnown: UInt16 = flagTwoAddresses
    /// The unit of the packed form's offsets and length.
    public static let packedUnitBytes: UInt64 = 4096
    static let packedOffsetUnitsMax: UInt64 = (1 << 48) - 1

    // MARK: Copies

    /// 1 or 2 (a null pointer counts 1: it has no copy to read either way).
    public var copyCount: Int { secondCopy == nil ? 1 : 2 }

    /// The place of copy `copy` (0 is read first).
    public func address(ofCopy copy: Int) -> BlockAddress {
        precondition(copy >= 0 && copy < copyCount, "copy \(copy) of \(copyCount)")
        return copy == 0 ? BlockAddress(deviceIndex: deviceIndex, offsetBytes: offsetBytes) : secondCopy!
    }

    /// Copy `copy` as an extent of the pool.
    public func extent(ofCopy copy: Int) -> Extent {
        let address = address(ofCopy: copy)
        return Extent(deviceIndex: address.deviceIndex, offsetBytes: address.offsetBytes, lengthBytes: lengthBytes)
    }

    /// Every copy, as the allocator hands them out (frees, checks).
    public var copies: ExtentCopies {
        var copies = ExtentCopies()
        for copy in 0..<copyCount { copies.append(extent(ofCopy: copy)) }
        return copies
    }

    /// A one-address pointer to copy `copy` alone (same length, birth and checksum): what an error
    /// about that one copy names.
    public func pointer(toCopy copy: Int) -> BlockPointer {
        let address = address(ofCopy: copy)
        return BlockPointer(deviceIndex: address.deviceIndex, offsetBytes: address.offsetBytes, lengthBytes: lengthBytes,
                            birthCheckpoint: birthCheckpoint, checksum: checksum)
    }

    /// Why this pointer must not be followed, or nil (see `undecodedFlags`).
    public var formatProblem: String? {
        guard let flags = undecodedFlags else { return nil }
        let unknown = flags & ~BlockPointer.flagsKnown
        if unknown != 0 {
            return "block pointer flags 0x\(String(flags, radix: 16)) name a form this build does not know (written by a newer Strata, or corrupt)"
        }
        return "block pointer flags 0x\(String(flags, radix: 16)) with a malformed two-address form (zero length, or both copies at one place): corrupt"
    }

    // MARK: Encoding

    public func encode(into bytes: UnsafeMutableRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && offset + BlockPointer.encodedByteCount <= bytes.count, "pointer field at \(offset) past \(bytes.count)")
        precondition(deviceIndex >= 0 && deviceIndex <= Int(UInt16.max), "device index \(deviceIndex)")
        let writer = ByteWriter(bytes)
        guard let second = secondCopy, undecodedFlags == nil else {
            // The one-address form (or an undecoded pointer, written back as it was read).
            writer.put(offsetBytes, at: offset)
            writer.put(lengthBytes, at: offset + 8)
            writer.put(birthCheckpoint, at: offset + 16)
            writer.put(UInt16(deviceIndex), at: offset + 24)
            writer.put(undecodedFlags ?? 0, at: offset + 26)
            writer.put(checksum, at: offset + 28)
            return
        }
        let unit = BlockPointer.packedUnitBytes
        precondition(lengthBytes > 0 && lengthBytes % unit == 0 && lengthBytes / unit <= UInt64(UInt16.max),
                     "a two-copy block of \(lengthBytes) bytes: not a whole number of 4 KiB units up to \(UInt64(UInt16.max) * unit)")
        precondition(offsetBytes % unit == 0 && second.offsetBytes % unit == 0, "two-copy block at \(offsetBytes) and \(second.offsetBytes): not 4 KiB aligned")
        precondition(offsetBytes / unit <= BlockPointer.packedOffsetUnitsMax && second.offsetBytes / unit <= BlockPointer.packedOffsetUnitsMax,
                     "two-copy block at \(offsetBytes) and \(second.offsetBytes): past the packed form's 2^60 bytes")
        precondition(second.deviceIndex >= 0 && second.deviceIndex <= Int(UInt16.max), "device index \(second.deviceIndex)")
        precondition(second != BlockAddress(deviceIndex: deviceIndex, offsetBytes: offsetBytes), "both copies at \(second)")
        Self.putUInt48(offsetBytes / unit, writer: writer, at: offset)
        Self.putUInt48(second.offsetBytes / unit, writer: writer, at: offset + 6)
        writer.put(UInt16(second.deviceIndex), at: offset + 12)
        writer.put(UInt16(lengthBytes / unit), at: offset + 14)
        writer.put(birthCheckpoint, at: offset + 16)
        writer.put(UInt16(deviceIndex), at: offset + 24)
        writer.put(BlockPointer.flagTwoAddresses, at: offset + 26)
        writer.put(checksum, at: offset + 28)
    }

    /// Decodes either form; total on any bytes (range checks against the pool are the reader's
    /// job; an unknown or malformed form is kept in `undecodedFlags`, see the theory).
    public static func decode(from bytes: UnsafeRawBufferPointer, at offset: Int) -> BlockPointer {
        precondition(offset >= 0 && offset + encodedByteCount <= bytes.count, "pointer field at \(offset) past \(bytes.count)")
        let reader = ByteReader(bytes)
        let flags = reader.get(UInt16.self, at: offset + 26)
        let birth = reader.get(UInt64.self, at: offset + 16)
        let firstDevice = Int(reader.get(UInt16.self, at: offset + 24))
        let checksum = reader.get(UInt32.self, at: offset + 28)
        var raw = BlockPointer(deviceIndex: firstDevice, offsetBytes: reader.get(UInt64.self, at: offset),
                               lengthBytes: reader.get(UInt64.self, at: offset + 8), birthCheckpoint: birth, checksum: checksum)
        if flags == 0 { return raw }
        let lengthUnits = reader.get(UInt16.self, at: offset + 14)
        let first = BlockAddress(deviceIndex: firstDevice, offsetBytes: getUInt48(reader, at: offset) * packedUnitBytes)
        let second = BlockAddress(deviceIndex: Int(reader.get(UInt16.self, at: offset + 12)),
                                  offsetBytes: getUInt48(reader, at: offset + 6) * packedUnitBytes)
        guard flags == flagTwoAddresses, lengthUnits > 0, first != second else {
            raw.undecodedFlags = flags
            return raw
        }
        return BlockPointer(deviceIndex: first.deviceIndex, offsetBytes: first.offsetBytes, lengthBytes: UInt64(lengthUnits) * packedUnitBytes,
                            birthCheckpoint: birth, checksum: checksum, secondCopy: second)
    }

    private static func putUInt48(_ value: UInt64, writer: ByteWriter, at offset: Int) {
        precondition(value <= packedOffsetUnitsMax, "\(value) does not fit 48 bits")
        writer.put(UInt32(truncatingIfNeeded: value), at: offset)
        writer.put(UInt16(truncatingIfNeeded: value >> 32), at: offset + 4)
    }

    private static func getUInt48(_ reader: ByteReader, at offset: Int) -> UInt64 {
        UInt64(reader.get(UInt32.self, at: offset)) | UInt64(reader.get(UInt16.self, at: offset + 4)) << 32
    }
}
