// The object store end to end on in-memory pools: transactions, the data path (small writes in
// the log, large ones in extents), checkpoints, reopen after export and after a crash (replay),
// bad input (typed errors, nothing changed), and a model-checked random workload.

import Foundation
import StrataIO
import StrataLog
import StrataPool
import StrataTesting
import Synchronization
import Testing
@testable import StrataDMU

enum StoreTestSupport {
    static let mib: UInt64 = 1 << 20

    static func settings() -> ObjectStoreSettings {
        var settings = ObjectStoreSettings()
        settings.backgroundCheckpoints = false
        settings.log.segmentBytes = 256 << 10
        settings.log.logBytesMax = 8 << 20
        settings.log.batchBytesMax = 256 << 10
        settings.log.appendWaitNsMax = 5_000_000_000
        settings.dirtyBytesMax = 4 << 20
        settings.throttleWaitNsMax = 5_000_000_000
        return settings
    }

    static func devices(dataMiB: UInt64 = 128) -> [MemoryDevice] {
        [MemoryDevice(path: "data0", sizeBytes: dataMiB * mib), MemoryDevice(path: "meta0", sizeBytes: 64 * mib),
         MemoryDevice(path: "log0", sizeBytes: 64 * mib)]
    }

    static func newStore(_ devices: [MemoryDevice], settings: ObjectStoreSettings = settings()) throws -> ObjectStore {
        let pool = try Pool.create(name: "objtest", devices: [(devices[0], .data), (devices[1], .metadata), (devices[2], .log)])
        return try ObjectStore.open(pool: pool, settings: settings)
    }

    /// The devices as a crash right now would leave them (every completed write kept).
    static func crashImage(_ devices: [any BlockStorage]) -> [any BlockStorage] {
        devices.map { device -> any BlockStorage in
            if let memory = device as? MemoryDevice { return OverlayDevice(base: memory.snapshot()) }
            let overlay = device as! OverlayDevice
            return OverlayDevice(base: overlay.base, blocks: overlay.overlayBlocks)
        }
    }

    static func reopen(_ devices: [any BlockStorage], readOnly: Bool = false, settings: ObjectStoreSettings = settings()) throws -> ObjectStore {
        let pool = try Pool.importPool(devices: devices, readOnly: readOnly)
        return try ObjectStore.open(pool: pool, settings: settings)
    }

    /// `strata pool check` of the devices (a read-only import; close the store first).
    static func check(_ devices: [any BlockStorage], verifyData: Bool = true) throws -> StoreCheckReport {
        let pool = try Pool.importPool(devices: devices, readOnly: true)
        return ObjectStore.check(pool: pool, verifyData: verifyData, settings: settings())
    }

    static func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ ($0 >> 12)) }
    }

    /// Creates a regular object and writes `bytes` at 0 in one transaction.
    @discardableResult
    static func createFile(_ store: ObjectStore, _ bytes: [UInt8]) throws -> UInt64 {
        let transaction = store.transaction()
        let object = transaction.declareCreate()
        transaction.declareWrite(object, offset: 0, length: bytes.count)
        try transaction.start()
        try transaction.create(object, type: .regular)
        if !bytes.isEmpty { try transaction.write(object, at: 0, bytes) }
        try transaction.stop()
        return object
    }
}

@Suite struct ObjectStoreTests {
    typealias Support = StoreTestSupport

