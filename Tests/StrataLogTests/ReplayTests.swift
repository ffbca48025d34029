// ReplayTests — round trips, torn and stale tails, reopen-and-continue, checkpoints releasing
// space, claims after a crash.

import StrataIO
@testable import StrataLog
import StrataPool
import StrataTesting
import Testing

@Suite struct ReplayTests {
    /// Appends `count` records (ids from `first`) with sync every `syncEvery`.
    static func appendRecords(_ log: IntentLog, first: Int, count: Int, length: (Int) -> Int, syncEvery: Int = 1) throws {
        for id in first..<(first + count) {
            try log.append(type: 3, transactionID: UInt64(id), payload: LogTestSupport.payload(id, length: length(id)))
            if (id - first + 1) % syncEvery == 0 { try log.sync() }
        }
        try log.sync()
    }

    static func expectRecords(_ records: [(LogRecord, [UInt8])], ids: Range<Int>, firstLSN: LSN, length: (Int) -> Int,
                              sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(records.map { Int($0.0.transactionID) } == Array(ids), sourceLocation: sourceLocation)
        #expect(records.map(\.0.lsn) == Array(firstLSN..<(firstLSN + LSN(ids.count))), sourceLocation: sourceLocation)
        for (record, payload) in records where payload != LogTestSupport.payload(Int(record.transactionID), length: length(Int(record.transactionID))) {
            Issue.record("record \(record.lsn): payload differs", sourceLocation: sourceLocation)
        }
    }

    /// Block offsets (on the log device) of the first segment's blocks, in order.
    static func blockOffsets(_ devices: [any BlockStorage]) throws -> [(offset: UInt64, bytes: Int)] {
        let pool = try Pool.importPool(devices: devices, readOnly: true)
        let root = pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        let head = try IntentLog.readHead(pool: pool, root: root)
        let segment = head.segments[0][0]
        let buffer = allocateAlignedBuffer(byteCount: Int(head.segmentBytes))
        defer { buffer.deallocate() }
        try pool.devices[segment.deviceIndex].read(into: buffer, at: segment.offsetBytes)
        var expected = LogBlock.Expectation(poolUUID: pool.uuid, logIdentity: head.logIdentity, sequence: head.firstSequence,
                                            previousChecksum: head.previousChecksum, segmentBytes: head.segmentBytes)
        var result: [(UInt64, Int)] = []
        var position = 0
        while position < buffer.count, case .valid(let header) = LogBlock.inspect(UnsafeRawBufferPointer(rebasing: buffer[position...]), expecting: expected) {
            result.append((segment.offsetBytes + UInt64(position), header.blockBytes))
            expected.sequence += 1
            expected.previousChecksum = LogBlock.get(UInt32.self, UnsafeRawBufferPointer(buffer), position + 124)
            position += header.blockBytes
        }
        return result
    }

