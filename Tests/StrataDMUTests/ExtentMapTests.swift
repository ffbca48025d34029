// ExtentMap unit tests: replace and punch return what they unmapped, lookups with holes, SEEK_DATA
// and SEEK_HOLE, fiemap, chunk verification, spilling into a tree and back, partial COW at flush,
// multi-level trees, corruption caught on load, verify's references, golden extent-map block.

import Testing
import StrataIO
import StrataPool
@testable import StrataDMU

func physical(_ offset: UInt64, _ length: UInt64, device: Int = 0) -> Extent {
    Extent(deviceIndex: device, offsetBytes: offset, lengthBytes: length)
}

/// An extent at `logical` of `length` bytes at physical `place`, checksums derived from the place.
func mapped(_ logical: UInt64, _ length: UInt64, at place: UInt64, copies: Int = 1, birth: UInt64 = 1, chunkShift: UInt8 = 12) -> MappedExtent {
    let chunk = UInt64(1) << UInt64(chunkShift)
    let count = Int((length + chunk - 1) / chunk)
    return MappedExtent(logicalOffsetBytes: logical,
                        copies: (0 ..< copies).map { physical(place + UInt64($0) << 40, length, device: $0) },
                        birthCheckpoint: birth, chunkShift: chunkShift,
                        chunkChecksums: (0 ..< count).map { UInt32(truncatingIfNeeded: (place + UInt64($0) * chunk) &* 0x9E37_79B9) })
}

@Suite struct ExtentMapTests {
    @Test func replaceAndPunchReturnTheUnmappedPieces() {
        let map = ExtentMap(objectNumber: 1)
        #expect(map.replace(with: mapped(0, 64 << 10, at: 1 << 20, copies: 2)).isEmpty)
        // Overwrite 8 KiB in the middle: both copies of that piece come back.
        let freed = map.replace(with: mapped(16 << 10, 8 << 10, at: 9 << 20))
        let kib: UInt64 = 1024
        let expectedFreed = [physical(1 << 20 + 16 * kib, 8 * kib), physical(1 << 40 + 1 << 20 + 16 * kib, 8 * kib, device: 1)]
        #expect(freed == expectedFreed)
        let ranges: [Range<UInt64>] = [0 ..< 16 * kib, 16 * kib ..< 24 * kib, 24 * kib ..< 64 * kib]
        #expect(map.extents.map(\.logicalRange) == ranges)
        #expect(map.extents[2].copies[0].offsetBytes == (1 << 20) + (24 << 10))
        #expect(map.extents[2].chunkChecksums == Array(mapped(0, 64 << 10, at: 1 << 20).chunkChecksums[6...]))
        // Punch across all three.
        let punched = map.punch(12 << 10 ..< 28 << 10)
        #expect(punched.count == 2 + 1 + 2)
        let punchedBytes = punched.reduce(UInt64(0)) { $0 + $1.lengthBytes }
        #expect(punchedBytes == 24 * kib, "two copies on both edges, one in the middle")
        let remaining: [Range<UInt64>] = [0 ..< 12 * kib, 28 * kib ..< 64 * kib]
        #expect(map.extents.map(\.logicalRange) == remaining)
        #expect(map.punch(100 << 20 ..< 101 << 20).isEmpty)
        #expect(map.mappedBytes == 48 << 10)
    }

    @Test func lookupSeekAndFiemap() {
        let map = ExtentMap(objectNumber: 2)
        map.replace(with: mapped(8192, 8192, at: 1 << 20))
        map.replace(with: mapped(16384, 4096, at: 2 << 20))
        map.replace(with: mapped(65536, 4096, at: 3 << 20))
        let pieces = map.lookup(100 ..< 70_000)
        let expectedRanges: [Range<UInt64>] = [100 ..< 8192, 8192 ..< 16384, 16384 ..< 20480, 20480 ..< 65536, 65536 ..< 69632, 69632 ..< 70_000]
        #expect(pieces.map(\.logicalRange) == expectedRanges)
        #expect(pieces.map(\.isHole) == [true, false, false, true, false, true])
        #expect(map.lookup(0 ..< 4096).map(\.isHole) == [true])

        let size: UInt64 = 100_000
        #expect(map.seekData(from: 0, sizeBytes: size) == 8192)
        #expect(map.seekData(from: 9000, sizeBytes: size) == 9000)
        #expect(map.seekData(from: 20480, sizeBytes: size) == 65536)
        #expect(map.seekData(from: 69632, sizeBytes: size) == nil)
        #expect(map.seekData(from: size, sizeBytes: size) == nil)
        #expect(map.seekData(from: 0, sizeBytes: 8192) == nil, "data past the size does not count")
        #expect(map.seekHole(from: 0, sizeBytes: size) == 0)
        #expect(map.seekHole(from: 8192, sizeBytes: size) == 20480, "adjacent extents are one data region")
        #expect(map.seekHole(from: 66000, sizeBytes: size) == 69632)
        #expect(map.seekHole(from: 66000, sizeBytes: 67000) == 67000, "the end of the object is a hole")
        #expect(map.seekHole(from: size, sizeBytes: size) == nil)

        let entries = map.fiemap(10_000 ..< 70_000)
        #expect(entries.map(\.logicalOffsetBytes) == [8192, 16384, 65536])
        #expect(entries.map(\.isLast) == [false, false, true])
        #expect(entries[1].physicalOffsetBytes == 2 << 20)
        #expect(map.fiemap(0 ..< 1 << 30, countMax: 1).count == 1)
        #expect(map.chunk(containing: 9000) == 8192 ..< 12288)
        #expect(map.chunk(containing: 30000) == nil)
    }