    @Test func smallAndLargeWritesReadBackBeforeAndAfterCheckpointAndReopen() throws {
        let devices = Support.devices()
        let store = try Support.newStore(devices)
        let small = Support.pattern(1000, seed: 1)
        let large = Support.pattern(3 << 20 | 1234, seed: 2)       // 3 MiB + an unaligned tail
        let a = try Support.createFile(store, small)
        let b = try Support.createFile(store, large)
        #expect(try store.read(a, at: 0, length: 5000) == small)
        #expect(try store.read(b, at: 0, length: large.count) == large)
        #expect(try store.read(b, at: 4095, length: 10_000) == Array(large[4095 ..< 14_095]))
        #expect(try store.attributes(b).sizeBytes == UInt64(large.count))
        // Large write: the aligned middle is in extents already.
        #expect(try store.fiemap(b, range: 0 ..< UInt64(large.count)).count == 3)
        try store.checkpoint()
        #expect(try store.read(a, at: 0, length: 5000) == small)
        #expect(try store.read(b, at: 0, length: large.count) == large)
        #expect(store.statistics.dirtyPageBytes == 0)
        try store.close()
        try store.pool.export()

        let reopened = try Support.reopen(devices)
        #expect(try reopened.read(a, at: 0, length: 5000) == small)
        #expect(try reopened.read(b, at: 0, length: large.count) == large)
        #expect(reopened.nextObjectNumber > b)
        try reopened.close()
    }