    @Test func roundTripAcrossSegmentsAndReopenContinues() throws {
        let devices = LogTestSupport.makeDevices()
        let length = { (id: Int) in (id * 131) % 9000 }
        let log = try LogTestSupport.newLog(devices: devices)
        try ReplayTests.appendRecords(log, first: 0, count: 60, length: length, syncEvery: 3)
        #expect(log.usage.segmentCount > 3, "the records should span several segments")
        // Crash (no close): replay finds all 60.
        let image = LogTestSupport.crashImage(devices)
        let (records, summary) = try LogTestSupport.replayed(image)
        ReplayTests.expectRecords(records, ids: 0..<60, firstLSN: 1, length: length)
        #expect(summary.segmentCount > 3 && summary.skippedRecordCount == 0)
        // Each segment is read once (a read-ahead is taken, not read again), plus the preallocated
        // segment after the last, found empty.
        #expect(summary.bytesRead <= UInt64(summary.segmentCount + 1) * LogTestSupport.settings().segmentBytes)
        // Replay is idempotent.
        #expect(try LogTestSupport.replayed(image).records.count == 60)

        // Reopen on the crash image: a crash right after open changes nothing.
        let reopenedDevices = image.map { OverlayDevice(base: $0) }
        let pool = try Pool.importPool(devices: reopenedDevices)
        var replayedCount = 0
        let reopened = try IntentLog.open(pool: pool, from: pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue],
                                          settings: LogTestSupport.settings()) { _, _ in replayedCount += 1 }
        #expect(replayedCount == 60)
        #expect(reopened.appendedLSN == 60 && reopened.durableLSN == 60)
        let afterOpen = reopenedDevices.map { OverlayDevice(base: $0) }
        ReplayTests.expectRecords(try LogTestSupport.replayed(afterOpen).records, ids: 0..<60, firstLSN: 1, length: length)
        // Appends continue after the last valid record, LSNs too.
        try ReplayTests.appendRecords(reopened, first: 60, count: 30, length: length, syncEvery: 2)
        let second = reopenedDevices.map { OverlayDevice(base: $0) }
        ReplayTests.expectRecords(try LogTestSupport.replayed(second).records, ids: 0..<90, firstLSN: 1, length: length)
        try reopened.close()
    }

    @Test func tornOrTruncatedLastBlockEndsTheLogBeforeIt() throws {
        let devices = LogTestSupport.makeDevices()
        let log = try LogTestSupport.newLog(devices: devices, settings: LogTestSupport.settings(writer: .callerLeads))
        let length = { (_: Int) in 3000 }
        try ReplayTests.appendRecords(log, first: 0, count: 6, length: length)      // six blocks, one record each
        let blocks = try ReplayTests.blockOffsets(LogTestSupport.crashImage(devices))
        #expect(blocks.count == 6)
        let last = blocks[5]
        for damage in ["flip", "zero", "half"] {
            let image = LogTestSupport.crashImage(devices)
            let logDevice = image[1]
            var bytes = [UInt8](repeating: 0, count: 4096)
            switch damage {
            case "flip":
                try bytes.withUnsafeMutableBytes { try logDevice.read(into: $0, at: last.offset) }
                bytes[600] ^= 0x40
            case "zero": break
            default:                                                    // a torn write: old (zero) sectors at the end
                try bytes.withUnsafeMutableBytes { try logDevice.read(into: $0, at: last.offset) }
                for index in 2048..<4096 { bytes[index] = 0 }           // the record runs to byte 3160
            }
            try bytes.withUnsafeBytes { try logDevice.write($0, at: last.offset, fua: true) }
            let (records, summary) = try LogTestSupport.replayed(image)
            ReplayTests.expectRecords(records, ids: 0..<5, firstLSN: 1, length: length)
            #expect(summary.endReason.contains("offset \(last.offset)"), "\(damage): \(summary.endReason)")
        }
        try log.close()
    }

    @Test func staleBlockFromAnEarlierLapOrWrongSequenceIsNotTaken() throws {
        let devices = LogTestSupport.makeDevices()
        let log = try LogTestSupport.newLog(devices: devices, settings: LogTestSupport.settings(writer: .callerLeads))
        let length = { (_: Int) in 500 }
        try ReplayTests.appendRecords(log, first: 0, count: 4, length: length)
        let blocks = try ReplayTests.blockOffsets(LogTestSupport.crashImage(devices))
        let nextOffset = blocks[3].offset + UInt64(blocks[3].bytes)
        // A stale block: block 2's bytes (valid checksum, older sequence) where block 5 would go.
        var image = LogTestSupport.crashImage(devices)
        var bytes = [UInt8](repeating: 0, count: 4096)
        try bytes.withUnsafeMutableBytes { try image[1].read(into: $0, at: blocks[1].offset) }
        try bytes.withUnsafeBytes { try image[1].write($0, at: nextOffset, fua: true) }
        ReplayTests.expectRecords(try LogTestSupport.replayed(image).records, ids: 0..<4, firstLSN: 1, length: length)
        // A block with the right identity and checksum but a skipped sequence (5 + 1).
        image = LogTestSupport.crashImage(devices)
        try bytes.withUnsafeMutableBytes { raw in
            try image[1].read(into: raw, at: blocks[3].offset)
            raw.storeBytes(of: UInt64(6 + 1).littleEndian, toByteOffset: 40, as: UInt64.self)    // head sequence 1, blocks 2..5
            raw.storeBytes(of: LogBlock.blockChecksum(UnsafeRawBufferPointer(raw)).littleEndian, toByteOffset: 124, as: UInt32.self)
        }
        try bytes.withUnsafeBytes { try image[1].write($0, at: nextOffset, fua: true) }
        ReplayTests.expectRecords(try LogTestSupport.replayed(image).records, ids: 0..<4, firstLSN: 1, length: length)
        // A block of another log (another identity) in the slot is not taken either.
        let otherDevices = LogTestSupport.makeDevices()
        let other = try LogTestSupport.newLog(devices: otherDevices, settings: LogTestSupport.settings(writer: .callerLeads))
        try ReplayTests.appendRecords(other, first: 100, count: 5, length: length)
        let otherBlocks = try ReplayTests.blockOffsets(LogTestSupport.crashImage(otherDevices))
        image = LogTestSupport.crashImage(devices)
        try bytes.withUnsafeMutableBytes { try otherDevices[1].read(into: $0, at: otherBlocks[4].offset) }
        try bytes.withUnsafeBytes { try image[1].write($0, at: nextOffset, fua: true) }
        ReplayTests.expectRecords(try LogTestSupport.replayed(image).records, ids: 0..<4, firstLSN: 1, length: length)
        try log.close()
        try other.close()
    }

    @Test func checkpointReleasesSegmentsAndReplayStartsAfterIt() throws {
        let devices = LogTestSupport.makeDevices()
        let length = { (id: Int) in 3000 + id % 50 }
        let log = try LogTestSupport.newLog(devices: devices)
        try ReplayTests.appendRecords(log, first: 0, count: 80, length: length, syncEvery: 4)
        let before = log.usage.segmentCount
        #expect(before >= 5)
        try LogTestSupport.checkpoint(log, through: 70)
        #expect(log.usage.segmentCount < before, "no segment released")
        #expect(log.coveredLSN == 70)
        let deferred = log.pool.allocator.statistics().devices[1].deferredBytes
        #expect(deferred >= UInt64(before - log.usage.segmentCount) * (64 << 10), "released segments are deferred frees")
        try ReplayTests.appendRecords(log, first: 80, count: 10, length: length)
        let (records, summary) = try LogTestSupport.replayed(LogTestSupport.crashImage(devices))
        ReplayTests.expectRecords(records, ids: 70..<90, firstLSN: 71, length: length)   // LSN = id + 1
        #expect(summary.coveredThroughLSN == 70)
        #expect(summary.skippedRecordCount > 0 && summary.skippedRecordCount < 20)
        try log.close()
    }

    /// After a crash, the pool's space maps count exactly the head and the segments it lists;
    /// open claims the rest of the chain; a checkpoint after open leaves no leak.
    @Test func spaceIsClaimedOnOpenAndNothingLeaks() throws {
        let devices = LogTestSupport.makeDevices()
        let length = { (_: Int) in 6000 }
        let log = try LogTestSupport.newLog(devices: devices)
        try ReplayTests.appendRecords(log, first: 0, count: 10, length: length)
        try LogTestSupport.checkpoint(log, through: 5)
        try ReplayTests.appendRecords(log, first: 10, count: 40, length: length, syncEvery: 5)   // new segments after the cut
        let image = LogTestSupport.crashImage(devices)
        let pool = try Pool.importPool(devices: image.map { OverlayDevice(base: $0) })
        let root = pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        let head = try IntentLog.readHead(pool: pool, root: root)
        let mapped = pool.allocator.statistics().devices[1].usedBytes
        #expect(mapped == UInt64(head.segments.count) * (64 << 10) + 4096, "maps count the listed segments and the head")
        let reopened = try IntentLog.open(pool: pool, from: root, settings: LogTestSupport.settings())
        let claimed = pool.allocator.statistics().devices[1].usedBytes
        #expect(claimed == UInt64(reopened.usage.segmentCount) * (64 << 10) + 4096, "open claims the whole chain")
        #expect(reopened.usage.segmentCount > head.segments.count)
        try ReplayTests.appendRecords(reopened, first: 50, count: 5, length: length)
        try LogTestSupport.checkpoint(reopened, through: reopened.appendedLSN)
        let final = try Pool.importPool(devices: pool.devices.map { OverlayDevice(base: $0) }, readOnly: true)
        let finalHead = try IntentLog.readHead(pool: final, root: final.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue])
        #expect(final.allocator.statistics().devices[1].usedBytes == UInt64(finalHead.segments.count) * (64 << 10) + 4096)
        try reopened.close()
    }

    /// A one-copy log may own more segments than a head could list at four copies (96): the
    /// settings allow up to 360, so a checkpoint must write, and replay and open must read, a head
    /// listing more than 96.
    @Test func headListsMoreSegmentsThanTheFourCopyBound() throws {
        var settings = LogTestSupport.settings()
        settings.logBytesMax = 130 * (64 << 10)
        #expect(settings.validationProblems(copies: 1).isEmpty)
        #expect(!settings.validationProblems(copies: 4).isEmpty, "130 segments do not fit a head at 4 copies")
        let devices = LogTestSupport.makeDevices()
        let length = { (id: Int) in 12_000 + id % 100 }
        let log = try LogTestSupport.newLog(devices: devices, settings: settings)
        try ReplayTests.appendRecords(log, first: 0, count: 560, length: length, syncEvery: 8)   // ~6.5 MiB: > 100 segments
        #expect(log.usage.segmentCount > LogHead.segmentCountMax(copies: 4))
        try LogTestSupport.checkpoint(log, through: 3)
        let image = LogTestSupport.crashImage(devices)
        let pool = try Pool.importPool(devices: image.map { OverlayDevice(base: $0) }, readOnly: true)
        let head = try IntentLog.readHead(pool: pool, root: pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue])
        #expect(head.segments.count > LogHead.segmentCountMax(copies: 4))
        let (records, _) = try LogTestSupport.replayed(image)
        ReplayTests.expectRecords(records, ids: 3..<560, firstLSN: 4, length: length)
        try log.close()
    }

    @Test func corruptHeadIsNamed() throws {
        let devices = LogTestSupport.makeDevices()
        let log = try LogTestSupport.newLog(devices: devices)
        try log.close()
        let image = LogTestSupport.crashImage(devices)
        let pool = try Pool.importPool(devices: image, readOnly: true)
        let root = pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        try [UInt8](repeating: 0x55, count: 4096).withUnsafeBytes { try image[root.deviceIndex].write($0, at: root.offsetBytes, fua: true) }
        do {
            try IntentLog.replay(pool: pool, from: root) { _, _ in }
            Issue.record("corrupt head accepted")
        } catch let error as LogError {
            guard case .corruptHead(let path, let offset, let detail) = error else { Issue.record("\(error)"); return }
            #expect(path == "log0" && offset == root.offsetBytes && detail.contains("checksum"))
        }
    }

    /// With two log devices and copies.log=2 the uberblock's pointer names both head copies: a
    /// destroyed first copy is read around, both destroyed is the first copy's error.
    @Test func secondHeadCopyIsReadWhenTheFirstIsBad() throws {
        let devices = [MemoryDevice(path: "data0", sizeBytes: 64 * LogTestSupport.mib), MemoryDevice(path: "log0", sizeBytes: 64 * LogTestSupport.mib),
                       MemoryDevice(path: "log1", sizeBytes: 64 * LogTestSupport.mib)]
        var policy = PoolPolicy()
        policy.setCopies(2, for: .log)
        let pool = try Pool.create(name: "logcopies", devices: [(devices[0], .data), (devices[1], .log), (devices[2], .log)], policy: policy)
        let log = try IntentLog.open(pool: pool, from: .null, settings: LogTestSupport.settings())
        try LogTestSupport.checkpoint(log, through: 0)
        for index in 0..<10 { try log.append(type: 1, transactionID: UInt64(index), payload: LogTestSupport.payload(index, length: 300)) }
        try log.sync()
        try log.close()
        let image = LogTestSupport.crashImage(devices)
        let imported = try Pool.importPool(devices: image, readOnly: true)
        let root = imported.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        #expect(root.copyCount == 2 && root.deviceIndex != root.address(ofCopy: 1).deviceIndex)

        let garbage = [UInt8](repeating: 0x55, count: 4096)
        try garbage.withUnsafeBytes { try image[root.deviceIndex].write($0, at: root.offsetBytes, fua: true) }
        var count = 0
        _ = try IntentLog.replay(pool: imported, from: root) { _, _ in count += 1 }
        #expect(count == 10, "the second head copy should have been read")

        let second = root.address(ofCopy: 1)
        try garbage.withUnsafeBytes { try image[second.deviceIndex].write($0, at: second.offsetBytes, fua: true) }
        do {
            try IntentLog.replay(pool: imported, from: root) { _, _ in }
            Issue.record("both head copies corrupt, accepted")
        } catch let error as LogError {
            guard case .corruptHead(_, let offset, let detail) = error else { Issue.record("\(error)"); return }
            #expect(offset == root.offsetBytes && detail.contains("checksum"))
        }
    }
}