    @Test func chunkVerificationNamesObjectAndOffset() throws {
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 4096)
        defer { data.deallocate() }
        for index in 0 ..< data.count { data[index] = UInt8(truncatingIfNeeded: index &* 31) }
        for shift: UInt8 in [12, 14, 16] {
            let extent = MappedExtent(logicalOffsetBytes: 1 << 20, copies: [physical(0, 64 << 10)], birthCheckpoint: 3, chunkShift: shift,
                                      chunkChecksums: MappedExtent.chunkChecksums(of: UnsafeRawBufferPointer(data), chunkShift: shift))
            // A 4 KiB read at logical 1 MiB + 20 KiB reads only its chunk.
            let span = extent.chunkSpan(covering: (1 << 20) + (20 << 10) ..< (1 << 20) + (24 << 10))
            #expect(span.lengthBytes == max(4096, UInt64(1) << UInt64(shift)))
            let read = UnsafeRawBufferPointer(rebasing: data[Int(span.offsetInExtentBytes) ..< Int(span.offsetInExtentBytes + span.lengthBytes)])
            try extent.verify(read, span: span, object: 8)
            data[Int(span.offsetInExtentBytes) + 5] ^= 1
            #expect(throws: ExtentMapError.self) { try extent.verify(read, span: span, object: 8) }
            do { try extent.verify(read, span: span, object: 8) } catch {
                #expect(error.description.contains("object 8") && error.description.contains("logical offset \((1 << 20) + span.offsetInExtentBytes)"))
            }
            data[Int(span.offsetInExtentBytes) + 5] ^= 1
        }
    }

    @Test func spillsIntoATreeAndBackInline() throws {
        let store = MemoryMetadataStore()
        let map = ExtentMap(objectNumber: 3)
        map.replace(with: mapped(0, 4096, at: 1 << 20))
        var root = try map.flush(to: store, inlineCapacityBytes: 600)
        guard case .inline(let bytes) = root else { Issue.record("small map not inline"); return }
        #expect(bytes.count == 40 && store.liveBlockCount == 0)
        for index in 1 ..< UInt64(200) { map.replace(with: mapped(index * 8192, 4096, at: (1 << 20) + index * 4096)) }
        root = try map.flush(to: store, inlineCapacityBytes: 600)
        guard case .tree = root else { Issue.record("200 extents stayed inline"); return }
        let reloaded = try ExtentMap.load(object: 3, root: root, store: store)
        #expect(reloaded.extents == map.extents)
        let references = try ExtentMap.verify(object: 3, root: root, store: store)
        #expect(references.metadataBlocks.count == store.liveBlockCount && references.dataExtents.count == 200)
        // Punch almost everything: back inline, blocks freed.
        reloaded.punch(8192 ..< 200 * 8192)
        root = try reloaded.flush(to: store, inlineCapacityBytes: 600)
        #expect(root == .inline(ExtentMap.encodeInline([mapped(0, 4096, at: 1 << 20)])) && store.liveBlockCount == 0)
    }

    @Test func flushRewritesOnlyChangedLeaves() throws {
        let store = MemoryMetadataStore()
        let map = ExtentMap(objectNumber: 4)
        for index in 0 ..< UInt64(3000) { map.replace(with: mapped(index * 8192, 4096, at: (1 << 30) + index * 4096)) }
        let first = try map.flush(to: store, inlineCapacityBytes: 0)
        let leavesBefore = map.persistedLeaves.map(\.pointer)
        #expect(leavesBefore.count > 4 && map.persistedIndexBlocks.count == 1)
        #expect(try map.flush(to: store, inlineCapacityBytes: 0) == first, "nothing changed: same root")
        // One overwrite in the middle: one leaf (maybe two) and the index are rewritten.
        map.replace(with: mapped(1500 * 8192, 4096, at: 5 << 30))
        let second = try map.flush(to: store, inlineCapacityBytes: 0)
        let leavesAfter = map.persistedLeaves.map(\.pointer)
        let rewritten = leavesAfter.filter { !leavesBefore.contains($0) }.count
        #expect(second != first && (1 ... 2).contains(rewritten), "\(rewritten) of \(leavesAfter.count) leaves rewritten")
        #expect(store.liveBlockCount == leavesAfter.count + 1)
        #expect(try ExtentMap.load(object: 4, root: second, store: store).extents == map.extents)
    }

    @Test func multiLevelTreeWithSmallBlocks() throws {
        let store = MemoryMetadataStore()
        let map = ExtentMap(objectNumber: 5, mapBlockBytes: 4096)
        // ~4 KiB leaves of 40-byte extents hold ~100; index nodes of 4 KiB hold 72 entries: 3 levels.
        for index in 0 ..< UInt64(12_000) { map.replace(with: mapped(index * 8192, 4096, at: (1 << 30) + index * 4096, birth: index)) }
        let root = try map.flush(to: store, inlineCapacityBytes: 0)
        #expect(map.persistedLeaves.count > 72, "\(map.persistedLeaves.count) leaves")
        let reloaded = try ExtentMap.load(object: 5, root: root, store: store, mapBlockBytes: 4096)
        #expect(reloaded.extents == map.extents)
        #expect(reloaded.persistedIndexBlocks.count == map.persistedIndexBlocks.count && reloaded.persistedIndexBlocks.count >= 3)
        reloaded.punch(0 ..< 6000 * 8192)
        let smaller = try reloaded.flush(to: store, inlineCapacityBytes: 0)
        let references = try ExtentMap.verify(object: 5, root: smaller, store: store)
        #expect(references.metadataBlocks.count == store.liveBlockCount && references.dataExtents.count == 6000)
    }

    @Test func corruptionIsCaughtOnLoad() throws {
        let store = MemoryMetadataStore()
        let map = ExtentMap(objectNumber: 6)
        for index in 0 ..< UInt64(50) { map.replace(with: mapped(index * 8192, 4096, at: index * 4096)) }
        let root = try map.flush(to: store, inlineCapacityBytes: 0)
        guard case .tree(let pointer) = root else { Issue.record("not a tree"); return }
        #expect(throws: ExtentMapError.corrupt(object: 7, block: pointer, reason: "header: object 6, level 0 (expected any), 50 entries, 2032 bytes used")) {
            try ExtentMap.load(object: 7, root: root, store: store)
        }
        store.corrupt(pointer, byteOffset: 40)
        #expect(throws: ExtentMapError.self) { try ExtentMap.load(object: 6, root: root, store: store) }
        // Inline lists are checked the same way: overlapping extents.
        let overlapping = ExtentMap.encodeInline([mapped(0, 8192, at: 0), mapped(4096, 4096, at: 1 << 20)])
        #expect(throws: ExtentMapError.self) { try ExtentMap.load(object: 6, root: .inline(overlapping), store: store) }
        #expect(throws: ExtentMapError.self) { try ExtentMap.load(object: 6, root: .inline([1, 2, 3]), store: store) }
    }

    /// Golden bytes of a one-leaf extent-map block.
    @Test func leafBlockGoldenBytes() throws {
        let store = MemoryMetadataStore()
        let map = ExtentMap(objectNumber: 0x42, mapBlockBytes: 4096)
        map.replace(with: mapped(0, 4096, at: 0x2000, birth: 3))
        map.replace(with: mapped(4096, 4096, at: 0x3000, birth: 3))
        guard case .tree(let pointer) = try map.flush(to: store, inlineCapacityBytes: 0) else { Issue.record("not a tree"); return }
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        try store.read(pointer, into: block)
        let header = hex(block[0 ..< 32])
        #expect(header == "584d4150" + "01" + "00" + "0000" + "4200000000000000" + "02000000" + "70000000" + String(repeating: "00", count: 8))
        let firstExtent = hex(block[32 ..< 72])
        let crc = String(format: "%08x", UInt32(truncatingIfNeeded: UInt64(0x2000) &* 0x9E37_79B9).byteSwapped)
        #expect(firstExtent == "0000000000000000" + "01000000" + "0c" + "01" + "0000" + "0300000000000000" + "00000000" + "0020000000000000" + crc)
        #expect(block[112...].allSatisfy { $0 == 0 })
    }
}
