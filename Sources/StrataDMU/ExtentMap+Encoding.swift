// ExtentMap+Encoding — the extent wire form, the extent-map block format, load, flush, verify.
//
// Theory. One extent encodes to 24 + 12 × copies + 4 × chunks bytes, little-endian:
//     +0 u64 logical offset · +8 u32 length in 4 KiB blocks · +12 u8 chunk shift · +13 u8 copies
//     +14 u16 flags (0) · +16 u64 birth checkpoint · copies × (u32 device index, u64 offset)
//     · chunks × u32 crc32c
// The same form is used inline in the dnode (extents packed back to back) and in leaf blocks.
//
// Extent-map block (`mapBlockBytes`, 16 KiB by default; crc32c in the parent's pointer):
//     +0 "XMAP" · +4 u8 version · +5 u8 level (0 = leaf) · +6 u16 reserved · +8 u64 object number
//     +16 u32 entry count · +20 u32 used bytes (header included) · +24 u64 reserved · +32 entries
// Leaf entries are extents. Index entries are 56 bytes: u64 span start, u64 span end (of the
// extents below), u32 extent count below, u32 reserved, 32-byte block pointer (`BlockPointer.encode`).
//
// Flush (at a checkpoint): a map that fits the dnode's inline capacity goes inline and its blocks
// are freed. Otherwise the extents are cut into leaves at content-defined boundaries; a leaf whose
// span and count equal a persisted leaf's and whose span meets no range changed since the last
// flush has the same bytes, and keeps its block; every other leaf is written to a new block. When
// any leaf changed, the index levels are rebuilt (written new, old index blocks freed). New blocks
// are written before any old one is freed, and a failed write frees what this flush wrote and
// leaves the map as it was, so the previous tree stays whole.

import StrataIO
import StrataPool

extension ExtentMap {
    public static let formatVersion: UInt8 = 1
    static let blockMagic: [UInt8] = Array("XMAP".utf8)
    static let blockHeaderBytes = 32
    static let indexEntryBytes = 56
    static let extentFixedBytes = 24
    /// Content-defined leaf cut: after at least this many bytes, at an extent whose offset hash hits.
    static var leafCutMinBytes: Int { 8 << 10 }

    // MARK: Extent wire form

    static func encodedBytes(_ extent: MappedExtent) -> Int {
        extentFixedBytes + 12 * extent.copies.count + 4 * extent.chunkChecksums.count
    }

    static func encode(_ extent: MappedExtent, into writer: ByteWriter, at offset: Int) -> Int {
        writer.put(extent.logicalOffsetBytes, at: offset)
        writer.put(UInt32(extent.lengthBytes / ExtentMapLimits.blockBytes), at: offset + 8)
        writer.put(extent.chunkShift, at: offset + 12)
        writer.put(UInt8(extent.copies.count), at: offset + 13)
        writer.put(UInt16(0), at: offset + 14)
        writer.put(extent.birthCheckpoint, at: offset + 16)
        var cursor = offset + extentFixedBytes
        for copy in extent.copies {
            writer.put(UInt32(copy.deviceIndex), at: cursor)
            writer.put(copy.offsetBytes, at: cursor + 4)
            cursor += 12
        }
        for checksum in extent.chunkChecksums {
            writer.put(checksum, at: cursor)
            cursor += 4
        }
        precondition(cursor - offset == encodedBytes(extent))
        return cursor
    }

