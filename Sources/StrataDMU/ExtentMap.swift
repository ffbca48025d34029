// ExtentMap — one object's logical→physical map: which byte ranges hold data, where, with which
// checksums, born in which checkpoint; everything else is a hole.
//
// Theory. The map is a sorted list of non-overlapping `MappedExtent`s. Each names a logical range
// (4 KiB-aligned start and length), its physical places (one `Extent` per copy, all the same
// length), its birth checkpoint, and a crc32c per *chunk*. Anything not covered is a hole (reads
// as zeros; SEEK_HOLE stops there; fiemap omits it).
//
// Checksum granularity: one crc32c per chunk, the chunk size recorded per extent (4–64 KiB, a
// power of two). The default is 4 KiB, the block size (btrfs's choice), because:
//   - a 4 KiB read verifies by reading 4 KiB: with per-record checksums a 4 KiB read of a 1 MiB
//     record must read and hash all 1 MiB (256×), with 64 KiB chunks 64 KiB (16×) — the 4 KiB
//     random-read targets cannot afford that;
//   - a 4 KiB-aligned overwrite splits an extent on a chunk boundary, so it never needs a
//     read-modify-write to re-checksum the rest of a chunk (with 64 KiB chunks every 4 KiB
//     overwrite at home would read 60 KiB and rewrite 64 KiB);
//   - the cost is 4 bytes per 4 KiB (0.1%: 1 KiB of map per 1 MiB record, 1 GiB per TiB of data),
//     which the extent-map blocks hold easily (15 one-MiB extents per 16 KiB leaf).
// Larger chunks (`chunkShift` up to 16) stay available for data that is written once and read
// in large pieces (cold data migrated to a spill device): the writer chooses per extent. The map
// requires every cut (overwrite or punch edge) inside an extent to fall on that extent's chunk
// boundary (a precondition: the data path widens a small write to whole chunks, its RMW), so a
// chunk's checksum always covers bytes that are all still referenced.
//
// Overwrite and punch never modify data in place: they cut the old extents at the range's edges,
// and return the physical pieces no longer referenced so the caller frees them (deferred by the
// pool until the checkpoint is durable). The replacing extent is new space (copy-on-write).
//
// Storage: small maps live inline in the dnode (`ExtentMapRoot.inline`); past the dnode's inline
// capacity the map is a tree of extent-map blocks (16 KiB by default): leaves hold extents, index
// nodes hold (span, count, child pointer) entries, the root pointer is in the dnode. Leaf
// boundaries are content-defined (cut after ~8 KiB where a hash of the next extent's offset hits),
// so an edit moves only nearby boundaries, and `flush` rewrites only leaves whose span intersects
// a range changed since the last flush (plus the index nodes, which are few). The whole map is in
// memory while the object is open (lazy leaf loading is future work).
//
// Invariants: extents sorted by logical offset, non-overlapping, each within the format limits
// (`ExtentMapLimits`), checksum count = ceil(length / chunk). A block read back is decoded with the
// same checks (magic, version, object number, level, ordering, spans matching the parent entry).
// Crash safety: blocks are written copy-on-write by `flush` (called by the checkpoint); the dnode
// records the new root; old blocks are freed through the store (deferred by the pool). A crash
// before the uberblock leaves the old tree intact and referenced; the intent log replays the
// changes made since.

import StrataIO
import StrataPool

/// Named limits of extents and extent-map blocks, with their reasons.
public enum ExtentMapLimits {
    /// Block granularity of logical offsets and lengths: the metadata/data block size.
    public static let blockBytes: UInt64 = 4096
    /// Smallest and largest checksum chunk (the 4 KiB–64 KiB range).
    public static let chunkShiftMin: UInt8 = 12
    public static let chunkShiftMax: UInt8 = 16
    /// Default chunk: 4 KiB (see the file comment).
    public static let chunkShiftDefault: UInt8 = 12
    /// Most checksums one extent carries: bounds an extent's encoding to ~4.1 KiB so a 16 KiB
    /// leaf always holds at least three, and an extent to 4 MiB at 4 KiB chunks (records are 1 MiB).
    public static let chunkCountMax = 1024
    /// Copies per extent: the pool's copies-per-role maximum.
    public static let copiesMax = 3
    /// Default size of an extent-map block: 16 KiB (a dozen 1 MiB extents, ~290 index entries).
    public static let mapBlockBytesDefault = 16 << 10
}

