// Dnode slot and dnode-table block: golden bytes pinning the layout, round trips (SA inline, SA
// overflow, extent tree root), and the checks that catch a wrong or corrupt slot.

import Testing
import StrataPool
@testable import StrataDMU

/// Lustre-shaped xattrs: LMA (lustre_mdt_attrs, 24 B), PFID (filter_fid, 44 B), a PFL layout.
enum LustreXattrs {
    static let lma: [UInt8] = (0 ..< 24).map { UInt8($0) }
    static let fid: [UInt8] = (0 ..< 44).map { UInt8(0x40 + $0) }
    static let layout: [UInt8] = (0 ..< 360).map { UInt8(truncatingIfNeeded: $0 * 7) }
    static let link: [UInt8] = (0 ..< 60).map { UInt8(truncatingIfNeeded: $0 * 3) }
}

func sampleDnode(_ object: UInt64 = 0x1234) -> Dnode {
    var dnode = Dnode(objectNumber: object, type: .regular, generation: 7, mode: 0o100640, uid: 1000, gid: 100,
                      timeNs: 1_700_000_000_123_456_789)
    dnode.sizeBytes = 0x0102_0304_0506
    dnode.blocks = 24
    dnode.mtimeNs = -5
    dnode.flags = 0x10
    dnode.projid = 42
    dnode.nlink = 3
    return dnode
}

