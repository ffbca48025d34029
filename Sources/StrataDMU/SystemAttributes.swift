// SystemAttributes — an object's xattrs: small ones packed inline in the dnode, the rest in one
// xattr block.
//
// Theory. The ZFS SA idea with Lustre's needs first: the xattrs every Lustre object carries
// (`trusted.lma` 24 B, `trusted.fid` 44 B on OST objects, `trusted.lov` a few hundred bytes on MDT
// objects, `trusted.link`) must be readable with the dnode itself, with no second block read.
// So the dnode's SA area holds xattrs packed as entries, and when they do not all fit, the
// placement is greedy by size: xattrs are taken smallest first (ties by name) while they fit in
// `DnodeLimits.inlineSABytesMax`; the rest go to the xattr block. Smallest first maximises the
// number of inline xattrs and guarantees that LMA and PFID stay inline whatever else is set.
// Placement is a pure function of the set of xattrs, so the same set always encodes the same way.
//
// Inline SA area (length in the dnode header; entries sorted by name bytes, no terminator):
//     +0 u8 nameBytes (1...255) · +1 u8 reserved (0) · +2 u16 valueBytes · name · value
// Xattr block (a multiple of 4 KiB, at most `DnodeLimits.xattrBlockBytesMax`, checksum in the
// dnode's pointer to it; entries sorted by name, zero padding after `usedBytes`):
//     +0 "XATB" · +4 u8 version · +5..7 reserved · +8 u64 object number · +16 u32 entry count
//     +20 u32 usedBytes (header included) · +24 entries: u8 nameBytes · u8 reserved ·
//     u32 valueBytes · name · value
//
// Invariants: inline bytes are canonical (sorted, within limits, total ≤ inlineSABytesMax); a
// name is either inline or in the block, never both; `needsFlush` is true exactly when the block
// on disk (or its absence) no longer matches the overflow set.
// Crash safety: the xattr block is copy-on-write: a changed overflow set is written to a new block
// at the checkpoint (`flush`), the dnode's pointer switches to it, and the old block is freed
// (deferred by the pool until the checkpoint is durable). Between checkpoints the log carries the
// xattr operation.

import StrataIO
import StrataPool

/// One xattr: name and value bytes.
struct Xattr: Equatable, Sendable {
    var name: [UInt8]
    var value: [UInt8]

    /// Bytes this xattr takes in the inline SA area.
    var inlineBytes: Int { SystemAttributes.inlineEntryHeaderBytes + name.count + value.count }
    /// Bytes this xattr takes in the xattr block.
    var blockBytes: Int { SystemAttributes.blockEntryHeaderBytes + name.count + value.count }
}

public struct SystemAttributes: Sendable {
    static let inlineEntryHeaderBytes = 4
    static let blockEntryHeaderBytes = 6
    static let blockHeaderBytes = 24
    static let blockMagic: [UInt8] = Array("XATB".utf8)
    static let blockVersion: UInt8 = 1
    static let blockGranuleBytes = 4096

    /// The inline SA area, exactly as encoded in the dnode.
    public private(set) var inlineBytes: [UInt8]
    /// The xattr block as of the last flush (or decode); `.null` when there is none.
    public private(set) var overflowBlock: BlockPointer
    /// True when the overflow set changed since `overflowBlock` was written.
    public private(set) var needsFlush: Bool
    /// The xattrs placed in the block, once read or changed; nil when not loaded.
    var overflow: [Xattr]?

    public init() {
        inlineBytes = []
        overflowBlock = .null
        needsFlush = false
        overflow = []
    }

    /// From a decoded dnode: inline bytes (already validated) and the block pointer.
    init(validatedInline: [UInt8], overflowBlock: BlockPointer) {
        self.inlineBytes = validatedInline
        self.overflowBlock = overflowBlock
        self.needsFlush = false
        self.overflow = overflowBlock.isNull ? [] : nil
    }

    var overflowResidentBytes: Int {
        guard let overflow else { return 0 }
        return overflow.reduce(0) { $0 + 64 + $1.name.count + $1.value.count }
    }

    // MARK: Queries

    mutating func value(_ name: String, object: UInt64, store: any MetadataStore) throws(DnodeError) -> [UInt8]? {
        let key = Array(name.utf8)
        if let value = Self.inlineValue(key, in: inlineBytes) { return value }
        if overflowBlock.isNull && (overflow ?? []).isEmpty { return nil }
        let loaded = try loadOverflow(object: object, store: store)
        return loaded.first { $0.name == key }?.value
    }