/// One mapped range of an object.
public struct MappedExtent: Equatable, Sendable, CustomStringConvertible {
    public var logicalOffsetBytes: UInt64
    public var lengthBytes: UInt64
    /// The physical places, one per copy, each `lengthBytes` long; copy 0 is read first.
    public var copies: [Extent]
    public var birthCheckpoint: UInt64
    /// log2 of the checksum chunk size.
    public var chunkShift: UInt8
    /// crc32c of each chunk, in order; the last chunk may be shorter than `chunkBytes`.
    public var chunkChecksums: [UInt32]

    public init(logicalOffsetBytes: UInt64, copies: [Extent], birthCheckpoint: UInt64,
                chunkShift: UInt8 = ExtentMapLimits.chunkShiftDefault, chunkChecksums: [UInt32]) {
        precondition(!copies.isEmpty, "extent at \(logicalOffsetBytes) without a physical copy")
        self.logicalOffsetBytes = logicalOffsetBytes
        self.lengthBytes = copies[0].lengthBytes
        self.copies = copies
        self.birthCheckpoint = birthCheckpoint
        self.chunkShift = chunkShift
        self.chunkChecksums = chunkChecksums
        precondition(formatViolation == nil, "invalid extent: \(formatViolation!)")
    }

    public var logicalEndBytes: UInt64 { logicalOffsetBytes + lengthBytes }
    public var logicalRange: Range<UInt64> { logicalOffsetBytes ..< logicalEndBytes }
    public var chunkBytes: UInt64 { 1 << UInt64(chunkShift) }
    public var chunkCount: Int { Int((lengthBytes + chunkBytes - 1) >> UInt64(chunkShift)) }

    public var description: String {
        "[\(logicalOffsetBytes)+\(lengthBytes) → \(copies.map(\.description).joined(separator: ",")) born \(birthCheckpoint), \(chunkChecksums.count)×\(chunkBytes)]"
    }

    /// Why this extent breaks the format, or nil. Shared by the initializer (programmer errors)
    /// and the decoder (corrupt blocks).
    var formatViolation: String? {
        let block = ExtentMapLimits.blockBytes
        guard logicalOffsetBytes % block == 0, lengthBytes > 0, lengthBytes % block == 0 else {
            return "logical \(logicalOffsetBytes)+\(lengthBytes) not a non-empty multiple of \(block)"
        }
        guard logicalOffsetBytes <= UInt64.max - lengthBytes else { return "logical end past 2^64" }
        guard (ExtentMapLimits.chunkShiftMin ... ExtentMapLimits.chunkShiftMax).contains(chunkShift) else {
            return "chunk shift \(chunkShift)"
        }
        guard chunkCount <= ExtentMapLimits.chunkCountMax, chunkChecksums.count == chunkCount else {
            return "\(chunkChecksums.count) checksums for \(chunkCount) chunks (max \(ExtentMapLimits.chunkCountMax))"
        }
        guard (1 ... ExtentMapLimits.copiesMax).contains(copies.count),
              copies.allSatisfy({ $0.lengthBytes == lengthBytes && $0.deviceIndex >= 0 && $0.deviceIndex <= Int(UInt32.max) }) else {
            return "\(copies.count) copies of unequal length or bad device"
        }
        guard copies.allSatisfy({ $0.offsetBytes <= UInt64.max - $0.lengthBytes }) else { return "a copy's end past 2^64" }
        return nil
    }

