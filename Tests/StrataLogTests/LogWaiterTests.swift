// LogWaiterTests — the log's wakeups (per-waiter `sync()` slots, room waiters, bounded waits)
// and the order of I/O the writer issues (`appendGroup(_:flushingFirst:onDurable:)`).

import Foundation
import StrataIO
@testable import StrataLog
import StrataPool
import StrataTesting
import Synchronization
import Testing

/// I/O events of several devices on one clock, in the order they happened.
final class DeviceEvents: Sendable {
    let entries = Mutex<[String]>([])
    func record(_ event: String) { entries.withLock { $0.append(event) } }
    func take() -> [String] { entries.withLock { entries in defer { entries = [] }; return entries } }
}

/// A device that records its writes (when issued) and flushes (when completed) into a shared
/// `DeviceEvents`, and whose writes can be held at a gate or slowed (the log writer then stalls
/// inside its block write).
final class ObservedDevice: BlockStorage {
    let device: MemoryDevice
    let name: String
    let events: DeviceEvents
    let gateClosed = Atomic<Bool>(false)
    let writeDelayMicroseconds: UInt32

    init(_ device: MemoryDevice, name: String, events: DeviceEvents, writeDelayMicroseconds: UInt32 = 0) {
        self.device = device
        self.name = name
        self.events = events
        self.writeDelayMicroseconds = writeDelayMicroseconds
    }

    var path: String { device.path }
    var sizeBytes: UInt64 { device.sizeBytes }
    var blockSizeBytes: Int { device.blockSizeBytes }
    var isReadOnly: Bool { device.isReadOnly }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try device.read(into: buffer, at: offset)
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) {
        events.record("write \(name)\(fua ? " fua" : "")")
        while gateClosed.load(ordering: .acquiring) { usleep(1000) }
        if writeDelayMicroseconds > 0 { usleep(writeDelayMicroseconds) }
        try device.write(buffer, at: offset, fua: fua)
    }

    func flush() throws(IOError) {
        try device.flush()
        events.record("flush \(name)")
    }

    func discard(offset: UInt64, length: UInt64) throws(IOError) {
        try device.discard(offset: offset, length: length)
    }
}

@Suite struct LogWaiterTests {
    /// A new anchored log on a data and a log device, both observed on one clock.
    static func observedLog(settings: LogSettings, logWriteDelayMicroseconds: UInt32 = 0) throws
        -> (log: IntentLog, data: ObservedDevice, logDevice: ObservedDevice, events: DeviceEvents) {
        let events = DeviceEvents()
        let data = ObservedDevice(MemoryDevice(path: "data0", sizeBytes: 64 * LogTestSupport.mib), name: "data", events: events)
        let logDevice = ObservedDevice(MemoryDevice(path: "log0", sizeBytes: 64 * LogTestSupport.mib), name: "log", events: events,
                                       writeDelayMicroseconds: logWriteDelayMicroseconds)
        let pool = try Pool.create(name: "waitertest", devices: [(storage: data, role: .data), (storage: logDevice, role: .log)])
        let log = try IntentLog.open(pool: pool, from: .null, settings: settings)
        try LogTestSupport.checkpoint(log, through: 0)
        _ = events.take()
        return (log, data, logDevice, events)
    }