    mutating func names(object: UInt64, store: any MetadataStore) throws(DnodeError) -> [String] {
        let all = try allXattrs(object: object, store: store)
        return all.map { String(decoding: $0.name, as: UTF8.self) }
    }

    // MARK: Changes

    mutating func set(_ name: String, _ value: [UInt8], object: UInt64, store: any MetadataStore) throws(DnodeError) {
        let key = Array(name.utf8)
        guard (1...DnodeLimits.xattrNameBytesMax).contains(key.count) else {
            throw .xattrNameInvalid(object: object, nameBytes: key.count, max: DnodeLimits.xattrNameBytesMax)
        }
        guard value.count <= DnodeLimits.xattrValueBytesMax else {
            throw .xattrValueTooLarge(object: object, name: name, valueBytes: value.count, max: DnodeLimits.xattrValueBytesMax)
        }
        var all = try allXattrs(object: object, store: store)
        all.removeAll { $0.name == key }
        all.append(Xattr(name: key, value: value))
        try place(all, object: object, changedName: name)
    }

    mutating func remove(_ name: String, object: UInt64, store: any MetadataStore) throws(DnodeError) -> Bool {
        let key = Array(name.utf8)
        var all = try allXattrs(object: object, store: store)
        let countBefore = all.count
        all.removeAll { $0.name == key }
        guard all.count < countBefore else { return false }
        try place(all, object: object, changedName: name)
        return true
    }

    /// Writes the overflow set to a new xattr block (or drops the block when the set is empty)
    /// and frees the old block.
    mutating func flush(object: UInt64, store: any MetadataStore) throws(DnodeError) {
        guard needsFlush else { return }
        let entries = overflow ?? []
        precondition(overflow != nil, "object \(object): xattr block changed but not loaded")
        var newPointer = BlockPointer.null
        if !entries.isEmpty {
            let block = Self.encodeBlock(entries, object: object)
            let written: Result<BlockPointer, MetadataStoreError> = block.withUnsafeBytes { bytes in
                Result { () throws(MetadataStoreError) in try store.writeNew(bytes) }
            }
            switch written {
            case .success(let pointer): newPointer = pointer
            case .failure(let error): throw .metadata(object: object, error)
            }
        }
        if !overflowBlock.isNull { store.free(overflowBlock) }
        overflowBlock = newPointer
        needsFlush = false
    }

    // MARK: Placement

    /// Places `all` (any order, unique names): smallest first inline, the rest in the block.
    /// Changes nothing when the block would exceed its limit.
    private mutating func place(_ all: [Xattr], object: UInt64, changedName: String) throws(DnodeError) {
        let bySize = all.sorted { left, right in
            left.inlineBytes != right.inlineBytes ? left.inlineBytes < right.inlineBytes
                : left.name.lexicographicallyPrecedes(right.name)
        }
        var inline: [Xattr] = []
        var spilled: [Xattr] = []
        var inlineUsed = 0
        for xattr in bySize {
            if inlineUsed + xattr.inlineBytes <= DnodeLimits.inlineSABytesMax {
                inline.append(xattr)
                inlineUsed += xattr.inlineBytes
            } else {
                spilled.append(xattr)
            }
        }
        let blockUsed = spilled.reduce(Self.blockHeaderBytes) { $0 + $1.blockBytes }
        if !spilled.isEmpty && blockUsed > DnodeLimits.xattrBlockBytesMax {
            throw .xattrSpaceExhausted(object: object, name: changedName, neededBytes: blockUsed,
                                       availableBytes: DnodeLimits.xattrBlockBytesMax)
        }
        inline.sort { $0.name.lexicographicallyPrecedes($1.name) }
        spilled.sort { $0.name.lexicographicallyPrecedes($1.name) }
        let encoded = Self.encodeInline(inline)
        precondition(encoded.count == inlineUsed && encoded.count <= DnodeLimits.inlineSABytesMax)
        inlineBytes = encoded
        if spilled != (overflow ?? []) || (spilled.isEmpty != overflowBlock.isNull) {
            needsFlush = true
        }
        overflow = spilled
    }

