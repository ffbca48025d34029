// Model-based test of ExtentMap: a seeded random workload of writes (overwrites), punches,
// lookups, SEEK_DATA/SEEK_HOLE and fiemap against a block-level model (logical 4 KiB block →
// physical place), with flush + reload from the root in between. Checks: pieces and holes, the
// physical place of every mapped block, the chunk checksums still matching the chunks they cover,
// the unmapped pieces returned (exactly the places no longer referenced), no leaked or doubly
// freed extent-map block (MemoryMetadataStore traps on a double free). Every failure prints the
// seed and step; rerun one seed with `replay(seed:)`.

import Testing
import StrataPool
import StrataTesting
@testable import StrataDMU

struct ModelFailure: Error {}

@Suite struct ExtentMapModelTests {
    static let seeds: [UInt64] = [1, 2, 3, 4, 5, 6, 7, 8, 0xDEAD, 0x5EED_0001]

    @Test(arguments: seeds)
    func randomWorkloadMatchesTheModel(seed: UInt64) throws {
        try replay(seed: seed, steps: 1200)
    }

    /// Checksum of the chunk whose copy-0 physical start is `place` (the model's convention).
    static func checksum(at place: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: place &* 0x9E37_79B9 >> 7) }

    func replay(seed: UInt64, steps: Int) throws {
        var random = SeededRandom(seed: seed)
        // Even seeds: 4 KiB chunks, 4 KiB-aligned operations. Odd seeds: chunks of 4–16 KiB,
        // operations aligned to 16 KiB (so every cut is on a chunk boundary).
        let unitBytes: UInt64 = seed % 2 == 0 ? 4096 : 16384
        let blockCount = seed % 3 == 0 ? 2048 : 512          // logical space: 8 MiB or 2 MiB
        let mapBlockBytes = seed % 4 < 2 ? 4096 : 16384
        let store = MemoryMetadataStore()
        var map = ExtentMap(objectNumber: seed, mapBlockBytes: mapBlockBytes)
        var model = [UInt64?](repeating: nil, count: blockCount)   // copy-0 physical offset per 4 KiB block
        var copiesOf = [Int](repeating: 0, count: blockCount)
        var nextPhysical: UInt64 = 1 << 20
        let sizeBytes = UInt64(blockCount) * 4096
        var treeFlushes = 0
        var maxExtents = 0

        func check(_ condition: Bool, _ step: Int, _ message: @autoclosure () -> String) throws {
            if !condition {
                Issue.record("seed \(seed) step \(step): \(message())")
                throw ModelFailure()
            }
        }
        func randomRange() -> Range<UInt64> {
            let units = UInt64(blockCount) * 4096 / unitBytes
            let start = random.next() % units
            let length = 1 + random.next() % min(units - start, random.chance(0.8) ? 4 : 16)
            return start * unitBytes ..< (start + length) * unitBytes
        }
        /// The physical 4 KiB blocks (device, offset) the model maps in `range`, every copy.
        func modelPlaces(_ range: Range<UInt64>) -> [Extent] {
            var places: [Extent] = []
            for block in Int(range.lowerBound / 4096) ..< Int(range.upperBound / 4096) {
                guard let place = model[block] else { continue }
                for copy in 0 ..< copiesOf[block] {
                    places.append(Extent(deviceIndex: copy, offsetBytes: place + UInt64(copy) << 40, lengthBytes: 4096))
                }
            }
            return places.sorted { ($0.deviceIndex, $0.offsetBytes) < ($1.deviceIndex, $1.offsetBytes) }
        }
        func split(_ extents: [Extent]) -> [Extent] {
            extents.flatMap { extent in
                stride(from: extent.offsetBytes, to: extent.endBytes, by: 4096).map { Extent(deviceIndex: extent.deviceIndex, offsetBytes: $0, lengthBytes: 4096) }
            }.sorted { ($0.deviceIndex, $0.offsetBytes) < ($1.deviceIndex, $1.offsetBytes) }
        }

        for step in 0 ..< steps {
            let operation = random.next() % 100
            switch operation {
            case 0 ..< 40:   // write (overwrite)
                let range = randomRange()
                let length = range.upperBound - range.lowerBound
                let copies = random.chance(0.3) ? 2 : 1
                let shift: UInt8 = unitBytes == 4096 ? 12 : [12, 13, 14][Int(random.next() % 3)]
                let chunk = UInt64(1) << UInt64(shift)
                let place = nextPhysical
                nextPhysical += length + 4096
                let extent = MappedExtent(logicalOffsetBytes: range.lowerBound,
                                          copies: (0 ..< copies).map { Extent(deviceIndex: $0, offsetBytes: place + UInt64($0) << 40, lengthBytes: length) },
                                          birthCheckpoint: UInt64(step), chunkShift: shift,
                                          chunkChecksums: stride(from: place, to: place + length, by: Int(chunk)).map(Self.checksum(at:)))
                let expected = modelPlaces(range)
                let freed = split(map.replace(with: extent))
                try check(freed == expected, step, "write \(range): freed \(freed.count) blocks, model expected \(expected.count)")
                for block in Int(range.lowerBound / 4096) ..< Int(range.upperBound / 4096) {
                    model[block] = place + UInt64(block) * 4096 - range.lowerBound
                    copiesOf[block] = copies
                }
            case 40 ..< 55:  // punch
                let range = randomRange()
                let expected = modelPlaces(range)
                let freed = split(map.punch(range))
                try check(freed == expected, step, "punch \(range): freed \(freed.count) blocks, model expected \(expected.count)")
                for block in Int(range.lowerBound / 4096) ..< Int(range.upperBound / 4096) { model[block] = nil; copiesOf[block] = 0 }
            case 55 ..< 75:  // lookup of a byte range
                let start = random.next() % sizeBytes
                let end = min(sizeBytes, start + 1 + random.next() % (256 << 10))
                let pieces = map.lookup(start ..< end)
                var cursor = start
                for piece in pieces {
                    try check(piece.logicalRange.lowerBound == cursor && !piece.logicalRange.isEmpty, step, "lookup \(start)..<\(end): gap or empty piece at \(cursor)")
                    cursor = piece.logicalRange.upperBound
                    var offset = piece.logicalRange.lowerBound
                    while offset < piece.logicalRange.upperBound {
                        let block = Int(offset / 4096)
                        if let extent = piece.extent {
                            let place = extent.copies[0].offsetBytes + (offset / 4096 * 4096 - extent.logicalOffsetBytes)
                            try check(model[block] == place && extent.copies.count == copiesOf[block], step,
                                      "lookup: block \(block) maps to \(place), model \(String(describing: model[block]))")
                            let span = extent.chunkSpan(covering: offset ..< offset + 1)
                            let chunkPlace = extent.copies[0].offsetBytes + span.offsetInExtentBytes
                            try check(extent.chunkChecksums[span.chunks.lowerBound] == Self.checksum(at: chunkPlace), step,
                                      "lookup: chunk checksum of block \(block) does not belong to its place \(chunkPlace)")
                        } else {
                            try check(model[block] == nil, step, "lookup: block \(block) is a hole in the map, mapped in the model")
                        }
                        offset = (offset / 4096 + 1) * 4096
                    }
                }
                try check(cursor == end, step, "lookup \(start)..<\(end) ends at \(cursor)")
            case 75 ..< 90:  // SEEK_DATA / SEEK_HOLE
                let offset = random.next() % (sizeBytes + 4096)
                let size = random.chance(0.7) ? sizeBytes : offset / 2 + random.next() % sizeBytes
                func mapped(_ byte: UInt64) -> Bool { byte < size && byte < sizeBytes && model[Int(byte / 4096)] != nil }
                var expectedData: UInt64? = nil
                var expectedHole: UInt64? = nil
                if offset < size {
                    var probe = offset
                    while probe < size && !mapped(probe) { probe = (probe / 4096 + 1) * 4096 }
                    expectedData = probe < size ? probe : nil
                    probe = offset
                    while probe < size && mapped(probe) { probe = (probe / 4096 + 1) * 4096 }
                    expectedHole = min(probe, size)
                }
                let data = map.seekData(from: offset, sizeBytes: size)
                let hole = map.seekHole(from: offset, sizeBytes: size)
                try check(data == expectedData, step, "SEEK_DATA from \(offset) size \(size): \(String(describing: data)), model \(String(describing: expectedData))")
                try check(hole == expectedHole, step, "SEEK_HOLE from \(offset) size \(size): \(String(describing: hole)), model \(String(describing: expectedHole))")
            case 90 ..< 95:  // fiemap of everything
                let entries = map.fiemap(0 ..< sizeBytes)
                let mappedBlocks = entries.reduce(0) { $0 + $1.lengthBytes } / 4096
                try check(mappedBlocks == UInt64(model.compactMap { $0 }.count), step, "fiemap lists \(mappedBlocks) blocks, model has \(model.compactMap { $0 }.count)")
                try check(entries.last.map(\.isLast) ?? true, step, "fiemap: last entry not marked last")
            default:         // flush + reload
                let capacity = random.chance(0.3) ? DnodeLimits.bodyBytes : Int(random.next() % UInt64(DnodeLimits.bodyBytes))
                let root = try map.flush(to: store, inlineCapacityBytes: capacity)
                if case .tree = root { treeFlushes += 1 }
                maxExtents = max(maxExtents, map.extentCount)
                let reloaded = try ExtentMap.load(object: seed, root: root, store: store, mapBlockBytes: mapBlockBytes)
                try check(reloaded.extents == map.extents, step, "reload: \(reloaded.extents.count) extents, map had \(map.extents.count)")
                let references = try ExtentMap.verify(object: seed, root: root, store: store)
                try check(references.metadataBlocks.count == store.liveBlockCount, step,
                          "tree references \(references.metadataBlocks.count) blocks, store holds \(store.liveBlockCount) (leak or early free)")
                try check(split(references.dataExtents) == modelPlaces(0 ..< sizeBytes), step, "verify's data extents differ from the model")
                map = reloaded
            }
        }
        try check(treeFlushes > 0, steps, "the workload never spilled into a tree (max \(maxExtents) extents)")
        // Final flush and a full teardown: punching everything frees every block.
        map.punch(0 ..< sizeBytes)
        _ = try map.flush(to: store, inlineCapacityBytes: 0)
        try check(store.liveBlockCount == 0, steps, "\(store.liveBlockCount) extent-map blocks leaked after punching everything")
    }
}