    @Test func syncedTransactionsSurviveACrashThroughReplay() throws {
        let devices = Support.devices()
        let store = try Support.newStore(devices)
        var objects: [(UInt64, [UInt8])] = []
        for index in 0..<20 {
            let bytes = Support.pattern(index % 2 == 0 ? 3000 + index : (200 << 10) + index * 4096, seed: UInt8(index))
            objects.append((try Support.createFile(store, bytes), bytes))
        }
        try store.checkpoint()
        // After the checkpoint: overwrites, xattrs, an index, a destroy — only in the log.
        let overwrite = Support.pattern(4096 * 3, seed: 99)
        let index: UInt64
        do {
            let transaction = store.transaction()
            transaction.declareWrite(objects[0].0, offset: 100, length: overwrite.count)
            transaction.declareSetXattr(objects[1].0, name: "trusted.lma", valueBytes: 24)
            transaction.declareDestroy(objects[2].0)
            index = transaction.declareCreate()
            transaction.declareIndexInsert(index, keyBytes: 8, valueBytes: 16)
            try transaction.start()
            try transaction.write(objects[0].0, at: 100, overwrite)
            try transaction.setXattr(objects[1].0, name: "trusted.lma", value: Array(repeating: 7, count: 24))
            try transaction.destroy(objects[2].0)
            try transaction.create(index, type: .index)
            for key in 0..<1 {
                _ = key
                try transaction.indexInsert(index, key: Array("fid:0001".utf8), value: Array(repeating: 3, count: 16))
            }
            try transaction.stop()
        }
        try store.sync()
        let image = Support.crashImage(devices)
        try store.close()

        let recovered = try Support.reopen(image)
        #expect(recovered.statistics.replayedRecords >= 5)
        var expected = objects[0].1
        if expected.count < 100 + overwrite.count { expected += [UInt8](repeating: 0, count: 100 + overwrite.count - expected.count) }
        expected.replaceSubrange(100 ..< 100 + overwrite.count, with: overwrite)
        #expect(try recovered.read(objects[0].0, at: 0, length: expected.count) == expected)
        #expect(try recovered.xattr(objects[1].0, name: "trusted.lma") == Array(repeating: 7, count: 24))
        #expect(try recovered.exists(objects[2].0) == false)
        #expect(try recovered.indexLookup(index, key: Array("fid:0001".utf8)) == Array(repeating: 3, count: 16))
        for (object, bytes) in objects[3...] { #expect(try recovered.read(object, at: 0, length: bytes.count) == bytes) }
        try recovered.close()
        let check = try Support.check(image)
        #expect(check.isClean, "\(check.problems)")
        #expect(check.objects == 20 && check.indexEntries == 1)
    }

    @Test func commitCallbacksFireInStopOrderAndSyncWaitsForThem() throws {
        let store = try Support.newStore(Support.devices())
        let fired = Mutex<[Int]>([])
        for index in 0..<50 {
            let transaction = store.transaction()
            let object = transaction.declareCreate()
            try transaction.start()
            try transaction.create(object, type: .regular)
            try transaction.stop { _ in fired.withLock { $0.append(index) } }
        }
        try store.sync()
        #expect(fired.withLock { $0 } == Array(0..<50))
        try store.close()
    }

    @Test func badInputIsATypedErrorAndChangesNothing() throws {
        let devices = Support.devices()
        let store = try Support.newStore(devices)
        let file = try Support.createFile(store, Support.pattern(10_000, seed: 3))
        let before = try store.read(file, at: 0, length: 10_000)

        // Missing object, past the end, wrong type.
        #expect(throws: ObjectStoreError.noSuchObject(object: 999_999)) { try store.attributes(999_999) }
        #expect(throws: ObjectStoreError.readPastEnd(object: file, offsetBytes: 10_000, sizeBytes: 10_000)) {
            try store.read(file, at: 10_000, length: 1)
        }
        #expect(throws: ObjectStoreError.self) { try store.indexLookup(file, key: [1]) }

        let transaction = store.transaction()
        transaction.declareSetXattr(file, name: "user.big", valueBytes: 70_000)
        transaction.declareIndexInsert(file, keyBytes: 300, valueBytes: 1)
        transaction.declareWrite(123_456, offset: 0, length: 10)
        try transaction.start()
        #expect(throws: ObjectStoreError.dnode(.xattrValueTooLarge(object: file, name: "user.big", valueBytes: 70_000,
                                                                   max: DnodeLimits.xattrValueBytesMax))) {
            try transaction.setXattr(file, name: "user.big", value: [UInt8](repeating: 1, count: 70_000))
        }
        #expect(throws: ObjectStoreError.self) { try transaction.indexInsert(file, key: [UInt8](repeating: 1, count: 300), value: [1]) }
        #expect(throws: ObjectStoreError.noSuchObject(object: 123_456)) { try transaction.write(123_456, at: 0, [1, 2, 3]) }
        #expect(throws: ObjectStoreError.noSuchXattr(object: file, name: "user.big")) {
            try transaction.removeXattr(file, name: "user.big")
        }
        try transaction.stop()
        #expect(try store.read(file, at: 0, length: 10_000) == before)
        #expect(try store.xattrNames(file).isEmpty)

        // An index: key over the limit, duplicate key, missing key.
        let index: UInt64
        do {
            let create = store.transaction()
            index = create.declareCreate()
            create.declareIndexInsert(index, keyBytes: 4, valueBytes: 4)
            try create.start()
            try create.create(index, type: .directory, mode: 0o40755)
            try create.indexInsert(index, key: [1, 2, 3, 4], value: [5, 6, 7, 8])
            try create.stop()
        }
        let second = store.transaction()
        second.declareIndexInsert(index, keyBytes: 4, valueBytes: 4)
        second.declareIndexDelete(index, keyBytes: 4)
        try second.start()
        #expect(throws: ObjectStoreError.self) { try second.indexInsert(index, key: [1, 2, 3, 4], value: [0]) }
        #expect(throws: ObjectStoreError.self) { try second.indexDelete(index, key: [9, 9, 9, 9]) }
        #expect(throws: ObjectStoreError.self) { try second.indexInsert(index, key: [UInt8](repeating: 0, count: 256), value: [0]) }
        try second.stop()
        #expect(try store.indexLookup(index, key: [1, 2, 3, 4]) == [5, 6, 7, 8])
        try store.close()
        let check = try Support.check(devices)
        #expect(check.isClean, "\(check.problems)")
    }

    /// Block pointers name at most two copies: a pool that keeps three copies of metadata is
    /// refused at open with an error that names the limit, not at its first checkpoint; two
    /// copies open (MetadataCopiesTests has the rest).
    @Test func poolWithMoreMetadataCopiesThanAPointerNamesIsRefusedAtOpen() throws {
        let devices = [MemoryDevice(path: "data0", sizeBytes: 128 * StoreTestSupport.mib), MemoryDevice(path: "meta0", sizeBytes: 64 * StoreTestSupport.mib),
                       MemoryDevice(path: "meta1", sizeBytes: 64 * StoreTestSupport.mib), MemoryDevice(path: "log0", sizeBytes: 64 * StoreTestSupport.mib)]
        var policy = PoolPolicy()
        policy.setCopies(3, for: .metadata)
        let pool = try Pool.create(name: "copies3", devices: [(devices[0], .data), (devices[1], .metadata), (devices[2], .metadata), (devices[3], .log)],
                                   policy: policy)
        do {
            _ = try ObjectStore.open(pool: pool, settings: StoreTestSupport.settings())
            Issue.record("a copies.metadata=3 pool opened")
        } catch {
            guard case .invalidSettings(let problems) = error else { Issue.record("unexpected \(error)"); return }
            #expect(problems.contains { $0.contains("copies.metadata=3") && $0.contains("at most 2") })
        }
        #expect(pool.uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue].isNull, "nothing was written")

        var two = PoolPolicy()
        two.setCopies(2, for: .metadata)
        pool.allocator.policy = two
        let store = try ObjectStore.open(pool: pool, settings: StoreTestSupport.settings())
        #expect(pool.uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue].copyCount == 2)
        try store.close()
    }

    @Test func declareThatCannotBeSatisfiedFailsWithENOSPCBeforeAnythingChanges() throws {
        let store = try Support.newStore(Support.devices(dataMiB: 64))
        let file = try Support.createFile(store, Support.pattern(4096, seed: 4))
        let statisticsBefore = store.pool.allocator.statistics().devices.map(\.usedBytes)
        let transaction = store.transaction()
        transaction.declareWrite(file, offset: 0, length: 1 << 30)     // 1 GiB on a 64 MiB data device
        #expect(throws: ObjectStoreError.self) { try transaction.start() }
        #expect(store.pool.allocator.statistics().devices.map(\.usedBytes) == statisticsBefore)
        #expect(try store.read(file, at: 0, length: 4096) == Support.pattern(4096, seed: 4))
        // The store is still usable.
        try Support.createFile(store, [1, 2, 3])
        try store.close()
    }

    @Test func undeclaredOperationTraps() async {
        await #expect(processExitsWith: .failure) {
            let store = try StoreTestSupport.newStore(StoreTestSupport.devices())
            let file = try StoreTestSupport.createFile(store, [1])
            let transaction = store.transaction()
            transaction.declareSetAttributes(file)
            try transaction.start()
            try transaction.write(file, at: 0, [2])         // never declared
        }
    }

    @Test func punchTruncateAndSeekQueries() throws {
        let devices = Support.devices()
        let store = try Support.newStore(devices)
        var model = Support.pattern(1 << 20, seed: 5)
        let file = try Support.createFile(store, model)
        func apply(_ body: (Transaction) throws -> Void) throws {
            let transaction = store.transaction()
            transaction.declarePunch(file)
            try transaction.start()
            try body(transaction)
            try transaction.stop()
        }
        try apply { try $0.punch(file, offset: 10_000, length: 300_000) }
        model.replaceSubrange(10_000 ..< 310_000, with: [UInt8](repeating: 0, count: 300_000))
        #expect(try store.read(file, at: 0, length: model.count) == model)
        #expect(try store.seekHole(file, from: 0) == 12_288)
        #expect(try store.seekData(file, from: 12_288) == 307_200)
        try store.checkpoint()
        #expect(try store.read(file, at: 0, length: model.count) == model)
        try apply { try $0.truncate(file, sizeBytes: 5000) }
        model = Array(model[0..<5000])
        #expect(try store.read(file, at: 0, length: 1 << 20) == model)
        try apply { try $0.truncate(file, sizeBytes: 9000) }
        model += [UInt8](repeating: 0, count: 4000)
        #expect(try store.read(file, at: 0, length: 1 << 20) == model)
        try store.checkpoint()
        #expect(try store.read(file, at: 0, length: 1 << 20) == model)
        try store.close()
        let check = try Support.check(devices)
        #expect(check.isClean, "\(check.problems)")
    }
}