    private mutating func loadOverflow(object: UInt64, store: any MetadataStore) throws(DnodeError) -> [Xattr] {
        if let overflow { return overflow }
        precondition(!overflowBlock.isNull, "object \(object): overflow xattrs neither loaded nor on disk")
        if let problem = overflowBlock.formatProblem {
            throw .metadata(object: object, .unreadablePointer(pointer: overflowBlock, problem: problem))
        }
        // The length comes from disk (checksummed by the parent, but a bug may have written it):
        // bound it before allocating.
        guard overflowBlock.lengthBytes > 0, overflowBlock.lengthBytes % 4096 == 0,
              overflowBlock.lengthBytes <= UInt64(DnodeLimits.xattrBlockBytesMax) else {
            throw .corrupt(object: object, reason: "xattr block pointer of \(overflowBlock.lengthBytes) bytes (a multiple of 4096 up to \(DnodeLimits.xattrBlockBytesMax) expected)")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(overflowBlock.lengthBytes), alignment: 4096)
        defer { buffer.deallocate() }
        do { try store.read(overflowBlock, into: buffer) } catch { throw .metadata(object: object, error) }
        let entries = try Self.decodeBlock(UnsafeRawBufferPointer(buffer), object: object)
        overflow = entries
        return entries
    }

    private mutating func allXattrs(object: UInt64, store: any MetadataStore) throws(DnodeError) -> [Xattr] {
        var all = Self.decodeInlineEntries(inlineBytes)
        all += try loadOverflow(object: object, store: store)
        all.sort { $0.name.lexicographicallyPrecedes($1.name) }
        return all
    }

    // MARK: Encoding

    static func encodeInline(_ entries: [Xattr]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(entries.reduce(0) { $0 + $1.inlineBytes })
        for entry in entries {
            precondition(entry.name.count <= 255 && entry.value.count <= Int(UInt16.max))
            bytes.append(UInt8(entry.name.count))
            bytes.append(0)
            bytes.append(UInt8(truncatingIfNeeded: entry.value.count))
            bytes.append(UInt8(truncatingIfNeeded: entry.value.count >> 8))
            bytes += entry.name
            bytes += entry.value
        }
        return bytes
    }

    /// Entries of inline bytes already validated by `validateInline`.
    static func decodeInlineEntries(_ bytes: [UInt8]) -> [Xattr] {
        var entries: [Xattr] = []
        var offset = 0
        while offset < bytes.count {
            let nameBytes = Int(bytes[offset])
            let valueBytes = Int(bytes[offset + 2]) | Int(bytes[offset + 3]) << 8
            let nameStart = offset + inlineEntryHeaderBytes
            entries.append(Xattr(name: Array(bytes[nameStart ..< nameStart + nameBytes]),
                                 value: Array(bytes[nameStart + nameBytes ..< nameStart + nameBytes + valueBytes])))
            offset = nameStart + nameBytes + valueBytes
        }
        precondition(offset == bytes.count, "inline SA bytes not validated")
        return entries
    }

    /// The value of `name` in validated inline bytes, without decoding every entry.
    static func inlineValue(_ name: [UInt8], in bytes: [UInt8]) -> [UInt8]? {
        var offset = 0
        while offset < bytes.count {
            let nameBytes = Int(bytes[offset])
            let valueBytes = Int(bytes[offset + 2]) | Int(bytes[offset + 3]) << 8
            let nameStart = offset + inlineEntryHeaderBytes
            if nameBytes == name.count && bytes[nameStart ..< nameStart + nameBytes].elementsEqual(name) {
                return Array(bytes[nameStart + nameBytes ..< nameStart + nameBytes + valueBytes])
            }
            offset = nameStart + nameBytes + valueBytes
        }
        return nil
    }

    /// Checks decoded inline bytes: every entry within the area and the limits, names strictly
    /// increasing. Returns a reason when they are not canonical.
    static func validateInline(_ bytes: [UInt8]) -> String? {
        guard bytes.count <= DnodeLimits.inlineSABytesMax else {
            return "SA area of \(bytes.count) bytes exceeds \(DnodeLimits.inlineSABytesMax)"
        }
        var offset = 0
        var previous: ArraySlice<UInt8>? = nil
        while offset < bytes.count {
            guard offset + inlineEntryHeaderBytes <= bytes.count else { return "SA entry header at \(offset) past the area" }
            let nameBytes = Int(bytes[offset])
            let valueBytes = Int(bytes[offset + 2]) | Int(bytes[offset + 3]) << 8
            let nameStart = offset + inlineEntryHeaderBytes
            guard nameBytes > 0, bytes[offset + 1] == 0 else { return "SA entry at \(offset): empty name or reserved byte set" }
            guard nameStart + nameBytes + valueBytes <= bytes.count else {
                return "SA entry at \(offset) (name \(nameBytes), value \(valueBytes) bytes) past the area of \(bytes.count)"
            }
            let name = bytes[nameStart ..< nameStart + nameBytes]
            if let previous, !previous.lexicographicallyPrecedes(name) { return "SA entries out of order at \(offset)" }
            previous = name
            offset = nameStart + nameBytes + valueBytes
        }
        return nil
    }