    /// The part of this extent covering `range` (inside it); cuts must be on chunk boundaries.
    public func slice(_ range: Range<UInt64>) -> MappedExtent {
        precondition(range.lowerBound >= logicalOffsetBytes && range.upperBound <= logicalEndBytes && !range.isEmpty,
                     "slice \(range) outside extent \(logicalRange)")
        let startDelta = range.lowerBound - logicalOffsetBytes
        let endDelta = range.upperBound - logicalOffsetBytes
        precondition(startDelta % chunkBytes == 0 && (range.upperBound == logicalEndBytes || endDelta % chunkBytes == 0),
                     "cut of extent \(logicalRange) at \(range) is not on its \(chunkBytes)-byte chunk boundaries")
        var piece = self
        piece.logicalOffsetBytes = range.lowerBound
        piece.lengthBytes = range.upperBound - range.lowerBound
        piece.copies = copies.map { Extent(deviceIndex: $0.deviceIndex, offsetBytes: $0.offsetBytes + startDelta, lengthBytes: piece.lengthBytes) }
        let firstChunk = Int(startDelta >> UInt64(chunkShift))
        piece.chunkChecksums = Array(chunkChecksums[firstChunk ..< firstChunk + piece.chunkCount])
        return piece
    }

    /// The chunks a read of `logicalRange` (inside this extent) must read to verify it.
    public func chunkSpan(covering logicalRange: Range<UInt64>) -> ChunkSpan {
        precondition(logicalRange.lowerBound >= logicalOffsetBytes && logicalRange.upperBound <= logicalEndBytes && !logicalRange.isEmpty,
                     "read \(logicalRange) outside extent \(self.logicalRange)")
        let first = Int((logicalRange.lowerBound - logicalOffsetBytes) >> UInt64(chunkShift))
        let last = Int((logicalRange.upperBound - 1 - logicalOffsetBytes) >> UInt64(chunkShift))
        let start = UInt64(first) << UInt64(chunkShift)
        let end = min(UInt64(last + 1) << UInt64(chunkShift), lengthBytes)
        return ChunkSpan(chunks: first ..< last + 1, offsetInExtentBytes: start, lengthBytes: end - start)
    }

    /// Verifies bytes read from one copy of this extent for the chunks `span` names.
    public func verify(_ bytes: UnsafeRawBufferPointer, span: ChunkSpan, object: UInt64) throws(ExtentMapError) {
        precondition(bytes.count == Int(span.lengthBytes), "\(bytes.count) bytes for a chunk span of \(span.lengthBytes)")
        var offset = 0
        for chunk in span.chunks {
            let length = Int(min(chunkBytes, lengthBytes - (UInt64(chunk) << UInt64(chunkShift))))
            let found = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[offset ..< offset + length]))
            guard found == chunkChecksums[chunk] else {
                throw .dataChecksumMismatch(object: object, logicalOffsetBytes: logicalOffsetBytes + (UInt64(chunk) << UInt64(chunkShift)),
                                            lengthBytes: UInt64(length), expected: chunkChecksums[chunk], found: found)
            }
            offset += length
        }
        precondition(offset == bytes.count)
    }

    /// The crc32c of each chunk of `data` (what a writer puts in a new extent).
    public static func chunkChecksums(of data: UnsafeRawBufferPointer, chunkShift: UInt8 = ExtentMapLimits.chunkShiftDefault) -> [UInt32] {
        let chunk = 1 << Int(chunkShift)
        return stride(from: 0, to: data.count, by: chunk).map { start in
            CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[start ..< min(start + chunk, data.count)]))
        }
    }
}

/// The chunks of one extent a read must cover: chunk indices, and their byte range in the extent.
public struct ChunkSpan: Equatable, Sendable {
    public var chunks: Range<Int>
    public var offsetInExtentBytes: UInt64
    public var lengthBytes: UInt64
}

/// A piece of a looked-up range: mapped (with its whole extent) or a hole.
public struct ExtentPiece: Equatable, Sendable {
    public var logicalRange: Range<UInt64>
    /// The extent mapping this piece; nil for a hole.
    public var extent: MappedExtent?
    public var isHole: Bool { extent == nil }
}