extension ObjectStore {
    /// A crash, for tests: stops the log's writer (nothing pending after a sync, so it writes
    /// nothing) and drops the store without a checkpoint.
    func abandon() throws {
        stateLock.withLock { isClosed = true; stateLock.broadcast() }
        try log?.close()
    }
}

@Suite struct ObjectStoreSpaceTests {
    /// Creates `count` objects holding `data`, destroying all but the last 8 as it goes; returns those.
    static func churn(_ store: ObjectStore, _ data: [UInt8], count: Int) throws -> [UInt64] {
        var live: [UInt64] = []
        for _ in 0..<count {
            live.append(try StoreTestSupport.createFile(store, data))
            if live.count > 8 {
                let transaction = store.transaction()
                let old = live.removeFirst()
                transaction.declareDestroy(old)
                try transaction.start()
                try transaction.destroy(old)
                try transaction.stop()
            }
        }
        return live
    }

    /// Space freed by destroys comes back (after two checkpoints) when allocation needs it, with
    /// background checkpoints and without.
    @Test(arguments: [false, true])
    func freedSpaceIsReusedWhenTheDeviceFills(background: Bool) throws {
        var settings = StoreTestSupport.settings()
        settings.backgroundCheckpoints = background
        settings.checkpointIntervalNs = 60_000_000_000
        // One device holding every role, as a single-disk server has it.
        let pool = try Pool.create(name: "one", devices: [(MemoryDevice(path: "solo", sizeBytes: 96 << 20), .data)])
        let store = try ObjectStore.open(pool: pool, settings: settings)
        let data = StoreTestSupport.pattern(1 << 20, seed: 7)
        let live = try Self.churn(store, data, count: 300)      // 300 MiB through a 96 MiB device
        for object in live { #expect(try store.read(object, at: 0, length: 16) == Array(data[0..<16])) }
        try store.close()
    }
}

extension ObjectStoreSpaceTests {
    @Test func manyThreadsReuseFreedSpace() throws {
        var settings = ObjectStoreSettings()
        settings.checkpointIntervalNs = 1_000_000_000
        let pool = try Pool.create(name: "one", devices: [(MemoryDevice(path: "solo", sizeBytes: 512 << 20), .data)])
        let store = try ObjectStore.open(pool: pool, settings: settings)
        let data = StoreTestSupport.pattern(1 << 20, seed: 7)
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            do {
                _ = try Self.churn(store, data, count: 60)
            } catch {
                failures.withLock { $0.append("\(error)") }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 }.first ?? "") \(store.statistics)")
        try store.close()
    }
}