    /// Decodes one extent at `offset` (within `limit`); returns it and the next offset.
    static func decodeExtent(_ reader: ByteReader, at offset: Int, limit: Int) -> (MappedExtent, Int)? {
        guard offset + extentFixedBytes <= limit else { return nil }
        let logical = reader.get(UInt64.self, at: offset)
        let lengthBytes = UInt64(reader.get(UInt32.self, at: offset + 8)) * ExtentMapLimits.blockBytes
        let chunkShift = reader.get(UInt8.self, at: offset + 12)
        let copyCount = Int(reader.get(UInt8.self, at: offset + 13))
        guard reader.get(UInt16.self, at: offset + 14) == 0, (1 ... ExtentMapLimits.copiesMax).contains(copyCount),
              (ExtentMapLimits.chunkShiftMin ... ExtentMapLimits.chunkShiftMax).contains(chunkShift), lengthBytes > 0 else { return nil }
        let chunkBytes = UInt64(1) << UInt64(chunkShift)
        let chunkCount = Int((lengthBytes + chunkBytes - 1) / chunkBytes)
        guard chunkCount <= ExtentMapLimits.chunkCountMax else { return nil }
        let end = offset + extentFixedBytes + 12 * copyCount + 4 * chunkCount
        guard end <= limit else { return nil }
        var cursor = offset + extentFixedBytes
        var copies: [Extent] = []
        for _ in 0 ..< copyCount {
            copies.append(Extent(deviceIndex: Int(reader.get(UInt32.self, at: cursor)), offsetBytes: reader.get(UInt64.self, at: cursor + 4),
                                 lengthBytes: lengthBytes))
            cursor += 12
        }
        var checksums: [UInt32] = []
        checksums.reserveCapacity(chunkCount)
        for _ in 0 ..< chunkCount {
            checksums.append(reader.get(UInt32.self, at: cursor))
            cursor += 4
        }
        let extent = MappedExtent(unchecked: logical, lengthBytes: lengthBytes, copies: copies, birth: reader.get(UInt64.self, at: offset + 16),
                                  chunkShift: chunkShift, checksums: checksums)
        guard extent.formatViolation == nil else { return nil }
        return (extent, end)
    }

    static func encodeInline(_ extents: [MappedExtent]) -> [UInt8] {
        let total = extents.reduce(0) { $0 + encodedBytes($1) }
        var bytes = [UInt8](repeating: 0, count: total)
        bytes.withUnsafeMutableBytes { raw in
            let writer = ByteWriter(raw)
            var offset = 0
            for extent in extents { offset = encode(extent, into: writer, at: offset) }
            precondition(offset == total)
        }
        return bytes
    }

    /// Decodes and checks a run of extents (inline list or leaf entries).
    static func decodeExtents(_ bytes: UnsafeRawBufferPointer, from start: Int, to limit: Int, count: Int?,
                              object: UInt64, block: BlockPointer?) throws(ExtentMapError) -> [MappedExtent] {
        let reader = ByteReader(bytes)
        var extents: [MappedExtent] = []
        var offset = start
        while count.map({ extents.count < $0 }) ?? (offset < limit) {
            guard let (extent, next) = decodeExtent(reader, at: offset, limit: limit) else {
                throw .corrupt(object: object, block: block, reason: "malformed extent \(extents.count) at byte \(offset)")
            }
            if let previous = extents.last, previous.logicalEndBytes > extent.logicalOffsetBytes {
                throw .corrupt(object: object, block: block, reason: "extent \(extent.logicalRange) overlaps or precedes \(previous.logicalRange)")
            }
            extents.append(extent)
            offset = next
        }
        guard offset == limit else { throw .corrupt(object: object, block: block, reason: "extents end at \(offset), expected \(limit)") }
        return extents
    }

    // MARK: Load and verify

    /// Opens the map `root` describes, reading and checking every block of a tree.
    public static func load(object: UInt64, root: ExtentMapRoot, store: any MetadataStore,
                            mapBlockBytes: Int = ExtentMapLimits.mapBlockBytesDefault) throws(ExtentMapError) -> ExtentMap {
        let map = ExtentMap(objectNumber: object, mapBlockBytes: mapBlockBytes)
        switch root {
        case .inline(let bytes):
            let decoded: Result<[MappedExtent], ExtentMapError> = bytes.withUnsafeBytes { raw in
                Result { () throws(ExtentMapError) in try decodeExtents(raw, from: 0, to: raw.count, count: nil, object: object, block: nil) }
            }
            map.extents = try decoded.get()
        case .tree(let pointer):
            try map.loadNode(pointer, expectedLevel: nil, expectedSpan: nil, expectedCount: nil, store: store)
            for index in map.extents.indices.dropFirst() where map.extents[index - 1].logicalEndBytes > map.extents[index].logicalOffsetBytes {
                throw .corrupt(object: object, block: pointer, reason: "leaves overlap at extent \(map.extents[index].logicalRange)")
            }
        }
        map.persistedRoot = root
        return map
    }