/// `replace(withSorted:)` (one pass, what a checkpoint uses) against `replace(with:)` one by one.
@Suite struct ExtentMapBatchReplaceTests {
    static func extent(_ start: UInt64, _ blocks: UInt64, place: UInt64, copies: Int, birth: UInt64) -> MappedExtent {
        let length = blocks * 4096
        return MappedExtent(logicalOffsetBytes: start * 4096,
                            copies: (0 ..< copies).map { Extent(deviceIndex: $0, offsetBytes: place + UInt64($0) << 40, lengthBytes: length) },
                            birthCheckpoint: birth, chunkShift: 12,
                            chunkChecksums: (0 ..< blocks).map { UInt32(truncatingIfNeeded: (place + $0) &* 0x9E37_79B9) })
    }

    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    func oneBatchEqualsReplacingOneByOne(seed: UInt64) {
        var random = SeededRandom(seed: seed)
        let blocks: UInt64 = 256
        var place: UInt64 = 1 << 20
        // The same starting map on both sides: random extents, some adjacent, some with holes.
        let one = ExtentMap(objectNumber: seed)
        let batch = ExtentMap(objectNumber: seed)
        var cursor: UInt64 = random.next() % 4
        while cursor < blocks {
            let length = min(blocks - cursor, 1 + random.next() % 24)
            let start = extentFor(cursor, length)
            _ = one.replace(with: start)
            _ = batch.replace(with: start)
            cursor += length + (random.chance(0.3) ? random.next() % 6 : 0)
        }
        one.dirtyRanges = []
        batch.dirtyRanges = []
        // New extents: sorted, not overlapping, of 1–8 blocks (page runs), some past the old end.
        var news: [MappedExtent] = []
        var next: UInt64 = random.next() % 3
        while next < blocks + 16 {
            let length = 1 + random.next() % 8
            news.append(extentFor(next, length))
            next += length + random.next() % 5
        }
        var freedOneByOne: [Extent] = []
        for new in news { freedOneByOne += one.replace(with: new) }
        let freedBatch = batch.replace(withSorted: news)
        #expect(batch.extents == one.extents, "seed \(seed): maps differ")
        #expect(freedBatch == freedOneByOne, "seed \(seed): freed pieces differ")
        #expect(batch.dirtyRanges == one.dirtyRanges, "seed \(seed): dirty ranges differ")
        #expect(batch.replace(withSorted: []).isEmpty)

        func extentFor(_ start: UInt64, _ length: UInt64) -> MappedExtent {
            defer { place += (length + 1) * 4096 }
            return Self.extent(start, length, place: place, copies: random.chance(0.3) ? 2 : 1, birth: place)
        }
    }
}
