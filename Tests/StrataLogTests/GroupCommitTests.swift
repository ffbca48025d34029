// GroupCommitTests — appends from many threads, batches, callbacks in LSN order, sync, bounds.

import Foundation
import StrataIO
@testable import StrataLog
import StrataPool
import StrataTesting
import Synchronization
import Testing

@Suite struct GroupCommitTests {
    @Test(arguments: [LogSettings.Writer.dedicatedThread, .callerLeads])
    func manyThreadsAppendSyncAndCallbacksFireInOrder(writer: LogSettings.Writer) throws {
        let devices = LogTestSupport.makeDevices()
        // Room for the worst case (every record alone in its own 4 KiB block, as on a loaded
        // machine): this test has no checkpoints, so a full log would fail it by design.
        var settings = LogTestSupport.settings(writer: writer)
        settings.logBytesMax = 16 << 20
        let log = try LogTestSupport.newLog(devices: devices, settings: settings)
        let callbacks = CallbackLog()
        let threadCount = 8
        let perThread = 150
        let failures = Mutex<[String]>([])
        // Plain threads (concurrentPerform from a test's cooperative thread can starve on 2 cores).
        let group = DispatchGroup()
        for thread in 0..<threadCount {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                for index in 0..<perThread {
                    let payload = LogTestSupport.payload(thread * 10_000 + index, length: (index * 37) % 700)
                    do {
                        let lsn = try log.append(type: 1, transactionID: UInt64(thread * 10_000 + index), payload: payload) { callbacks.record($0) }
                        if index % 25 == 0 {
                            try log.sync()
                            // sync returned: this record is durable and its callback ran.
                            if log.durableLSN < lsn { failures.withLock { $0.append("sync returned before \(lsn) was durable") } }
                            // With the dedicated writer the completer thread runs callbacks: sync
                            // still returns only after they ran.
                            if !callbacks.all.contains(lsn) { failures.withLock { $0.append("sync returned before the callback of \(lsn) ran") } }
                        }
                    } catch { failures.withLock { $0.append("\(error)") } }
                }
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success)
        try log.sync()
        #expect(failures.withLock { $0 } == [])
        let seen = callbacks.all
        #expect(seen == Array(1...LSN(threadCount * perThread)), "callbacks out of order or missing")
        let statistics = log.statistics
        #expect(statistics.records == threadCount * perThread)
        #expect(statistics.batches < threadCount * perThread, "no batching: \(statistics.batches) batches")
        try log.close()
        // Every record replays, in order, with its bytes.
        let (records, summary) = try LogTestSupport.replayed(LogTestSupport.crashImage(devices))
        #expect(records.map(\.0.lsn) == Array(1...LSN(threadCount * perThread)))
        #expect(summary.recordCount == threadCount * perThread)
        for (record, payload) in records {
            let id = Int(record.transactionID)
            #expect(payload == LogTestSupport.payload(id, length: ((id % 10_000) * 37) % 700))
        }
    }

    @Test func callbacksFireOnlyOnceDurableAndCommitAsyncStartsABatch() throws {
        let devices = LogTestSupport.makeDevices()
        let log = try LogTestSupport.newLog(devices: devices, settings: LogTestSupport.settings(writer: .callerLeads))
        let callbacks = CallbackLog()
        for index in 0..<5 { try log.append(type: 2, transactionID: UInt64(index), payload: [UInt8(index)]) { callbacks.record($0) } }
        #expect(callbacks.all.isEmpty, "callbacks fired before any batch was written")
        #expect(log.durableLSN == 0)
        // Nothing written yet: a crash now replays nothing.
        #expect(try LogTestSupport.replayed(LogTestSupport.crashImage(devices)).records.isEmpty)
        log.commitAsync()
        #expect(callbacks.all == [1, 2, 3, 4, 5])
        #expect(log.statistics.batches == 1, "five records, one batch")
        #expect(try LogTestSupport.replayed(LogTestSupport.crashImage(devices)).records.count == 5)
        try log.close()
    }