/// The log settings in force: a quarter of the pool at most, and segments shrunk on small pools,
/// so that default settings open any pool.
@Suite struct LogSizingTests {
    @Test func logTakesAtMostAQuarterOfThePoolAndSegmentsShrinkOnSmallPools() {
        let mib: UInt64 = 1 << 20
        let defaults = LogSettings()
        #expect(defaults.segmentBytes == 32 * mib && defaults.logBytesMax == 3 << 30)
        #expect(defaults.validationProblems(copies: 4).isEmpty, "the defaults fit a head at four copies")
        // (pool capacity, segment bytes, log bytes) in force.
        let cases: [(UInt64, UInt64, UInt64)] = [
            (64 << 30, 32 * mib, 3 << 30), (8 << 30, 32 * mib, 2 << 30), (512 * mib, 32 * mib, 128 * mib),
            (256 * mib, 16 * mib, 64 * mib), (200 * mib, 12 * mib, 48 * mib), (64 * mib, 4 * mib, 16 * mib)]
        for (capacity, segment, log) in cases {
            let settings = ObjectStore.logSettings(defaults, capacityBytes: capacity)
            #expect(settings.segmentBytes == segment && settings.logBytesMax == log,
                    "\(capacity >> 20) MiB pool: \(settings.segmentBytes >> 20) MiB segments, \(settings.logBytesMax >> 20) MiB log")
            #expect(settings.validationProblems().isEmpty && settings.batchBytesMax <= Int(settings.segmentBytes))
        }
        var small = defaults
        small.segmentBytes = 64 << 10
        small.logBytesMax = 1 << 20
        #expect(ObjectStore.logSettings(small, capacityBytes: 64 * mib) == small, "small explicit settings are kept")
    }

    /// Default settings on a 96 MiB one-device pool: the store opens, its log cycles through
    /// shrunk segments under background checkpoints, and the pool checks clean.
    @Test func defaultSettingsOpenASmallPool() throws {
        let device = MemoryDevice(path: "solo", sizeBytes: 96 << 20)
        let pool = try Pool.create(name: "small", devices: [(device, .data)])
        let store = try ObjectStore.open(pool: pool)
        #expect(store.settings.log.segmentBytes == 6 << 20 && store.settings.log.logBytesMax == 24 << 20)
        let object = try StoreTestSupport.createFile(store, StoreTestSupport.pattern(1 << 20, seed: 3))
        let page = StoreTestSupport.pattern(4096, seed: 9)
        for index in 0..<20_000 {       // ~80 MiB of 4 KiB overwrites through a 24 MiB log
            let transaction = store.transaction()
            let offset = UInt64(index % 256) * 4096
            transaction.declareWrite(object, offset: offset, length: 4096)
            try transaction.start()
            try transaction.write(object, at: offset, page)
            try transaction.stop()
        }
        try store.sync()
        #expect(store.statistics.checkpoints >= 2)
        #expect(try store.read(object, at: 255 * 4096, length: 4096) == page)
        try store.close()
        try pool.export()
        let report = try StoreTestSupport.check([device], verifyData: true)
        #expect(report.problems.isEmpty, "\(report.problems)")
    }
}