    /// Reads the tree under `root` and checks it; returns every block and data extent it references.
    public static func verify(object: UInt64, root: ExtentMapRoot, store: any MetadataStore) throws(ExtentMapError) -> ExtentMapReferences {
        let map = try load(object: object, root: root, store: store)
        return map.references
    }

    /// What the map as last flushed or loaded references.
    public var references: ExtentMapReferences {
        ExtentMapReferences(metadataBlocks: persistedIndexBlocks + persistedLeaves.map(\.pointer),
                            dataExtents: extents.flatMap(\.copies))
    }

    private func loadNode(_ pointer: BlockPointer, expectedLevel: Int?, expectedSpan: Range<UInt64>?, expectedCount: Int?,
                          store: any MetadataStore) throws(ExtentMapError) {
        if let problem = pointer.formatProblem { throw .metadata(object: objectNumber, .unreadablePointer(pointer: pointer, problem: problem)) }
        guard pointer.lengthBytes >= UInt64(Self.blockHeaderBytes), pointer.lengthBytes <= 1 << 20 else {
            throw .corrupt(object: objectNumber, block: pointer, reason: "block length \(pointer.lengthBytes)")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(pointer.lengthBytes), alignment: 4096)
        defer { buffer.deallocate() }
        do { try store.read(pointer, into: buffer) } catch { throw .metadata(object: objectNumber, error) }
        let bytes = UnsafeRawBufferPointer(buffer)
        let reader = ByteReader(bytes)
        guard reader.matches(Self.blockMagic, at: 0) else { throw .corrupt(object: objectNumber, block: pointer, reason: "bad magic") }
        let version = reader.get(UInt8.self, at: 4)
        guard version == Self.formatVersion else { throw .unsupportedVersion(object: objectNumber, version: version) }
        let level = Int(reader.get(UInt8.self, at: 5))
        let owner = reader.get(UInt64.self, at: 8)
        let count = Int(reader.get(UInt32.self, at: 16))
        let used = Int(reader.get(UInt32.self, at: 20))
        guard owner == objectNumber, expectedLevel.map({ $0 == level }) ?? true, count > 0,
              used >= Self.blockHeaderBytes, used <= bytes.count else {
            throw .corrupt(object: objectNumber, block: pointer,
                           reason: "header: object \(owner), level \(level) (expected \(expectedLevel.map(String.init) ?? "any")), \(count) entries, \(used) bytes used")
        }
        if level == 0 {
            let leaf = try Self.decodeExtents(bytes, from: Self.blockHeaderBytes, to: used, count: count, object: objectNumber, block: pointer)
            let span = leaf.first!.logicalOffsetBytes ..< leaf.last!.logicalEndBytes
            guard expectedSpan.map({ $0 == span }) ?? true, expectedCount.map({ $0 == count }) ?? true else {
                throw .corrupt(object: objectNumber, block: pointer, reason: "leaf spans \(span) with \(count) extents, its parent says \(expectedSpan!) with \(expectedCount!)")
            }
            extents += leaf
            persistedLeaves.append(PersistedLeaf(span: span, count: count, pointer: pointer))
            return
        }
        guard used == Self.blockHeaderBytes + count * Self.indexEntryBytes else {
            throw .corrupt(object: objectNumber, block: pointer, reason: "index node of \(count) entries uses \(used) bytes")
        }
        persistedIndexBlocks.append(pointer)
        var total = 0
        var previousEnd: UInt64 = 0
        var first: UInt64 = 0
        for entry in 0 ..< count {
            let offset = Self.blockHeaderBytes + entry * Self.indexEntryBytes
            let start = reader.get(UInt64.self, at: offset), end = reader.get(UInt64.self, at: offset + 8)
            let childCount = Int(reader.get(UInt32.self, at: offset + 16))
            guard start < end, entry == 0 || start >= previousEnd, childCount > 0 else {
                throw .corrupt(object: objectNumber, block: pointer, reason: "index entry \(entry): span \(start)..<\(end), \(childCount) extents")
            }
            if entry == 0 { first = start }
            try loadNode(reader.pointer(at: offset + 24), expectedLevel: level - 1, expectedSpan: start ..< end,
                         expectedCount: level == 1 ? childCount : nil, store: store)
            total += childCount
            previousEnd = end
        }
        guard expectedSpan.map({ $0 == first ..< previousEnd }) ?? true else {
            throw .corrupt(object: objectNumber, block: pointer, reason: "index node spans \(first)..<\(previousEnd), its parent says \(expectedSpan!)")
        }
        _ = total
    }

