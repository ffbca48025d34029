// ObjectStoreRegressionTests — bugs of the object store the crash harness found, each pinned
// by a direct test (the crash workloads keep covering them too).

import Foundation
import StrataDMU
import StrataDMUCrash
import StrataIO
import StrataLog
import StrataPool
import StrataTesting
import Synchronization
import Testing

@Suite struct ObjectStoreRegressionTests {
    static func newStore(_ devices: [MemoryDevice]) throws -> ObjectStore {
        let pool = try Pool.create(name: "regress", devices: [(devices[0], .data), (devices[1], .metadata), (devices[2], .log)])
        return try ObjectStore.open(pool: pool, settings: DMUCrashSystem().settings)     // callerLeads: nothing durable until asked
    }

    static func devices() -> [MemoryDevice] {
        [MemoryDevice(path: "data0", sizeBytes: 128 << 20), MemoryDevice(path: "meta0", sizeBytes: 64 << 20),
         MemoryDevice(path: "log0", sizeBytes: 64 << 20)]
    }

    /// Found by dmu-random seed 10: a transaction whose only operation failed validation fired its
    /// commit callback at once, before the transactions stopped ahead of it were durable — out of
    /// commit order (a caller advancing "last committed" would have dropped their replay data).
    @Test func emptyTransactionCallbackWaitsForEarlierTransactions() throws {
        let devices = Self.devices()
        let store = try Self.newStore(devices)
        let order = Mutex<[String]>([])
        let first = store.transaction()
        let object = first.declareCreate()
        try first.start()
        try first.create(object, type: .regular)
        try first.stop { _ in order.withLock { $0.append("t1") } }
        #expect(order.withLock { $0 }.isEmpty, "with the caller-leads writer nothing is durable before a sync")

        let empty = store.transaction()
        empty.declareRemoveXattr(object, name: "user.absent")
        try empty.start()
        #expect(throws: ObjectStoreError.noSuchXattr(object: object, name: "user.absent")) { try empty.removeXattr(object, name: "user.absent") }
        try empty.stop { _ in order.withLock { $0.append("t2") } }
        #expect(order.withLock { $0 }.isEmpty, "the empty transaction's callback fired before t1 was durable")
        try store.sync()
        #expect(order.withLock { $0 } == ["t1", "t2"])
        #expect(store.log!.durableLSN == store.log!.usage.appendedLSN)

        // Nothing pending: it still rides a (`nothing`) record, so stop never waits for the disk.
        let again = store.transaction()
        again.declareRemoveXattr(object, name: "user.absent")
        try again.start()
        _ = try? again.removeXattr(object, name: "user.absent")
        try again.stop { _ in order.withLock { $0.append("t3") } }
        try store.sync()
        #expect(order.withLock { $0 } == ["t1", "t2", "t3"])

        // The `nothing` records replay as nothing: a crash image (the log not checkpointed) opens
        // with t1's object and no change from the others.
        let image = devices.map { $0.snapshot(readOnly: false) }
        try store.close()
        let reopened = try ObjectStore.open(pool: try Pool.importPool(devices: image), settings: DMUCrashSystem().settings)
        #expect(try reopened.exists(object))
        #expect(reopened.statistics.replayedRecords >= 3)
        try reopened.close()
    }
}
