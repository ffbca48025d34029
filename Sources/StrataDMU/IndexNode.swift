// IndexNode — one node of an index tree: a 4 KiB slotted page whose bytes are the same in
// memory and on disk.
//
// Theory. A node is a fixed-size page: a 24-byte header, an array of 2-byte slots (entry
// offsets, in key order) growing up from the header, and a heap of entries growing down from the
// end of the page. Leaves hold (key, value) entries; branches hold (separator key, child
// pointer) entries, where the separator of entry i is the lowest key child i may hold and entry
// 0's separator is the node's own lower bound (the empty key for the root). Keeping the lower
// bound in entry 0 makes every split, merge and redistribution the same operation at every
// level: the first key of a right-hand node is the separator its parent needs.
//
// Operations work on the page in place (binary search with memcmp, memmove of slots), so a
// cached node costs its page and a few words, and the hot path allocates nothing. A removed
// entry leaves garbage in the heap; an insert that does not fit in the contiguous free space
// compacts the page first. Before a page is written it is compacted into the canonical layout
// (entries in slot order at the end of the page, the gap zeroed, no garbage), so equal trees
// have equal bytes and the golden-bytes test can pin the format.
//
// Crash safety is not this file's business beyond the format: a node is written once, to a new
// place, by `IndexTree.flush`, and its crc32c lives in the parent's pointer (or the uberblock's
// root slot for the root). A node read back is checked against its format (magic, version,
// level, slot and heap bounds, key order) before anything trusts it.

import StrataIO
import StrataPool
#if canImport(Glibc)
import Glibc
#endif

/// The on-disk layout of an index-tree node, format version 1. Integers are little-endian.
///
///     offset  size  field
///          0     4  magic "STIX"
///          4     2  format version (1)
///          6     1  level (0 = leaf; the children of a level-n branch are at level n-1)
///          7     1  reserved (0)
///          8     2  entry count n
///         10     2  heap start: offset of the lowest heap byte (4096 when n = 0)
///         12     2  garbage bytes (heap bytes of removed entries; always 0 on disk)
///         14     2  reserved (0)
///         16     8  tree entry count (in the root only; 0 in every other node)
///         24   2×n  slots: the offset of each entry, in key order
///          …        free space (zero on disk)
///     heap start    the entries, in slot order, ending at the end of the node
///
///     leaf entry:   key length u8, value length u16, key, value
///     branch entry: key length u8, key, child pointer (32 bytes, the uberblock's root-slot
///                   encoding: offset u64, length u64, birth checkpoint u64, device index u16,
///                   reserved u16, crc32c u32)
enum IndexNodeFormat {
    static let magic: UInt32 = 0x5849_5453            // "STIX" read as a little-endian u32
    static let version: UInt16 = 1
    static let nodeBytes = IndexTree.nodeBytes
    static let headerBytes = 24
    static let slotBytes = 2
    static let leafEntryHeaderBytes = 3
    static let branchEntryHeaderBytes = 1
    static let pointerBytes = 32
    /// Bytes of a node available to slots and entries.
    static let payloadBytes = nodeBytes - headerBytes
    /// The largest leaf entry with its slot: 2 + 3 + 255 + 1024 = 1,284 bytes.
    static let leafEntryBytesMax = slotBytes + leafEntryHeaderBytes + IndexTree.keyBytesMax + IndexTree.valueBytesMax
    /// The largest branch entry with its slot: 2 + 1 + 255 + 32 = 290 bytes.
    static let branchEntryBytesMax = slotBytes + branchEntryHeaderBytes + IndexTree.keyBytesMax + pointerBytes
    /// Every node but the root holds at least this many bytes of slots and entries
    /// ((4,072 − 1,284) / 2 = 1,394, 34 %). A split of an overfull node (at most payload + one
    /// entry) and a redistribution of two neighbours can always cut the entries into two halves
    /// that differ by at most one entry, so both halves stay above (payload − entryMax) / 2.
    static let fillBytesMin = (payloadBytes - leafEntryBytesMax) / 2
    /// A bound on the height of a tree (a corrupt level byte must not drive a descent).
    /// With at least 5 children per branch and 2 entries per leaf, 24 levels hold far more
    /// entries than any device does.
    static let levelMax = 24

    static func entryBytesMax(level: Int) -> Int { level == 0 ? leafEntryBytesMax : branchEntryBytesMax }
}