    /// More threads than waiter slots (so some wait on the shared condition), each syncing at its
    /// own LSNs behind a slow device: every sync returns, none times out, each with its record
    /// durable and its callback run.
    @Test(arguments: [LogSettings.Writer.dedicatedThread, .callerLeads])
    func manyThreadsSyncingAtDifferentLSNsAllReturn(writer: LogSettings.Writer) throws {
        var settings = LogTestSupport.settings(writer: writer)
        settings.logBytesMax = 16 << 20
        settings.appendWaitNsMax = 20_000_000_000
        let log = try Self.observedLog(settings: settings, logWriteDelayMicroseconds: 200).log
        let threadCount = LogWaiters.slotCountMax + 16
        let perThread = 12
        let failures = Mutex<[String]>([])
        let callbacks = CallbackLog()
        let group = DispatchGroup()
        for thread in 0..<threadCount {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                for index in 0..<perThread {
                    do {
                        let lsn = try log.append(type: 1, transactionID: UInt64(thread), payload: [UInt8](repeating: UInt8(index), count: 100 + thread)) {
                            callbacks.record($0)
                        }
                        try log.sync()
                        if log.durableLSN < lsn { failures.withLock { $0.append("sync returned before \(lsn) was durable") } }
                        if !callbacks.all.contains(lsn) { failures.withLock { $0.append("sync returned before the callback of \(lsn)") } }
                    } catch { failures.withLock { $0.append("thread \(thread): \(error)") } }
                }
            }
        }
        #expect(group.wait(timeout: .now() + 120) == .success, "a sync never returned")
        #expect(failures.withLock { $0 } == [])
        #expect(callbacks.all == Array(1...LSN(threadCount * perThread)))
        #expect(log.statistics.batches < threadCount * perThread, "no batching")
        log.monitor.lock()
        #expect(log.waiters.armedMask == 0 && log.overflowWaiterCount == 0 && log.roomWaiterCount == 0)
        log.monitor.unlock()
        try log.close()
    }

    /// Appenders that find both batch buffers full wait for room and are woken when a buffer
    /// frees; an append and a `sync()` behind a stuck write time out at their bound, and the
    /// waiter slot serves again once the write completes.
    @Test func blockedAppendersAreWokenAndStuckWaitsTimeOut() throws {
        var settings = LogTestSupport.settings()
        settings.appendWaitNsMax = 1_000_000_000
        let (log, _, logDevice, _) = try Self.observedLog(settings: settings)
        let record = [UInt8](repeating: 7, count: 12_000)       // one per 16 KiB batch
        logDevice.gateClosed.store(true, ordering: .releasing)
        try log.append(type: 1, transactionID: 1, payload: record)
        // The writer takes that batch and stalls in its write; the record behind fills the other buffer.
        var taken = false
        for _ in 0..<2000 where !taken {
            usleep(1000)
            taken = log.monitor.withLock { log.batches[log.openBatch].isEmpty }
        }
        #expect(taken, "the writer did not take the first batch")
        try log.append(type: 1, transactionID: 2, payload: record)
        let start = Monitor.nowNs()
        #expect(throws: LogError.appendTimedOut(waitedNs: 1_000_000_000, batchBytesMax: 16 << 10)) {
            try log.append(type: 1, transactionID: 3, payload: record)
        }
        #expect(throws: LogError.appendTimedOut(waitedNs: 1_000_000_000, batchBytesMax: 16 << 10)) { try log.sync() }
        #expect(Monitor.nowNs() - start < 5_000_000_000)
        log.monitor.lock()
        #expect(log.waiters.armedMask == 0 && log.roomWaiterCount == 0, "a timed-out waiter left its slot armed")
        log.monitor.unlock()
        // Appenders now block on the full buffers, and are woken as the writer frees them.
        let appenderCount = 4
        let failures = Mutex<[String]>([])
        let group = DispatchGroup()
        for index in 0..<appenderCount {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                do { try log.append(type: 2, transactionID: UInt64(10 + index), payload: record) } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        var waiting = 0
        for _ in 0..<500 where waiting < appenderCount {
            usleep(1000)
            waiting = log.monitor.withLock { log.roomWaiterCount }
        }
        #expect(waiting == appenderCount, "appenders did not wait for room")
        logDevice.gateClosed.store(false, ordering: .releasing)
        #expect(group.wait(timeout: .now() + 5) == .success, "appenders waiting for room were not woken")
        #expect(failures.withLock { $0 } == [])
        try log.sync()
        #expect(log.durableLSN == 2 + LSN(appenderCount) && log.appendedLSN == log.durableLSN)
        log.monitor.lock()
        #expect(log.waiters.armedMask == 0 && log.roomWaiterCount == 0)
        log.monitor.unlock()
        try log.close()
    }

    /// `appendGroup(_:flushingFirst:)`: the named data device is flushed (completed) before the
    /// batch's block write is issued, once per batch however many groups ask; a batch naming no
    /// device flushes none.
    @Test func appendGroupFlushesNamedDevicesBeforeTheBlock() throws {
        let (log, data, logDevice, events) = try Self.observedLog(settings: LogTestSupport.settings(writer: .callerLeads))
        let dataIndex = try #require(log.pool.devices.firstIndex { $0 === data })
        let logIndex = try #require(log.pool.devices.firstIndex { $0 === logDevice })
        #expect(dataIndex != logIndex)
        for transaction in 0..<2 {                  // two groups naming the data device: one batch
            try log.appendGroup([LogAppend(type: 3, transactionID: UInt64(transaction), payload: [1, 2, 3]),
                                 LogAppend(type: 3, transactionID: UInt64(transaction), payload: [4, 5])],
                                flushingFirst: UInt64(1) << UInt64(dataIndex))
        }
        #expect(events.take() == [], "I/O before any batch was asked for")
        try log.sync()
        #expect(events.take() == ["flush data", "write log fua"])
        #expect(log.statistics.batches == 1)
        // A batch without a mask flushes nothing; the mask does not carry over.
        try log.append(type: 4, transactionID: 9, payload: [9])
        try log.sync()
        #expect(events.take() == ["write log fua"])
        // With write-then-flush durability the order is: data flush, block write, log flush.
        try log.close()
        var settings = LogTestSupport.settings(writer: .callerLeads)
        settings.durability = .writeThenFlush
        let second = try Self.observedLog(settings: settings)
        try second.log.appendGroup([LogAppend(type: 3, transactionID: 1, payload: [1])], flushingFirst: 1 << UInt64(dataIndex))
        try second.log.sync()
        #expect(second.events.take() == ["flush data", "write log", "flush log"])
        try second.log.close()
    }
}
