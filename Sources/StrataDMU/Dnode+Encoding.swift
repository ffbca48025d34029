// Dnode+Encoding — the byte layout of a dnode slot and of the dnode-table block that holds 16.
//
// Theory. A dnode is a fixed 1 KiB slot, little-endian, fields at fixed offsets (pinned by the
// golden-bytes test in DnodeEncodingTests):
//
//     0  [4] magic "DNOD"        4 u8 version (1)       5 u8 object type     6 u8 dnode flags
//     7  u8  reserved (0)        8 u64 object number   16 u64 generation    24 u64 size bytes
//    32  u64 blocks (512 B)     40 i64 atime ns        48 i64 mtime ns      56 i64 ctime ns
//    64  i64 btime ns           72 u32 mode            76 u32 uid           80 u32 gid
//    84  u32 nlink              88 u32 flags           92 u32 projid        96 u32 rdev
//   100  u16 SA bytes          102 u16 inline extent bytes
//   104 [32] extent-map tree root pointer (all zero when the map is inline)
//   136 [32] xattr block pointer (all zero when there is none)
//   168 [8]  reserved (0)
//   176 body: SA area [SA bytes], then the inline extent list [inline extent bytes], then zeros.
//
// A block pointer is the pool's canonical 32 bytes (`BlockPointer.encode`): u64 offset,
// u64 length, u64 birth checkpoint, u16 device index, u16 reserved, u32 crc32c. Dnode flags: bit 0 = the extent map is a tree (the root pointer is valid).
//
// The slot carries no checksum of its own: it lives in a dnode-table block whose crc32c is in the
// parent's pointer (DESIGN: checksums outside the block they cover). The magic, version and the
// object number stored in the slot catch what a block checksum cannot: a slot decoded for the
// wrong object (a table-map bug) or written by a newer format. A free slot is all zero.
//
// Dnode-table block: 16 KiB holding 16 slots, no header; block k holds objects 16k ... 16k+15.
// 16 KiB as ZFS's dnode blocks: objects are numbered densely, so a burst of creates fills whole
// blocks (one COW write per 16 dnodes per checkpoint), and the table's own map has a quarter of
// the entries 4 KiB blocks would need. The cost is a 16 KiB write for a checkpoint in which only
// one dnode of the block changed; updates between checkpoints coalesce, so it is bounded by the
// checkpoint rate, not the update rate.
//
// Crash safety: encoding is pure; the container (the checkpoint) writes the block copy-on-write
// and only then the pointer to it, so a torn block is caught by its parent's checksum.

import StrataIO
import StrataPool

/// Format constants of dnode slots and dnode-table blocks.
public enum DnodeFormat {
    public static let version: UInt8 = 1
    static let magic: [UInt8] = Array("DNOD".utf8)
    static let flagExtentTree: UInt8 = 1 << 0

    enum Offset {
        static let magic = 0, version = 4, type = 5, flags = 6
        static let objectNumber = 8, generation = 16, sizeBytes = 24, blocks = 32
        static let atime = 40, mtime = 48, ctime = 56, btime = 64
        static let mode = 72, uid = 76, gid = 80, nlink = 84, flags32 = 88, projid = 92, rdev = 96
        static let saBytes = 100, inlineExtentBytes = 102
        static let extentRoot = 104, xattrBlock = 136, body = 176
    }
}

/// A block of the dnode table: 16 slots of 1 KiB.
public enum DnodeTableBlock {
    public static let blockBytes = 16 << 10
    public static let dnodesPerBlock = blockBytes / DnodeLimits.slotBytes

    public static func blockIndex(of object: UInt64) -> UInt64 { object / UInt64(dnodesPerBlock) }
    public static func slotIndex(of object: UInt64) -> Int { Int(object % UInt64(dnodesPerBlock)) }