/// One fiemap record: a whole extent overlapping the asked range (as Linux's FIEMAP reports).
public struct FiemapEntry: Equatable, Sendable {
    public var logicalOffsetBytes: UInt64
    public var lengthBytes: UInt64
    /// Copy 0's place.
    public var deviceIndex: Int
    public var physicalOffsetBytes: UInt64
    /// FIEMAP_EXTENT_LAST: no extent of the object follows.
    public var isLast: Bool
}

/// What a verified extent map references, for `strata pool check`.
public struct ExtentMapReferences: Equatable, Sendable {
    /// Extent-map blocks (leaves and index nodes).
    public var metadataBlocks: [BlockPointer]
    /// Every copy of every data extent.
    public var dataExtents: [Extent]
}

public enum ExtentMapError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A block or inline list failed a structural check after its checksum passed.
    case corrupt(object: UInt64, block: BlockPointer?, reason: String)
    case unsupportedVersion(object: UInt64, version: UInt8)
    /// Data read back does not match the chunk checksum in the map.
    case dataChecksumMismatch(object: UInt64, logicalOffsetBytes: UInt64, lengthBytes: UInt64, expected: UInt32, found: UInt32)
    case metadata(object: UInt64, MetadataStoreError)

    public var description: String {
        switch self {
        case .corrupt(let object, let block, let reason):
            let place = block.map { " (block at \($0.offsetBytes) on device \($0.deviceIndex))" } ?? " (inline)"
            return "object \(object): corrupt extent map\(place): \(reason)"
        case .unsupportedVersion(let object, let version):
            return "object \(object): extent-map block format version \(version) is newer than this build supports (\(ExtentMap.formatVersion))"
        case .dataChecksumMismatch(let object, let offset, let length, let expected, let found):
            return "object \(object): data at logical offset \(offset) (\(length) bytes) has checksum \(found), the extent map says \(expected)"
        case .metadata(let object, let error):
            return "object \(object): \(error)"
        }
    }
}

/// One object's extent map. Not thread-safe: the object's owner (its lock in the OSD) serialises
/// access.
public final class ExtentMap {
    public let objectNumber: UInt64
    /// Size of the blocks `flush` writes.
    public let mapBlockBytes: Int
    /// The extents, sorted and non-overlapping.
    public internal(set) var extents: [MappedExtent] = []

    /// The tree as last flushed or loaded: leaves in order, index blocks, root.
    struct PersistedLeaf: Equatable {
        var span: Range<UInt64>
        var count: Int
        var pointer: BlockPointer
    }
    var persistedLeaves: [PersistedLeaf] = []
    var persistedIndexBlocks: [BlockPointer] = []
    var persistedRoot: ExtentMapRoot = .empty
    /// Logical ranges changed since the last flush (unsorted, may overlap).
    var dirtyRanges: [Range<UInt64>] = []

    /// An empty map (a new object).
    public init(objectNumber: UInt64, mapBlockBytes: Int = ExtentMapLimits.mapBlockBytesDefault) {
        precondition(mapBlockBytes >= 4096 && mapBlockBytes % 4096 == 0 && mapBlockBytes <= 1 << 20,
                     "extent-map block of \(mapBlockBytes) bytes")
        self.objectNumber = objectNumber
        self.mapBlockBytes = mapBlockBytes
    }

    /// True when changes since the last flush (or load) are not yet in blocks.
    public var isDirty: Bool { !dirtyRanges.isEmpty }
    public var extentCount: Int { extents.count }
    /// Bytes mapped (what `la_blocks` counts, per copy).
    public var mappedBytes: UInt64 { extents.reduce(0) { $0 + $1.lengthBytes } }

    // MARK: Changes

    /// Maps `extent.logicalRange` to `extent`, replacing whatever was there. Returns the physical
    /// pieces (every copy) no longer referenced, for the caller to free. Cuts inside existing
    /// extents must fall on their chunk boundaries (the caller's read-modify-write widens the range).
    @discardableResult
    public func replace(with extent: MappedExtent) -> [Extent] {
        let freed = cut(extent.logicalRange)
        let index = firstIndex(endingAfter: extent.logicalOffsetBytes)
        precondition(index == extents.count || extents[index].logicalOffsetBytes >= extent.logicalEndBytes,
                     "object \(objectNumber): range \(extent.logicalRange) still mapped after the cut")
        extents.insert(extent, at: index)
        return freed
    }