/// Orders byte strings as memcmp does, a shorter string first when it is a prefix of the other.
@inline(__always)
func compareKeys(_ left: UnsafeRawBufferPointer, _ right: UnsafeRawBufferPointer) -> Int {
    let common = Swift.min(left.count, right.count)
    if common > 0 {
        let order = memcmp(left.baseAddress!, right.baseAddress!, common)
        if order != 0 { return Int(order) }
    }
    return left.count - right.count
}

/// A view of one node page. The page is owned by an `IndexNode` (or a scratch buffer); the view
/// is a pointer and never outlives it.
struct IndexNodePage {
    let bytes: UnsafeMutableRawBufferPointer

    init(_ bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count == IndexNodeFormat.nodeBytes, "node page of \(bytes.count) bytes")
        self.bytes = bytes
    }

    // MARK: Fields

    @inline(__always) func load16(_ offset: Int) -> Int {
        Int(UInt16(littleEndian: UnsafeRawBufferPointer(bytes).loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always) func store16(_ value: Int, at offset: Int) {
        precondition(value >= 0 && value <= 0xFFFF, "u16 field value \(value)")
        bytes.storeBytes(of: UInt16(value).littleEndian, toByteOffset: offset, as: UInt16.self)
    }

    var magic: UInt32 { UInt32(littleEndian: UnsafeRawBufferPointer(bytes).loadUnaligned(fromByteOffset: 0, as: UInt32.self)) }
    var version: Int { load16(4) }
    var level: Int { Int(bytes[6]) }
    var count: Int {
        get { load16(8) }
        nonmutating set { store16(newValue, at: 8) }
    }
    var heapStart: Int {
        get { load16(10) }
        nonmutating set { store16(newValue, at: 10) }
    }
    var garbageBytes: Int {
        get { load16(12) }
        nonmutating set { store16(newValue, at: 12) }
    }
    var treeEntryCount: UInt64 {
        get { UInt64(littleEndian: UnsafeRawBufferPointer(bytes).loadUnaligned(fromByteOffset: 16, as: UInt64.self)) }
        nonmutating set { bytes.storeBytes(of: newValue.littleEndian, toByteOffset: 16, as: UInt64.self) }
    }
    var isLeaf: Bool { bytes[6] == 0 }

    /// Makes the page an empty node at `level`.
    func initialize(level: Int) {
        precondition(level >= 0 && level <= IndexNodeFormat.levelMax, "node level \(level)")
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
        bytes.storeBytes(of: IndexNodeFormat.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        store16(Int(IndexNodeFormat.version), at: 4)
        bytes[6] = UInt8(level)
        heapStart = IndexNodeFormat.nodeBytes
    }

    /// Slots and live entries, in bytes (what the minimum-fill rule counts).
    var usedBytes: Int { IndexNodeFormat.slotBytes * count + (IndexNodeFormat.nodeBytes - heapStart) - garbageBytes }
    /// Room for slots and entries once the page is compacted.
    var freeBytes: Int { IndexNodeFormat.payloadBytes - usedBytes }
    var contiguousFreeBytes: Int { heapStart - (IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * count) }

    // MARK: Entries

    @inline(__always) func entryOffset(_ index: Int) -> Int {
        assert(index >= 0 && index < count, "slot \(index) of \(count)")
        return load16(IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * index)
    }

    @inline(__always) func entryBytes(atOffset offset: Int) -> Int {
        let keyBytes = Int(bytes[offset])
        if isLeaf { return IndexNodeFormat.leafEntryHeaderBytes + keyBytes + load16(offset + 1) }
        return IndexNodeFormat.branchEntryHeaderBytes + keyBytes + IndexNodeFormat.pointerBytes
    }

    /// The encoded entry (header, key, value or pointer) of slot `index`.
    @inline(__always) func entry(_ index: Int) -> UnsafeRawBufferPointer {
        let offset = entryOffset(index)
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + entryBytes(atOffset: offset))])
    }

    @inline(__always) func key(_ index: Int) -> UnsafeRawBufferPointer {
        let offset = entryOffset(index)
        let start = offset + (isLeaf ? IndexNodeFormat.leafEntryHeaderBytes : IndexNodeFormat.branchEntryHeaderBytes)
        return UnsafeRawBufferPointer(rebasing: bytes[start..<(start + Int(bytes[offset]))])
    }

    @inline(__always) func value(_ index: Int) -> UnsafeRawBufferPointer {
        precondition(isLeaf, "value of a branch entry")
        let offset = entryOffset(index)
        let start = offset + IndexNodeFormat.leafEntryHeaderBytes + Int(bytes[offset])
        return UnsafeRawBufferPointer(rebasing: bytes[start..<(start + load16(offset + 1))])
    }

    func childPointer(_ index: Int) -> BlockPointer {
        precondition(!isLeaf, "child pointer of a leaf entry")
        let offset = entryOffset(index)
        return IndexNodePage.decodePointer(UnsafeRawBufferPointer(bytes), at: offset + IndexNodeFormat.branchEntryHeaderBytes + Int(bytes[offset]))
    }

    func setChildPointer(_ index: Int, _ pointer: BlockPointer) {
        precondition(!isLeaf, "child pointer of a leaf entry")
        let offset = entryOffset(index)
        IndexNodePage.encodePointer(pointer, into: bytes, at: offset + IndexNodeFormat.branchEntryHeaderBytes + Int(bytes[offset]))
    }

    // MARK: Search

    /// The first slot whose key is ≥ `key`, and whether it is equal.
    @inline(__always) func lowerBound(_ key: UnsafeRawBufferPointer) -> (index: Int, found: Bool) {
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) >> 1
            let order = compareKeys(self.key(middle), key)
            if order < 0 { low = middle + 1 } else if order > 0 { high = middle } else { return (middle, true) }
        }
        return (low, false)
    }

    /// The child of a branch whose range holds `key`: the last slot whose separator is ≤ `key`
    /// (slot 0 when `key` is below every separator, which only the root's empty bound allows).
    @inline(__always) func childIndex(for key: UnsafeRawBufferPointer) -> Int {
        assert(!isLeaf && count > 0, "child search in a leaf or an empty branch")
        let (index, found) = lowerBound(key)
        return found ? index : Swift.max(index - 1, 0)
    }

    // MARK: Changes

    /// Inserts the encoded `entry` at slot `index`; false (and nothing changed) when it does not
    /// fit even after compaction.
    func insert(_ entry: UnsafeRawBufferPointer, at index: Int, scratch: UnsafeMutableRawBufferPointer) -> Bool {
        precondition(index >= 0 && index <= count, "insert at slot \(index) of \(count)")
        assert(entry.count == IndexNodePage.encodedEntryBytes(entry, isLeaf: isLeaf), "entry length does not match its header")
        let needed = entry.count + IndexNodeFormat.slotBytes
        if contiguousFreeBytes < needed {
            if freeBytes < needed { return false }
            compact(scratch: scratch)
        }
        let offset = heapStart - entry.count
        UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<heapStart]).copyMemory(from: entry)
        let slots = IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * index
        let slotsEnd = IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * count
        if slotsEnd > slots {
            memmove(bytes.baseAddress! + slots + IndexNodeFormat.slotBytes, bytes.baseAddress! + slots, slotsEnd - slots)
        }
        store16(offset, at: slots)
        count += 1
        heapStart = offset
        assert(usedBytes <= IndexNodeFormat.payloadBytes, "node overfull after insert")
        return true
    }

    /// Removes slot `index`; its heap bytes become garbage until the next compaction.
    func remove(at index: Int) {
        precondition(index >= 0 && index < count, "remove slot \(index) of \(count)")
        let removedBytes = entryBytes(atOffset: entryOffset(index))
        let slots = IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * index
        let slotsEnd = IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * count
        memmove(bytes.baseAddress! + slots, bytes.baseAddress! + slots + IndexNodeFormat.slotBytes, slotsEnd - slots - IndexNodeFormat.slotBytes)
        count -= 1
        if count == 0 {
            heapStart = IndexNodeFormat.nodeBytes
            garbageBytes = 0
        } else {
            garbageBytes += removedBytes
        }
        assert(usedBytes >= IndexNodeFormat.slotBytes * count, "garbage accounting")
    }

    /// Rewrites the page in the canonical layout: entries in slot order at the end, no garbage,
    /// the gap zeroed. `scratch` is a page-sized buffer.
    func compact(scratch: UnsafeMutableRawBufferPointer) {
        precondition(scratch.count == IndexNodeFormat.nodeBytes && scratch.baseAddress != bytes.baseAddress, "compaction scratch")
        scratch.copyMemory(from: UnsafeRawBufferPointer(bytes))
        let source = IndexNodePage(scratch)
        let entryCount = count
        var heapBytes = 0
        for index in 0..<entryCount { heapBytes += source.entryBytes(atOffset: source.entryOffset(index)) }
        var cursor = IndexNodeFormat.nodeBytes - heapBytes
        let slotsEnd = IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * entryCount
        precondition(cursor >= slotsEnd, "compaction of an overfull node")
        heapStart = cursor
        garbageBytes = 0
        UnsafeMutableRawBufferPointer(rebasing: bytes[slotsEnd..<cursor]).initializeMemory(as: UInt8.self, repeating: 0)
        for index in 0..<entryCount {
            let entry = source.entry(index)
            UnsafeMutableRawBufferPointer(rebasing: bytes[cursor..<(cursor + entry.count)]).copyMemory(from: entry)
            store16(cursor, at: IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * index)
            cursor += entry.count
        }
        assert(cursor == IndexNodeFormat.nodeBytes, "compaction left a gap")
    }

    /// Fills an initialized, empty page with `entries` (encoded, in key order) in the canonical
    /// layout.
    func fill<C: Collection>(with entries: C) where C.Element == UnsafeRawBufferPointer {
        precondition(count == 0 && heapStart == IndexNodeFormat.nodeBytes, "fill of a non-empty node")
        var heapBytes = 0
        for entry in entries { heapBytes += entry.count }
        var cursor = IndexNodeFormat.nodeBytes - heapBytes
        precondition(cursor >= IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * entries.count, "fill beyond the node")
        heapStart = cursor
        var index = 0
        for entry in entries {
            UnsafeMutableRawBufferPointer(rebasing: bytes[cursor..<(cursor + entry.count)]).copyMemory(from: entry)
            store16(cursor, at: IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * index)
            cursor += entry.count
            index += 1
        }
        count = index
    }

    // MARK: Encoding

    /// Child pointers use the pool's one on-disk pointer form (`BlockPointer.encode`, 32 bytes).
    static func encodePointer(_ pointer: BlockPointer, into bytes: UnsafeMutableRawBufferPointer, at offset: Int) {
        precondition(IndexNodeFormat.pointerBytes == BlockPointer.encodedByteCount, "pointer field size")
        pointer.encode(into: bytes, at: offset)
    }

    static func decodePointer(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> BlockPointer {
        BlockPointer.decode(from: bytes, at: offset)
    }

    /// Encodes a leaf entry into `buffer`; returns the encoded bytes.
    static func encodeLeafEntry(key: [UInt8], value: [UInt8], into buffer: UnsafeMutableRawBufferPointer) -> UnsafeRawBufferPointer {
        precondition(key.count <= IndexTree.keyBytesMax && value.count <= IndexTree.valueBytesMax, "entry over the limits")
        let total = IndexNodeFormat.leafEntryHeaderBytes + key.count + value.count
        precondition(total <= buffer.count, "entry scratch too small")
        buffer[0] = UInt8(key.count)
        buffer.storeBytes(of: UInt16(value.count).littleEndian, toByteOffset: 1, as: UInt16.self)
        let keyStart = IndexNodeFormat.leafEntryHeaderBytes
        UnsafeMutableRawBufferPointer(rebasing: buffer[keyStart..<(keyStart + key.count)]).copyBytes(from: key)
        UnsafeMutableRawBufferPointer(rebasing: buffer[(keyStart + key.count)..<total]).copyBytes(from: value)
        return UnsafeRawBufferPointer(rebasing: buffer[0..<total])
    }

    /// Encodes a branch entry into `buffer`; returns the encoded bytes.
    static func encodeBranchEntry(key: UnsafeRawBufferPointer, pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) -> UnsafeRawBufferPointer {
        precondition(key.count <= IndexTree.keyBytesMax, "separator of \(key.count) bytes")
        let total = IndexNodeFormat.branchEntryHeaderBytes + key.count + IndexNodeFormat.pointerBytes
        precondition(total <= buffer.count, "entry scratch too small")
        buffer[0] = UInt8(key.count)
        if key.count > 0 {
            UnsafeMutableRawBufferPointer(rebasing: buffer[1..<(1 + key.count)]).copyMemory(from: key)
        }
        encodePointer(pointer, into: buffer, at: 1 + key.count)
        return UnsafeRawBufferPointer(rebasing: buffer[0..<total])
    }

    /// The length an encoded entry's header says it has.
    static func encodedEntryBytes(_ entry: UnsafeRawBufferPointer, isLeaf: Bool) -> Int {
        let keyBytes = Int(entry[0])
        if isLeaf { return IndexNodeFormat.leafEntryHeaderBytes + keyBytes + Int(entry[1]) + Int(entry[2]) << 8 }
        return IndexNodeFormat.branchEntryHeaderBytes + keyBytes + IndexNodeFormat.pointerBytes
    }

    // MARK: Validation

    /// Why the page is not a well-formed node at `level` as read from disk, or nil. Checked on
    /// every read after the checksum passed, before anything trusts a slot.
    func formatProblem(expectedLevel: Int?, isRoot: Bool) -> String? {
        if magic != IndexNodeFormat.magic { return "bad magic \(String(magic, radix: 16))" }
        if version != Int(IndexNodeFormat.version) { return "format version \(version), expected \(IndexNodeFormat.version)" }
        if level > IndexNodeFormat.levelMax { return "level \(level) above \(IndexNodeFormat.levelMax)" }
        if let expectedLevel, level != expectedLevel { return "level \(level), expected \(expectedLevel)" }
        if bytes[7] != 0 || load16(14) != 0 { return "reserved header bytes are not zero" }
        if garbageBytes != 0 { return "garbage bytes \(garbageBytes) in a written node" }
        if !isRoot && treeEntryCount != 0 { return "tree entry count \(treeEntryCount) in a non-root node" }
        let slotsEnd = IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * count
        if heapStart < slotsEnd || heapStart > IndexNodeFormat.nodeBytes { return "heap start \(heapStart) outside \(slotsEnd)...\(IndexNodeFormat.nodeBytes) for \(count) entries" }
        if !isLeaf && count == 0 { return "empty branch" }
        var expectedOffset = heapStart
        for index in 0..<count {
            let offset = load16(IndexNodeFormat.headerBytes + IndexNodeFormat.slotBytes * index)
            if offset != expectedOffset { return "slot \(index) at offset \(offset), expected \(expectedOffset) (entries in slot order)" }
            let headerBytes = isLeaf ? IndexNodeFormat.leafEntryHeaderBytes : IndexNodeFormat.branchEntryHeaderBytes
            guard offset + headerBytes <= IndexNodeFormat.nodeBytes else { return "slot \(index) header past the end" }
            if isLeaf && load16(offset + 1) > IndexTree.valueBytesMax { return "slot \(index) value of \(load16(offset + 1)) bytes" }
            let end = offset + entryBytes(atOffset: offset)
            guard end <= IndexNodeFormat.nodeBytes else { return "slot \(index) entry ends at \(end), past the node" }
            expectedOffset = end
            if index > 0 && compareKeys(key(index - 1), key(index)) >= 0 { return "keys of slots \(index - 1) and \(index) out of order" }
        }
        if expectedOffset != IndexNodeFormat.nodeBytes { return "heap ends at \(expectedOffset), not at the end of the node" }
        for offset in slotsEnd..<heapStart where bytes[offset] != 0 { return "non-zero byte at \(offset) in the free space" }
        return nil
    }
}