    // MARK: Flush

    /// Writes the map for a checkpoint: inline when it fits `inlineCapacityBytes`, else as a tree
    /// whose changed blocks are written copy-on-write (old ones freed). Returns the root to store
    /// in the dnode. On error nothing changed and every block this call wrote was freed.
    public func flush(to store: any MetadataStore, inlineCapacityBytes: Int) throws(ExtentMapError) -> ExtentMapRoot {
        precondition(inlineCapacityBytes >= 0 && inlineCapacityBytes <= DnodeLimits.bodyBytes,
                     "inline capacity \(inlineCapacityBytes)")
        let total = extents.reduce(0) { $0 + Self.encodedBytes($1) }
        if total <= inlineCapacityBytes {
            let root = ExtentMapRoot.inline(Self.encodeInline(extents))
            for pointer in persistedIndexBlocks + persistedLeaves.map(\.pointer) { store.free(pointer) }
            persistedIndexBlocks = []
            persistedLeaves = []
            persistedRoot = root
            dirtyRanges = []
            return root
        }
        if dirtyRanges.isEmpty, case .tree = persistedRoot { return persistedRoot }

        let dirty = Self.merged(dirtyRanges)
        var written: [BlockPointer] = []
        do {
            var leaves: [PersistedLeaf] = []
            var reused = Set<Int>()      // indices into persistedLeaves
            var persistedBySpan: [UInt64: Int] = [:]
            for (index, leaf) in persistedLeaves.enumerated() { persistedBySpan[leaf.span.lowerBound] = index }
            for range in leafRanges() {
                let span = extents[range.lowerBound].logicalOffsetBytes ..< extents[range.upperBound - 1].logicalEndBytes
                if let old = persistedBySpan[span.lowerBound], persistedLeaves[old].span == span,
                   persistedLeaves[old].count == range.count, !Self.intersects(dirty, span) {
                    leaves.append(persistedLeaves[old])
                    reused.insert(old)
                    continue
                }
                let pointer = try writeBlock(level: 0, entryCount: range.count) { writer, offset in
                    var cursor = offset
                    for extent in extents[range] { cursor = Self.encode(extent, into: writer, at: cursor) }
                    return cursor
                }
                written.append(pointer)
                leaves.append(PersistedLeaf(span: span, count: range.count, pointer: pointer))
            }
            precondition(leaves.reduce(0) { $0 + $1.count } == extents.count)

            var root: BlockPointer
            var indexBlocks: [BlockPointer]
            if leaves == persistedLeaves, case .tree(let oldRoot) = persistedRoot {
                root = oldRoot
                indexBlocks = persistedIndexBlocks
            } else {
                (root, indexBlocks) = try writeIndex(over: leaves, written: &written)
            }
            // Everything new is written: free what the new tree no longer references.
            if indexBlocks != persistedIndexBlocks {
                for pointer in persistedIndexBlocks { store.free(pointer) }
            }
            for (index, leaf) in persistedLeaves.enumerated() where !reused.contains(index) { store.free(leaf.pointer) }
            persistedLeaves = leaves
            persistedIndexBlocks = indexBlocks
            persistedRoot = .tree(root)
            dirtyRanges = []
            return persistedRoot
        } catch {
            for pointer in written { store.free(pointer) }
            throw error
        }

        func writeBlock(level: Int, entryCount: Int, body: (ByteWriter, Int) -> Int) throws(ExtentMapError) -> BlockPointer {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: mapBlockBytes, alignment: 4096)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            let writer = ByteWriter(buffer)
            writer.put(bytes: Self.blockMagic, at: 0)
            writer.put(Self.formatVersion, at: 4)
            writer.put(UInt8(level), at: 5)
            writer.put(objectNumber, at: 8)
            writer.put(UInt32(entryCount), at: 16)
            let used = body(writer, Self.blockHeaderBytes)
            precondition(used <= mapBlockBytes && entryCount > 0)
            writer.put(UInt32(used), at: 20)
            do { return try store.writeNew(UnsafeRawBufferPointer(buffer)) } catch { throw .metadata(object: objectNumber, error) }
        }