    /// `replace(with:)` for many extents at once, in one pass over the map: `sorted` ascending
    /// by logical offset and not overlapping each other. The result (extents, the pieces freed
    /// and their order, the dirty ranges) is that of replacing them one by one in that order;
    /// the cost is O(map + sorted) instead of one array insertion (a move of the map's tail) per
    /// extent. A checkpoint maps each object's dirty pages with it: hundreds of page runs per
    /// object, inside the switch while transactions wait.
    public func replace(withSorted sorted: [MappedExtent]) -> [Extent] {
        guard !sorted.isEmpty else { return [] }
        let block = ExtentMapLimits.blockBytes
        var merged: [MappedExtent] = []
        merged.reserveCapacity(extents.count + 2 * sorted.count)
        var freed: [Extent] = []
        var index = 0
        // The old extent being walked, or its right part once a new extent has cut its left.
        var current: MappedExtent? = extents.first
        var previousEnd: UInt64 = 0
        for new in sorted {
            let range = new.logicalRange
            precondition(!range.isEmpty && range.lowerBound % block == 0 && range.upperBound % block == 0,
                         "object \(objectNumber): range \(range) not a non-empty multiple of \(block)")
            precondition(range.lowerBound >= previousEnd, "object \(objectNumber): extents to replace overlap or are not sorted at \(range)")
            previousEnd = range.upperBound
            // Old extents wholly before the new one stay.
            while let old = current, old.logicalEndBytes <= range.lowerBound {
                merged.append(old)
                index += 1
                current = index < extents.count ? extents[index] : nil
            }
            // Old extents overlapping it: their parts outside it stay, the rest is freed.
            while let old = current, old.logicalOffsetBytes < range.upperBound {
                if old.logicalOffsetBytes < range.lowerBound { merged.append(old.slice(old.logicalOffsetBytes ..< range.lowerBound)) }
                let overlap = max(old.logicalOffsetBytes, range.lowerBound) ..< min(old.logicalEndBytes, range.upperBound)
                freed += old.slice(overlap).copies
                if old.logicalEndBytes > range.upperBound {
                    current = old.slice(range.upperBound ..< old.logicalEndBytes)
                    break
                }
                index += 1
                current = index < extents.count ? extents[index] : nil
            }
            merged.append(new)
            dirtyRanges.append(range)
        }
        while let old = current {
            merged.append(old)
            index += 1
            current = index < extents.count ? extents[index] : nil
        }
        extents = merged
        return freed
    }

    /// Unmaps `range` (a hole from now on). Returns the physical pieces no longer referenced.
    @discardableResult
    public func punch(_ range: Range<UInt64>) -> [Extent] {
        cut(range)
    }

    private func cut(_ range: Range<UInt64>) -> [Extent] {
        let block = ExtentMapLimits.blockBytes
        precondition(!range.isEmpty && range.lowerBound % block == 0 && range.upperBound % block == 0,
                     "object \(objectNumber): range \(range) not a non-empty multiple of \(block)")
        let first = firstIndex(endingAfter: range.lowerBound)
        var next = first
        var remaining: [MappedExtent] = []
        var freed: [Extent] = []
        while next < extents.count && extents[next].logicalOffsetBytes < range.upperBound {
            let extent = extents[next]
            let overlap = max(extent.logicalOffsetBytes, range.lowerBound) ..< min(extent.logicalEndBytes, range.upperBound)
            if extent.logicalOffsetBytes < overlap.lowerBound { remaining.append(extent.slice(extent.logicalOffsetBytes ..< overlap.lowerBound)) }
            freed += extent.slice(overlap).copies
            if overlap.upperBound < extent.logicalEndBytes { remaining.append(extent.slice(overlap.upperBound ..< extent.logicalEndBytes)) }
            next += 1
        }
        assert(remaining.count <= 2)
        extents.replaceSubrange(first ..< next, with: remaining)
        dirtyRanges.append(range)
        return freed
    }