    @Test func oversizedRecordIsATypedErrorNamingSizes() throws {
        let log = try LogTestSupport.newLog(devices: LogTestSupport.makeDevices(), settings: LogTestSupport.settings(writer: .callerLeads))
        let limit = log.settings.payloadBytesMax
        #expect(limit == (16 << 10) - 160)
        #expect(throws: LogError.recordTooLarge(payloadBytes: limit + 1, payloadBytesMax: limit)) {
            try log.append(type: 1, transactionID: 1, payload: [UInt8](repeating: 0, count: limit + 1))
        }
        let message = LogError.recordTooLarge(payloadBytes: limit + 1, payloadBytesMax: limit).description
        #expect(message.contains("\(limit + 1)") && message.contains("\(limit)"))
        // A record of exactly the limit fits, and nothing was consumed by the refused one.
        #expect(try log.append(type: 1, transactionID: 2, payload: [UInt8](repeating: 1, count: limit)) == 1)
        try log.close()
    }

    @Test func invalidSettingsAreRefusedByName() throws {
        let pool = try LogTestSupport.createPool(LogTestSupport.makeDevices())
        var settings = LogTestSupport.settings()
        settings.batchBytesMax = 3000
        settings.logBytesMax = 64 << 10
        do {
            _ = try IntentLog.open(pool: pool, from: .null, settings: settings)
            Issue.record("invalid settings accepted")
        } catch let error as LogError {
            guard case .invalidSettings(let problems) = error else { Issue.record("\(error)"); return }
            #expect(problems.count == 2)
            #expect(problems.joined().contains("batchBytesMax 3000") && problems.joined().contains("logBytesMax 65536"))
        }
    }

    @Test func fullLogRequestsACheckpointAndAppendsWaitThenResume() throws {
        let devices = LogTestSupport.makeDevices()
        var settings = LogTestSupport.settings()
        settings.logBytesMax = 256 << 10                      // 4 segments of 64 KiB
        settings.appendWaitNsMax = 5_000_000_000
        let log = try LogTestSupport.newLog(devices: devices, settings: settings)
        let requests = Mutex<[LogUsage]>([])
        let waiter = DispatchSemaphore(value: 0)
        log.setCheckpointRequestHandler { usage in
            let first = requests.withLock { $0.append(usage); return $0.count == 1 }
            if first { waiter.signal() }
        }
        // Fill past the bound: 4 segments of 64 KiB hold at most ~60 records of 4 KiB.
        let appended = Mutex<Int>(0)
        let done = DispatchSemaphore(value: 0)
        let payload = [UInt8](repeating: 0xAB, count: 4000)
        Thread.detachNewThread {
            for index in 0..<120 {
                do { try log.append(type: 1, transactionID: UInt64(index), payload: payload) } catch { break }
                appended.withLock { $0 += 1 }
            }
            done.signal()
        }
        #expect(waiter.wait(timeout: .now() + 5) == .success, "no checkpoint request")
        // The writer stalls on the full log; appends stop short of 120 until a checkpoint frees space.
        Thread.sleep(forTimeInterval: 0.3)
        let stalledAt = appended.withLock { $0 }
        #expect(stalledAt < 120, "appends did not wait for the full log")
        #expect(log.usage.segmentCount == 4)
        #expect(requests.withLock { $0 }.first.map { $0.segmentCount * 100 >= 50 * 4 } == true)
        // The DMU's checkpoint thread: a checkpoint whenever the log holds two segments or more.
        let stop = Mutex(false)
        let checkpointer = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            while !stop.withLock({ $0 }) {
                if log.usage.segmentCount >= 2 { try? LogTestSupport.checkpoint(log, through: log.durableLSN) }
                Thread.sleep(forTimeInterval: 0.01)
            }
            checkpointer.signal()
        }
        #expect(done.wait(timeout: .now() + 10) == .success, "appends did not resume after checkpoints")
        try log.sync()                                        // still needs checkpoints for the last batches
        stop.withLock { $0 = true }
        checkpointer.wait()
        #expect(appended.withLock { $0 } == 120)
        #expect(log.statistics.logFullWaits >= 1)
        try log.close()
    }

    @Test func boundedWaitEndsInLogFull() throws {
        var settings = LogTestSupport.settings()
        settings.logBytesMax = 192 << 10                      // 3 segments
        settings.appendWaitNsMax = 200_000_000
        let log = try LogTestSupport.newLog(devices: LogTestSupport.makeDevices(), settings: settings)
        let payload = [UInt8](repeating: 1, count: 8000)
        var thrown: LogError? = nil
        let start = Monitor.nowNs()
        for index in 0..<200 {
            do { try log.append(type: 1, transactionID: UInt64(index), payload: payload) } catch { thrown = error; break }
        }
        guard case .logFull(let max, let segment, let waited) = thrown else { Issue.record("expected logFull, got \(String(describing: thrown))"); return }
        #expect(max == 192 << 10 && segment == 64 << 10 && waited == 200_000_000)
        #expect(Monitor.nowNs() - start < 3_000_000_000)
        #expect(thrown!.description.contains("196608 bytes"))
    }
}

@Suite struct GroupAppendTests {
    @Test func aGroupLandsInOneBlockAndAnOversizedGroupIsRefused() throws {
        let devices = LogTestSupport.makeDevices()
        let log = try LogTestSupport.newLog(devices: devices, settings: LogTestSupport.settings(writer: .callerLeads))
        try log.append(type: 1, transactionID: 1, payload: [UInt8](repeating: 9, count: 12_000))
        let callbacks = CallbackLog()
        // 3 × 3032 bytes do not fit behind the 12 KiB record: the group goes whole into the next batch.
        let lsns = try log.appendGroup((0..<3).map { LogAppend(type: 2, transactionID: 7, payload: LogTestSupport.payload($0, length: 3000)) }) {
            callbacks.record($0)
        }
        #expect(lsns == 2...4)
        try log.sync()
        #expect(callbacks.all == [4])
        #expect(log.statistics.batches == 2 && log.statistics.batchRecordCountHistogram[1] == 1)
        #expect(throws: LogError.self) {
            try log.appendGroup((0..<6).map { _ in LogAppend(type: 2, transactionID: 8, payload: [UInt8](repeating: 0, count: 3000)) })
        }
        #expect(try LogTestSupport.replayed(LogTestSupport.crashImage(devices)).records.map(\.0.lsn) == [1, 2, 3, 4])
        try log.close()
    }
}