        func writeIndex(over leaves: [PersistedLeaf], written: inout [BlockPointer]) throws(ExtentMapError) -> (BlockPointer, [BlockPointer]) {
            var level = 0
            var entries = leaves.map { (span: $0.span, count: $0.count, pointer: $0.pointer) }
            var indexBlocks: [BlockPointer] = []
            let fanout = (mapBlockBytes - Self.blockHeaderBytes) / Self.indexEntryBytes
            precondition(fanout >= 2)
            while entries.count > 1 {
                level += 1
                precondition(level < 64, "extent-map tree deeper than 64 levels")
                var parents: [(span: Range<UInt64>, count: Int, pointer: BlockPointer)] = []
                var start = 0
                while start < entries.count {
                    let group = entries[start ..< min(start + fanout, entries.count)]
                    let pointer = try writeBlock(level: level, entryCount: group.count) { writer, offset in
                        var cursor = offset
                        for entry in group {
                            writer.put(entry.span.lowerBound, at: cursor)
                            writer.put(entry.span.upperBound, at: cursor + 8)
                            writer.put(UInt32(entry.count), at: cursor + 16)
                            writer.put(entry.pointer, at: cursor + 24)
                            cursor += Self.indexEntryBytes
                        }
                        return cursor
                    }
                    written.append(pointer)
                    indexBlocks.append(pointer)
                    parents.append((span: group.first!.span.lowerBound ..< group.last!.span.upperBound,
                                    count: group.reduce(0) { $0 + $1.count }, pointer: pointer))
                    start += fanout
                }
                entries = parents
            }
            return (entries[0].pointer, indexBlocks)
        }
    }

    /// Leaf boundaries over `extents`: cut when the next extent would overflow a block, or after
    /// `leafCutMinBytes` at an extent whose offset hash hits (1 in 4): content-defined, so an edit
    /// moves only nearby boundaries.
    func leafRanges() -> [Range<Int>] {
        let capacity = mapBlockBytes - Self.blockHeaderBytes
        let cutMin = min(Self.leafCutMinBytes, capacity / 2)
        var ranges: [Range<Int>] = []
        var start = 0
        var used = 0
        for index in extents.indices {
            let size = Self.encodedBytes(extents[index])
            precondition(size <= capacity, "extent of \(size) bytes exceeds a map block of \(mapBlockBytes)")
            let hashHit = (extents[index].logicalOffsetBytes >> 12) &* 0x9E37_79B9_7F4A_7C15 >> 62 == 0
            if index > start && (used + size > capacity || (used >= cutMin && hashHit)) {
                ranges.append(start ..< index)
                start = index
                used = 0
            }
            used += size
        }
        if start < extents.count { ranges.append(start ..< extents.count) }
        return ranges
    }

    static func merged(_ ranges: [Range<UInt64>]) -> [Range<UInt64>] {
        var result: [Range<UInt64>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = result.last, range.lowerBound <= last.upperBound {
                result[result.count - 1] = last.lowerBound ..< max(last.upperBound, range.upperBound)
            } else {
                result.append(range)
            }
        }
        return result
    }

    /// True when a sorted, disjoint `ranges` overlaps `span`.
    static func intersects(_ ranges: [Range<UInt64>], _ span: Range<UInt64>) -> Bool {
        var low = 0, high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound <= span.lowerBound { low = middle + 1 } else { high = middle }
        }
        return low < ranges.count && ranges[low].lowerBound < span.upperBound
    }
}

extension MappedExtent {
    /// For the decoder: builds without the initializer's precondition (the caller checks
    /// `formatViolation` and reports corruption instead of trapping).
    init(unchecked logical: UInt64, lengthBytes: UInt64, copies: [Extent], birth: UInt64, chunkShift: UInt8, checksums: [UInt32]) {
        self.logicalOffsetBytes = logical
        self.lengthBytes = lengthBytes
        self.copies = copies
        self.birthCheckpoint = birth
        self.chunkShift = chunkShift
        self.chunkChecksums = checksums
    }
}