    // MARK: Queries

    /// Index of the first extent whose end is past `offset` (extents.count when none).
    func firstIndex(endingAfter offset: UInt64) -> Int {
        var low = 0, high = extents.count
        while low < high {
            let middle = (low + high) / 2
            if extents[middle].logicalEndBytes <= offset { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The pieces of `range`, in order, mapped or hole, covering it exactly.
    public func lookup(_ range: Range<UInt64>) -> [ExtentPiece] {
        var pieces: [ExtentPiece] = []
        var cursor = range.lowerBound
        var index = firstIndex(endingAfter: range.lowerBound)
        while cursor < range.upperBound {
            if index < extents.count && extents[index].logicalOffsetBytes < range.upperBound {
                let extent = extents[index]
                if extent.logicalOffsetBytes > cursor {
                    pieces.append(ExtentPiece(logicalRange: cursor ..< extent.logicalOffsetBytes, extent: nil))
                    cursor = extent.logicalOffsetBytes
                }
                let end = min(extent.logicalEndBytes, range.upperBound)
                pieces.append(ExtentPiece(logicalRange: cursor ..< end, extent: extent))
                cursor = end
                index += 1
            } else {
                pieces.append(ExtentPiece(logicalRange: cursor ..< range.upperBound, extent: nil))
                cursor = range.upperBound
            }
        }
        assert(pieces.first?.logicalRange.lowerBound ?? range.lowerBound == range.lowerBound)
        return pieces
    }

    /// Whole extents overlapping `range`, at most `countMax` (FIEMAP).
    public func fiemap(_ range: Range<UInt64>, countMax: Int = .max) -> [FiemapEntry] {
        var entries: [FiemapEntry] = []
        var index = firstIndex(endingAfter: range.lowerBound)
        while index < extents.count && extents[index].logicalOffsetBytes < range.upperBound && entries.count < countMax {
            let extent = extents[index]
            entries.append(FiemapEntry(logicalOffsetBytes: extent.logicalOffsetBytes, lengthBytes: extent.lengthBytes,
                                       deviceIndex: extent.copies[0].deviceIndex, physicalOffsetBytes: extent.copies[0].offsetBytes,
                                       isLast: index == extents.count - 1))
            index += 1
        }
        return entries
    }

    /// SEEK_DATA: the first offset ≥ `offset` inside mapped data below `sizeBytes`; nil (ENXIO)
    /// when `offset` ≥ `sizeBytes` or no data follows.
    public func seekData(from offset: UInt64, sizeBytes: UInt64) -> UInt64? {
        guard offset < sizeBytes else { return nil }
        let index = firstIndex(endingAfter: offset)
        guard index < extents.count, extents[index].logicalOffsetBytes < sizeBytes else { return nil }
        return max(offset, extents[index].logicalOffsetBytes)
    }

    /// SEEK_HOLE: the first offset ≥ `offset` in a hole, the end of the object counting as one;
    /// nil (ENXIO) when `offset` ≥ `sizeBytes`.
    public func seekHole(from offset: UInt64, sizeBytes: UInt64) -> UInt64? {
        guard offset < sizeBytes else { return nil }
        var cursor = offset
        var index = firstIndex(endingAfter: offset)
        while index < extents.count && extents[index].logicalOffsetBytes <= cursor && cursor < sizeBytes {
            cursor = extents[index].logicalEndBytes
            index += 1
        }
        return min(cursor, sizeBytes)
    }

    /// The chunk containing `offset` in the extent mapping it (nil in a hole): what a partial
    /// overwrite must widen to.
    public func chunk(containing offset: UInt64) -> Range<UInt64>? {
        let index = firstIndex(endingAfter: offset)
        guard index < extents.count, extents[index].logicalOffsetBytes <= offset else { return nil }
        let extent = extents[index]
        let start = extent.logicalOffsetBytes + (((offset - extent.logicalOffsetBytes) >> UInt64(extent.chunkShift)) << UInt64(extent.chunkShift))
        return start ..< min(start + extent.chunkBytes, extent.logicalEndBytes)
    }
}