    static func encodeBlock(_ entries: [Xattr], object: UInt64) -> [UInt8] {
        let used = entries.reduce(blockHeaderBytes) { $0 + $1.blockBytes }
        precondition(used <= DnodeLimits.xattrBlockBytesMax, "object \(object): xattr block of \(used) bytes")
        let size = (used + blockGranuleBytes - 1) / blockGranuleBytes * blockGranuleBytes
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { raw in
            let writer = ByteWriter(raw)
            writer.put(bytes: blockMagic, at: 0)
            writer.put(blockVersion, at: 4)
            writer.put(object, at: 8)
            writer.put(UInt32(entries.count), at: 16)
            writer.put(UInt32(used), at: 20)
            var offset = blockHeaderBytes
            for entry in entries {
                writer.put(UInt8(entry.name.count), at: offset)
                writer.put(UInt32(entry.value.count), at: offset + 2)
                writer.put(bytes: entry.name, at: offset + blockEntryHeaderBytes)
                writer.put(bytes: entry.value, at: offset + blockEntryHeaderBytes + entry.name.count)
                offset += entry.blockBytes
            }
            precondition(offset == used)
        }
        return bytes
    }

    static func decodeBlock(_ bytes: UnsafeRawBufferPointer, object: UInt64) throws(DnodeError) -> [Xattr] {
        let reader = ByteReader(bytes)
        guard bytes.count >= blockHeaderBytes, reader.matches(blockMagic, at: 0) else {
            throw .corrupt(object: object, reason: "xattr block: bad magic")
        }
        guard reader.get(UInt8.self, at: 4) == blockVersion else {
            throw .unsupportedVersion(object: object, version: reader.get(UInt8.self, at: 4))
        }
        let owner = reader.get(UInt64.self, at: 8)
        guard owner == object else { throw .corrupt(object: object, reason: "xattr block belongs to object \(owner)") }
        let count = Int(reader.get(UInt32.self, at: 16))
        let used = Int(reader.get(UInt32.self, at: 20))
        guard used <= bytes.count, count > 0 else {
            throw .corrupt(object: object, reason: "xattr block: \(count) entries in \(used) of \(bytes.count) bytes")
        }
        var entries: [Xattr] = []
        var offset = blockHeaderBytes
        for index in 0 ..< count {
            guard offset + blockEntryHeaderBytes <= used else { throw .corrupt(object: object, reason: "xattr block entry \(index) past \(used)") }
            let nameBytes = Int(reader.get(UInt8.self, at: offset))
            let valueBytes = Int(reader.get(UInt32.self, at: offset + 2))
            let nameStart = offset + blockEntryHeaderBytes
            guard nameBytes > 0, valueBytes <= DnodeLimits.xattrValueBytesMax, nameStart + nameBytes + valueBytes <= used else {
                throw .corrupt(object: object, reason: "xattr block entry \(index): name \(nameBytes), value \(valueBytes) bytes at \(offset)")
            }
            let entry = Xattr(name: Array(bytes[nameStart ..< nameStart + nameBytes]),
                              value: Array(bytes[nameStart + nameBytes ..< nameStart + nameBytes + valueBytes]))
            if let last = entries.last, !last.name.lexicographicallyPrecedes(entry.name) {
                throw .corrupt(object: object, reason: "xattr block entries out of order at \(index)")
            }
            entries.append(entry)
            offset = nameStart + nameBytes + valueBytes
        }
        guard offset == used else { throw .corrupt(object: object, reason: "xattr block: entries end at \(offset), header says \(used)") }
        return entries
    }
}

extension SystemAttributes: Equatable {
    /// Equal when they encode the same: same inline bytes and block, and (when a flush is
    /// pending) the same overflow set.
    public static func == (left: SystemAttributes, right: SystemAttributes) -> Bool {
        left.inlineBytes == right.inlineBytes && left.overflowBlock == right.overflowBlock
            && left.needsFlush == right.needsFlush && (!left.needsFlush || left.overflow == right.overflow)
    }
}