    /// Encodes the 16 dnodes (nil = free slot) of block `blockIndex`.
    public static func encode(_ dnodes: [Dnode?], blockIndex: UInt64) -> [UInt8] {
        precondition(dnodes.count == dnodesPerBlock, "\(dnodes.count) dnodes for a table block of \(dnodesPerBlock)")
        var bytes = [UInt8](repeating: 0, count: blockBytes)
        bytes.withUnsafeMutableBytes { raw in
            for (slot, dnode) in dnodes.enumerated() {
                guard let dnode else { continue }
                precondition(dnode.objectNumber == blockIndex * UInt64(dnodesPerBlock) + UInt64(slot),
                             "object \(dnode.objectNumber) in slot \(slot) of table block \(blockIndex)")
                let start = slot * DnodeLimits.slotBytes
                dnode.encode(into: UnsafeMutableRawBufferPointer(rebasing: raw[start ..< start + DnodeLimits.slotBytes]))
            }
        }
        return bytes
    }

    /// Decodes a table block whose checksum the store verified.
    public static func decode(_ bytes: UnsafeRawBufferPointer, blockIndex: UInt64) throws(DnodeError) -> [Dnode?] {
        let first = blockIndex * UInt64(dnodesPerBlock)
        guard bytes.count == blockBytes else {
            throw .corrupt(object: first, reason: "dnode-table block \(blockIndex) of \(bytes.count) bytes, expected \(blockBytes)")
        }
        var dnodes: [Dnode?] = []
        dnodes.reserveCapacity(dnodesPerBlock)
        for slot in 0 ..< dnodesPerBlock {
            let start = slot * DnodeLimits.slotBytes
            dnodes.append(try Dnode.decode(UnsafeRawBufferPointer(rebasing: bytes[start ..< start + DnodeLimits.slotBytes]),
                                           object: first + UInt64(slot)))
        }
        return dnodes
    }
}

extension Dnode {
    /// Encodes this dnode into a zeroed or reused slot of exactly `DnodeLimits.slotBytes`.
    /// The xattr block must have been flushed and the body must fit (programmer errors).
    public func encode(into slot: UnsafeMutableRawBufferPointer) {
        precondition(slot.count == DnodeLimits.slotBytes, "dnode slot of \(slot.count) bytes")
        precondition(!systemAttributes.needsFlush, "object \(objectNumber): xattr block not flushed before encoding")
        let sa = systemAttributes.inlineBytes
        let extentBytes: [UInt8]
        var flags: UInt8 = 0
        var root = BlockPointer.null
        switch extentMap {
        case .inline(let bytes): extentBytes = bytes
        case .tree(let pointer):
            precondition(!pointer.isNull, "object \(objectNumber): extent tree with a null root")
            extentBytes = []
            flags |= DnodeFormat.flagExtentTree
            root = pointer
        }
        precondition(sa.count + extentBytes.count <= DnodeLimits.bodyBytes,
                     "object \(objectNumber): SA \(sa.count) + inline extents \(extentBytes.count) bytes exceed the body of \(DnodeLimits.bodyBytes)")
        slot.initializeMemory(as: UInt8.self, repeating: 0)
        let writer = ByteWriter(slot)
        typealias O = DnodeFormat.Offset
        writer.put(bytes: DnodeFormat.magic, at: O.magic)
        writer.put(DnodeFormat.version, at: O.version)
        writer.put(type.rawValue, at: O.type)
        writer.put(flags, at: O.flags)
        writer.put(objectNumber, at: O.objectNumber)
        writer.put(generation, at: O.generation)
        writer.put(sizeBytes, at: O.sizeBytes)
        writer.put(blocks, at: O.blocks)
        writer.put(atimeNs, at: O.atime)
        writer.put(mtimeNs, at: O.mtime)
        writer.put(ctimeNs, at: O.ctime)
        writer.put(btimeNs, at: O.btime)
        writer.put(mode, at: O.mode)
        writer.put(uid, at: O.uid)
        writer.put(gid, at: O.gid)
        writer.put(nlink, at: O.nlink)
        writer.put(self.flags, at: O.flags32)
        writer.put(projid, at: O.projid)
        writer.put(rdev, at: O.rdev)
        writer.put(UInt16(sa.count), at: O.saBytes)
        writer.put(UInt16(extentBytes.count), at: O.inlineExtentBytes)
        writer.put(root, at: O.extentRoot)
        writer.put(systemAttributes.overflowBlock, at: O.xattrBlock)
        writer.put(bytes: sa, at: O.body)
        writer.put(bytes: extentBytes, at: O.body + sa.count)
    }