/// A node in memory: its page, where it lives on disk, and (while dirty) its dirty children.
///
/// Clean nodes other than the root live only in the `IndexNodeCache` (found by pointer).
/// A dirty node is pinned: its parent, itself dirty, holds it in `children` at its slot, and
/// the slot's on-disk pointer is stale until `flush` writes the child and stores the new one.
final class IndexNode {
    let page: IndexNodePage
    /// Clean: where the node is. Dirty: where it was (freed at the next flush), or null for a
    /// node created since the last flush.
    var pointer: BlockPointer
    var isDirty: Bool
    /// Dirty branches only: the dirty child of each slot (nil where the child is clean).
    var children: [IndexNode?] = []
    // The cache's LRU list (the cache's dictionary keeps members alive).
    unowned(unsafe) var lruNewer: IndexNode? = nil
    unowned(unsafe) var lruOlder: IndexNode? = nil
    var isCached = false

    /// A new, empty, dirty node.
    init(level: Int) {
        page = IndexNodePage(UnsafeMutableRawBufferPointer.allocate(byteCount: IndexNodeFormat.nodeBytes, alignment: 64))
        page.initialize(level: level)
        pointer = .null
        isDirty = true
    }

    /// A node about to be read from `pointer` (the page is zeroed, not yet a valid node).
    init(loadingFrom pointer: BlockPointer) {
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: IndexNodeFormat.nodeBytes, alignment: 64)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
        page = IndexNodePage(bytes)
        self.pointer = pointer
        isDirty = false
    }

    deinit { page.bytes.deallocate() }

    var level: Int { page.level }
}