/// A checkpoint that fails while it is being cut (here: the log head cannot be written) has
/// changed the allocator's state for a root it will never commit: the pool must be suspended,
/// so no later commit (another checkpoint, an export) writes that state, and a re-import starts
/// from the last committed checkpoint with nothing lost.
@Suite struct CheckpointCutFailureTests {
    @Test func aCutThatFailsSuspendsThePoolAndReimportLosesNothingDurable() throws {
        let devices = StoreTestSupport.devices()
        let log = FaultyDevice(wrapping: devices[2], faults: .init())
        let pool = try Pool.create(name: "cutfail", devices: [(devices[0], .data), (devices[1], .metadata), (log, .log)])
        let store = try ObjectStore.open(pool: pool, settings: StoreTestSupport.settings())
        let transaction = store.transaction()
        let object = transaction.declareCreate()
        transaction.declareWrite(object, offset: 0, length: 4096)
        try transaction.start()
        try transaction.create(object, type: .regular)
        try transaction.write(object, at: 0, StoreTestSupport.pattern(4096, seed: 3))
        try transaction.stop()
        try store.log!.sync()                           // durable in the log
        #expect(!pool.isSuspended)

        log.vanish()                                    // the log head of the next checkpoint cannot be written
        #expect(throws: ObjectStoreError.self) { try store.checkpoint() }
        #expect(pool.isSuspended, "a checkpoint that failed at its cut left the pool committable")
        #expect(throws: PoolError.self) { try pool.export() }
        try? store.close()

        // The devices as they are: the transaction is in the log, the root is the one before.
        let reopened = try StoreTestSupport.reopen(devices)
        let read = try reopened.read(object, at: 0, length: 4096)
        #expect(read == StoreTestSupport.pattern(4096, seed: 3))
        try reopened.close()
    }
}
