// The object store with `discardFreedSpace`: the space its checkpoints free is discarded (the
// memory device drops the blocks), and nothing any object still needs goes with it — data read
// back before and after reopen, and `strata pool check` clean.

import StrataIO
import StrataPool
import StrataTesting
import Testing
@testable import StrataDMU

@Suite struct DiscardTests {
    typealias Support = StoreTestSupport

    static func overwrite(_ store: ObjectStore, _ object: UInt64, at offset: UInt64, _ bytes: [UInt8]) throws {
        let transaction = store.transaction()
        transaction.declareWrite(object, offset: offset, length: bytes.count)
        try transaction.start()
        try transaction.write(object, at: offset, bytes)
        try transaction.stop()
    }

    static func destroy(_ store: ObjectStore, _ object: UInt64) throws {
        let transaction = store.transaction()
        transaction.declareDestroy(object)
        try transaction.start()
        try transaction.destroy(object)
        try transaction.stop()
    }

    /// Creates, overwrites (large and small) and destroys objects across checkpoints; returns
    /// the blocks the data device holds at the end and the store's pool discard statistics.
    static func churn(discard: Bool) throws -> (blocks: Int, statistics: DiscardStatistics, devices: [MemoryDevice]) {
        let devices = Support.devices()
        var settings = Support.settings()
        settings.discardFreedSpace = discard
        let store = try Support.newStore(devices, settings: settings)
        #expect(store.pool.discardsFreedSpace == discard)
        let kept = Support.pattern(3 << 20, seed: 1)
        let keeper = try Support.createFile(store, kept)
        var doomed: [UInt64] = []
        for seed in 0..<6 { doomed.append(try Support.createFile(store, Support.pattern(1 << 20, seed: UInt8(10 + seed)))) }
        try store.checkpoint()
        var expected = kept
        let large = Support.pattern(1 << 20, seed: 3)                          // goes to new extents
        try overwrite(store, keeper, at: 1 << 20, large)
        expected.replaceSubrange((1 << 20) ..< (2 << 20), with: large)
        let small = Support.pattern(4096, seed: 4)                             // travels in the log
        try overwrite(store, keeper, at: 8192, small)
        expected.replaceSubrange(8192 ..< 12288, with: small)
        for object in doomed { try destroy(store, object) }
        for _ in 0..<3 { try store.checkpoint() }
        #expect(try store.read(keeper, at: 0, length: expected.count) == expected)
        try store.close()
        try store.pool.export()                     // (a checkpoint with nothing changed commits nothing)
        let statistics = store.pool.discardStatistics
        let reopened = try Support.reopen(devices)
        #expect(try reopened.read(keeper, at: 0, length: expected.count) == expected)
        try reopened.close()
        try reopened.pool.export()
        let report = try Support.check(devices)
        #expect(report.isClean, "\(report.problems)")
        return (devices[0].storedBlockCount, statistics, devices)
    }

    @Test func checkpointsDiscardWhatTheyFreeAndKeepEverythingReferenced() throws {
        let with = try Self.churn(discard: true)
        let without = try Self.churn(discard: false)
        #expect(without.statistics == DiscardStatistics(), "discarded with the setting off: \(without.statistics)")
        // Six destroyed 1 MiB objects and the overwritten MiB: at least 7 MiB discarded.
        #expect(with.statistics.bytes >= 7 << 20 && with.statistics.failures == 0, "\(with.statistics)")
        #expect(without.blocks - with.blocks >= (7 << 20) / 4096, "data device holds \(with.blocks) blocks with discard, \(without.blocks) without")
    }
}