    /// The slot's bytes as a new array (tests, tools).
    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: DnodeLimits.slotBytes)
        bytes.withUnsafeMutableBytes { encode(into: $0) }
        return bytes
    }

    /// Decodes slot `object`; nil for a free (all-zero) slot. Throws when the slot is not a
    /// well-formed dnode of this object.
    public static func decode(_ slot: UnsafeRawBufferPointer, object: UInt64) throws(DnodeError) -> Dnode? {
        precondition(slot.count == DnodeLimits.slotBytes, "dnode slot of \(slot.count) bytes")
        let reader = ByteReader(slot)
        typealias O = DnodeFormat.Offset
        if reader.isAllZero { return nil }
        guard reader.matches(DnodeFormat.magic, at: O.magic) else { throw .corrupt(object: object, reason: "bad dnode magic") }
        let version = reader.get(UInt8.self, at: O.version)
        guard version == DnodeFormat.version else { throw .unsupportedVersion(object: object, version: version) }
        let stored = reader.get(UInt64.self, at: O.objectNumber)
        guard stored == object else { throw .corrupt(object: object, reason: "slot holds the dnode of object \(stored)") }
        let typeByte = reader.get(UInt8.self, at: O.type)
        guard let type = ObjectType(rawValue: typeByte), type != .free else {
            throw .corrupt(object: object, reason: "object type \(typeByte)")
        }
        let flags = reader.get(UInt8.self, at: O.flags)
        guard flags & ~DnodeFormat.flagExtentTree == 0 else { throw .corrupt(object: object, reason: "dnode flags \(flags)") }
        let saCount = Int(reader.get(UInt16.self, at: O.saBytes))
        let extentCount = Int(reader.get(UInt16.self, at: O.inlineExtentBytes))
        guard saCount + extentCount <= DnodeLimits.bodyBytes else {
            throw .corrupt(object: object, reason: "SA \(saCount) + inline extents \(extentCount) bytes exceed the body of \(DnodeLimits.bodyBytes)")
        }
        let saStart = O.body, extentStart = O.body + saCount
        let sa = Array(slot[saStart ..< extentStart])
        if let reason = SystemAttributes.validateInline(sa) { throw .corrupt(object: object, reason: reason) }
        let root = reader.pointer(at: O.extentRoot)
        let extentMap: ExtentMapRoot
        if flags & DnodeFormat.flagExtentTree != 0 {
            guard extentCount == 0, !root.isNull else {
                throw .corrupt(object: object, reason: "extent tree flag with \(extentCount) inline bytes or a null root")
            }
            extentMap = .tree(root)
        } else {
            guard root.isNull else { throw .corrupt(object: object, reason: "inline extent map with a tree root") }
            extentMap = .inline(Array(slot[extentStart ..< extentStart + extentCount]))
        }
        var dnode = Dnode(objectNumber: object, type: type)
        dnode.generation = reader.get(UInt64.self, at: O.generation)
        dnode.sizeBytes = reader.get(UInt64.self, at: O.sizeBytes)
        dnode.blocks = reader.get(UInt64.self, at: O.blocks)
        dnode.atimeNs = reader.get(Int64.self, at: O.atime)
        dnode.mtimeNs = reader.get(Int64.self, at: O.mtime)
        dnode.ctimeNs = reader.get(Int64.self, at: O.ctime)
        dnode.btimeNs = reader.get(Int64.self, at: O.btime)
        dnode.mode = reader.get(UInt32.self, at: O.mode)
        dnode.uid = reader.get(UInt32.self, at: O.uid)
        dnode.gid = reader.get(UInt32.self, at: O.gid)
        dnode.nlink = reader.get(UInt32.self, at: O.nlink)
        dnode.flags = reader.get(UInt32.self, at: O.flags32)
        dnode.projid = reader.get(UInt32.self, at: O.projid)
        dnode.rdev = reader.get(UInt32.self, at: O.rdev)
        dnode.extentMap = extentMap
        dnode.systemAttributes = SystemAttributes(validatedInline: sa, overflowBlock: reader.pointer(at: O.xattrBlock))
        return dnode
    }
}