func hex(_ bytes: some Sequence<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

@Suite struct DnodeEncodingTests {
    @Test func layoutConstants() {
        #expect(DnodeLimits.slotBytes == 1024)
        #expect(DnodeLimits.headerBytes == 176 && DnodeFormat.Offset.body == DnodeLimits.headerBytes)
        #expect(DnodeLimits.bodyBytes == 848)
        #expect(DnodeTableBlock.blockBytes == 16384 && DnodeTableBlock.dnodesPerBlock == 16)
        #expect(ExtentMap.encodedBytes(MappedExtent(logicalOffsetBytes: 0, copies: [Extent(deviceIndex: 0, offsetBytes: 0, lengthBytes: 4096)],
                                                    birthCheckpoint: 1, chunkChecksums: [0])) == 40)
    }

    /// Golden bytes: the header of a known dnode, field by field, and its body.
    /// An extent whose physical end would pass 2^64 is a format violation (decoders refuse it
    /// instead of trapping on the addition later, in reads or `pool check`).
    @Test func extentCopyEndingPast2To64IsAFormatViolation() {
        var extent = MappedExtent.unchecked
        #expect(extent.formatViolation == nil)
        extent.copies = [Extent(deviceIndex: 0, offsetBytes: UInt64.max - 100, lengthBytes: 4096)]
        #expect(extent.formatViolation?.contains("2^64") == true)
    }

    @Test func goldenBytes() throws {
        let store = MemoryMetadataStore()
        var dnode = sampleDnode()
        try dnode.setXattr("trusted.lma", Array(LustreXattrs.lma.prefix(4)), store: store)
        let extent = MappedExtent(logicalOffsetBytes: 8192, copies: [Extent(deviceIndex: 2, offsetBytes: 0x10_0000, lengthBytes: 4096)],
                                  birthCheckpoint: 9, chunkChecksums: [0xDEAD_BEEF])
        dnode.extentMap = .inline(ExtentMap.encodeInline([extent]))
        let bytes = dnode.encoded()
        #expect(bytes.count == 1024)
        let header = hex(bytes[0 ..< 176])
        let expected =
            "444e4f44" + "01" + "01" + "00" + "00"            // magic, version, type regular, flags, reserved
            + "3412000000000000" + "0700000000000000"         // object number, generation
            + "0605040302010000" + "1800000000000000"         // size, blocks
            + "15cd853dfe9c9717" + "fbffffffffffffff"         // atime, mtime (-5)
            + "15cd853dfe9c9717" + "15cd853dfe9c9717"         // ctime, btime
            + "a0810000" + "e8030000" + "64000000" + "03000000" // mode, uid, gid, nlink
            + "10000000" + "2a000000" + "00000000"             // flags, projid, rdev
            + "1300" + "2800"                                  // SA bytes 19, inline extent bytes 40
            + String(repeating: "00", count: 32)               // extent tree root (none)
            + String(repeating: "00", count: 32)               // xattr block (none)
            + String(repeating: "00", count: 8)                // reserved
        #expect(header == expected)
        let body = hex(bytes[176 ..< 176 + 19 + 40])
        let expectedBody =
            "0b00" + "0400" + hex(Array("trusted.lma".utf8)) + "00010203"    // SA entry
            + "0020000000000000" + "01000000" + "0c" + "01" + "0000"          // logical 8192, 1 block, shift 12, 1 copy
            + "0900000000000000" + "02000000" + "0000100000000000" + "efbeadde" // birth 9, device 2, offset 1 MiB, crc
        #expect(body == expectedBody)
        #expect(bytes[(176 + 59)...].allSatisfy { $0 == 0 })
        #expect(try bytes.withUnsafeBytes { raw in try Dnode.decode(raw, object: 0x1234) } == dnode)
    }

    @Test func roundTripWithInlineAndOverflowXattrs() throws {
        let store = MemoryMetadataStore()
        var dnode = sampleDnode(77)
        try dnode.setXattr("trusted.lma", LustreXattrs.lma, store: store)
        try dnode.setXattr("trusted.fid", LustreXattrs.fid, store: store)
        try dnode.setXattr("trusted.lov", LustreXattrs.layout, store: store)
        try dnode.setXattr("trusted.link", LustreXattrs.link, store: store)
        #expect(!dnode.systemAttributes.needsFlush, "Lustre's usual xattrs fit inline")
        let big = (0 ..< 10_000).map { UInt8(truncatingIfNeeded: $0) }
        try dnode.setXattr("user.big", big, store: store)
        #expect(dnode.systemAttributes.needsFlush)
        try dnode.flushXattrs(store: store)
        #expect(!dnode.systemAttributes.overflowBlock.isNull && store.liveBlockCount == 1)

        let slot = dnode.encoded()
        var decoded = try #require(try slot.withUnsafeBytes { raw in try Dnode.decode(raw, object: 77) })
        #expect(decoded == dnode)
        #expect(try decoded.xattr("trusted.lma", store: store) == LustreXattrs.lma)
        #expect(try decoded.xattr("trusted.fid", store: store) == LustreXattrs.fid)
        #expect(try decoded.xattr("trusted.lov", store: store) == LustreXattrs.layout)
        #expect(try decoded.xattr("user.big", store: store) == big)
        #expect(try decoded.xattr("user.none", store: store) == nil)
        #expect(try decoded.xattrNames(store: store) == ["trusted.fid", "trusted.link", "trusted.lma", "trusted.lov", "user.big"])
    }

    @Test func extentTreeRootRoundTrips() throws {
        var dnode = sampleDnode(5)
        let root = BlockPointer(deviceIndex: 1, offsetBytes: 1 << 30, lengthBytes: 16384, birthCheckpoint: 12, checksum: 0xABCD)
        dnode.extentMap = .tree(root)
        let slot = dnode.encoded()
        #expect(slot[6] == 1, "tree flag")
        #expect(hex(slot[104 ..< 136]) == "0000004000000000" + "0040000000000000" + "0c00000000000000" + "0100" + "0000" + "cdab0000",
                "the pool's canonical pointer form: offset, length, birth, device, 0, crc32c")
        let decoded = try slot.withUnsafeBytes { raw in try Dnode.decode(raw, object: 5) }
        #expect(decoded?.extentMap == .tree(root))
        #expect(decoded?.referencedBlocks == [root])
    }

    @Test func tableBlockRoundTripAndFreeSlots() throws {
        var dnodes = [Dnode?](repeating: nil, count: 16)
        for slot in [0, 3, 15] {
            var dnode = Dnode(objectNumber: 32 + UInt64(slot), type: slot == 3 ? .directory : .regular)
            dnode.sizeBytes = UInt64(slot) * 1000
            dnodes[slot] = dnode
        }
        let block = DnodeTableBlock.encode(dnodes, blockIndex: 2)
        #expect(block.count == 16384)
        #expect(block[1024 ..< 2048].allSatisfy { $0 == 0 }, "a free slot is all zero")
        let decoded = try block.withUnsafeBytes { try DnodeTableBlock.decode($0, blockIndex: 2) }
        #expect(decoded == dnodes)
        #expect(DnodeTableBlock.blockIndex(of: 47) == 2 && DnodeTableBlock.slotIndex(of: 47) == 15)
    }

    @Test func corruptSlotsAreNamed() throws {
        let good = sampleDnode(9).encoded()
        func decode(_ bytes: [UInt8], object: UInt64 = 9) throws(DnodeError) -> Dnode? {
            let result: Result<Dnode?, DnodeError> = bytes.withUnsafeBytes { raw in Result { () throws(DnodeError) in try Dnode.decode(raw, object: object) } }
            return try result.get()
        }
        #expect(throws: DnodeError.corrupt(object: 10, reason: "slot holds the dnode of object 9")) { try decode(good, object: 10) }
        var badMagic = good; badMagic[0] = 0x58
        #expect(throws: DnodeError.corrupt(object: 9, reason: "bad dnode magic")) { try decode(badMagic) }
        var newer = good; newer[4] = 2
        #expect(throws: DnodeError.unsupportedVersion(object: 9, version: 2)) { try decode(newer) }
        var badLength = good; badLength[100] = 0xFF; badLength[101] = 0x03
        #expect(throws: DnodeError.self) { try decode(badLength) }
        var badType = good; badType[5] = 99
        #expect(throws: DnodeError.corrupt(object: 9, reason: "object type 99")) { try decode(badType) }
        #expect(try decode([UInt8](repeating: 0, count: 1024)) == nil)
        let description = DnodeError.corrupt(object: 9, reason: "bad dnode magic").description
        #expect(description.contains("object 9"))
    }
}
