// The transaction path of a durable 4 KiB overwrite allocates a bounded, small number of heap
// blocks on the committing thread (counted by the AllocCounter malloc interposer): the
// transaction object and the record's payload, and nothing per declared object, lock stripe or
// record. Runs in optimized builds only (a debug build boxes closure contexts);
// `scripts/test.sh` runs the HotPath suites in a release build.

import AllocCounter
import StrataIO
import StrataLog
import StrataPool
import StrataTesting
import Testing
@testable import StrataDMU

@Suite struct TransactionHotPathTests {
    @Test(.enabled(if: optimizedBuild, "measured in the release run of scripts/test.sh (debug builds box closures)"))
    func overwriteAllocatesOnlyTheTransactionAndItsPayload() throws {
        var settings = ObjectStoreSettings()
        settings.backgroundCheckpoints = false
        settings.log.segmentBytes = 1 << 20
        settings.log.logBytesMax = 48 << 20
        let devices = [MemoryDevice(path: "data0", sizeBytes: 256 << 20)]
        let pool = try Pool.create(name: "hotpath", devices: [(devices[0], .data)])
        let store = try ObjectStore.open(pool: pool, settings: settings)
        let page = [UInt8](repeating: 0x5A, count: 4096)
        let object = try StoreTestSupport.createFile(store, [UInt8](repeating: 1, count: 1 << 20))
        let callback: IntentLog.CommitCallback = { _ in }
        func overwrite(_ index: Int) throws {
            let offset = UInt64(index % 256) * 4096
            let transaction = store.transaction()
            transaction.declareWrite(object, offset: offset, length: 4096)
            try transaction.start()
            try page.withUnsafeBytes { try transaction.write(object, at: offset, $0) }
            try transaction.stop(onCommit: callback)
        }
        for index in 0 ..< 2048 { try overwrite(index) }       // warm-up: pages, batch buffers
        try store.sync()
        let count = 1000
        let before = AllocCounter_thread()
        for index in 0 ..< count { try overwrite(index) }
        let allocations = AllocCounter_thread() - before
        try store.sync()
        let perOverwrite = Double(allocations) / Double(count)
        print("TransactionHotPathTests: \(perOverwrite) heap allocations per 4 KiB overwrite on the committing thread")
        #expect(perOverwrite <= 2.05, "\(allocations) heap allocations in \(count) overwrites")
        try store.close()
    }
}
