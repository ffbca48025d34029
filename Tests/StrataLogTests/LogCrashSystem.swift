// LogCrashSystem — the intent log as a system under test of the crash harness, with a tiny
// "DMU" on top: records carry values, checkpoints move covered values into a metadata blob.
//
// Theory. Operations append records (the value of key "r<id>" is the record's length and
// payload crc), sync, start a batch (commitAsync), checkpoint, or restart (drop the pool and
// log without closing — unwritten records are lost — and reopen: import, replay, continue
// appending). An append is acknowledged from its commit callback, so the oracle demands:
// every record whose callback fired is there with its exact bytes, every other one whole or
// absent. The checkpoint writes the values of every record through the last appended LSN into
// a metadata blob (the DMU's checkpointed state; root slot `dnodeTable`, checksum in the
// pointer), then `beginCheckpoint` / `commitCheckpoint` / `checkpointCommitted`. The log is
// small (4 segments of 64 KiB, 16 KiB batches) so that workloads cross segments and fill the
// log; its checkpoint-request handler checkpoints on the spot (the writer is the caller).
//
// Observing an image: read-only import, the blob's values, then `IntentLog.replay` from the
// uberblock's log root (values of replayed records override). `check` adds what the oracle
// cannot see: replayed LSNs consecutive from the covered LSN + 1 (order: B durable ⇒ A
// durable), payloads byte-exact, and space: the log device's used bytes equal the head plus
// the segments it lists, the data device's the blob (nothing leaked, nothing claimed twice).
// Recovery (crashed every 8th image) is a read-write import plus `IntentLog.open` and close.
//
// Deterministic: the `callerLeads` writer and `Pool.runsDeviceJobsInOrder`.

import StrataIO
@testable @_spi(LogTesting) import StrataLog
@_spi(CrashTesting) import StrataPool
import StrataTesting

enum LogCrashOperation: Sendable, CustomStringConvertible {
    case append(id: Int, length: Int)
    /// `count` records appended as one atomic group (ids from `firstID`).
    case burst(firstID: Int, count: Int, length: Int)
    case sync
    case commitAsync
    case checkpoint
    case restart

    var description: String {
        switch self {
        case .append(let id, let length): return "append r\(id) (\(length) bytes)"
        case .burst(let first, let count, let length): return "append r\(first)...r\(first + count - 1) (\(length) bytes each)"
        case .sync: return "sync"
        case .commitAsync: return "commitAsync"
        case .checkpoint: return "checkpoint"
        case .restart: return "restart"
        }
    }
}

final class LogCrashInstance: @unchecked Sendable {
    let devices: [any BlockStorage]
    var pool: Pool?
    var log: IntentLog?
    /// Values of appended records since the last checkpoint, by LSN (key id, value).
    var pending: [LSN: (id: Int, value: String)] = [:]
    var lastLSN: LSN = 0
    /// Values held by the committed blob, and the blob itself.
    var covered: [Int: String] = [:]
    var blob: ExtentCopies?
    /// Check mode: what the image shows, and what is wrong with it.
    var observed: [String: String] = [:]
    var problems: [String] = []

    init(devices: [any BlockStorage]) { self.devices = devices }
}

struct LogCrashSystem: SystemUnderTest {
    typealias Instance = LogCrashInstance
    typealias Operation = LogCrashOperation
    typealias Key = String
    typealias Value = String

    var bug = false
    var name: String { bug ? "log-crash (callbacks before flush)" : "log-crash" }
    var devices: [DeviceSpec] { [DeviceSpec(name: "data0", sizeBytes: 64 << 20), DeviceSpec(name: "log0", sizeBytes: 64 << 20)] }
    static let blobMagic: UInt32 = 0x424F_4C42      // "BLOB"

    var settings: LogSettings {
        var settings = LogSettings()
        settings.segmentBytes = 64 << 10
        settings.logBytesMax = 256 << 10
        settings.batchBytesMax = 16 << 10
        settings.checkpointRequestPercent = 75
        settings.writer = .callerLeads
        settings.durability = bug ? .writeThenFlush : .fua
        settings.firesCallbacksBeforeDurable = bug
        return settings
    }

    static func payload(id: Int, length: Int) -> [UInt8] {
        var bytes = LogTestSupport.payload(id, length: length)
        for index in 0..<8 { bytes[index] = UInt8(truncatingIfNeeded: UInt64(id) >> (8 * UInt64(index))) }
        return bytes
    }

    static func value(_ bytes: [UInt8]) -> String { "\(bytes.count):\(String(CRC32C.checksum(bytes), radix: 16))" }

    // MARK: Protocol

    func format(_ devices: [any BlockStorage]) throws {
        Pool.runsDeviceJobsInOrder = true
        let pool = try Pool.create(name: "logcrash", devices: [(storage: devices[0], role: .data), (storage: devices[1], role: .log)])
        let log = try IntentLog.open(pool: pool, from: .null, settings: settings)
        try LogTestSupport.checkpoint(log, through: 0)
        try log.close()
    }

    func open(_ devices: [any BlockStorage]) throws -> LogCrashInstance { try open(devices, for: .check) }

    func open(_ devices: [any BlockStorage], for purpose: OpenPurpose) throws -> LogCrashInstance {
        Pool.runsDeviceJobsInOrder = true
        let instance = LogCrashInstance(devices: devices)
        switch purpose {
        case .check: try observeImage(instance)
        case .workload: try reopen(instance)
        case .recovery:
            try reopen(instance)
            try instance.log?.close()
        }
        return instance
    }

    func perform(_ operation: LogCrashOperation, on instance: LogCrashInstance, context: OperationContext) throws {
        switch operation {
        case .append(let id, let length):
            let log = instance.log!
            let payload = LogCrashSystem.payload(id: id, length: length)
            let lsn = try log.append(type: 1, transactionID: UInt64(id), payload: payload) { _ in context.acknowledge() }
            instance.pending[lsn] = (id, LogCrashSystem.value(payload))
            instance.lastLSN = lsn
        case .burst(let first, let count, let length):
            // One atomic group: all records in one batch, acknowledged once durable.
            let records = (first..<(first + count)).map { LogAppend(type: 1, transactionID: UInt64($0), payload: LogCrashSystem.payload(id: $0, length: length)) }
            let lsns = try instance.log!.appendGroup(records) { _ in context.acknowledge() }
            for (lsn, record) in zip(lsns, records) { instance.pending[lsn] = (Int(record.transactionID), LogCrashSystem.value(record.payload)) }
            instance.lastLSN = lsns.upperBound
        case .sync: try instance.log!.sync(); context.acknowledge()
        case .commitAsync: instance.log!.commitAsync(); context.acknowledge()
        case .checkpoint: try checkpoint(instance); context.acknowledge()
        case .restart: try reopen(instance); context.acknowledge()
        }
    }

    func check(_ instance: LogCrashInstance) throws -> [String] { instance.problems }
    func observe(_ instance: LogCrashInstance) throws -> [String: String] { instance.observed }

    func effects(of operation: LogCrashOperation) -> [Effect<String, String>] {
        switch operation {
        case .append(let id, let length):
            return [Effect(key: "r\(id)", value: LogCrashSystem.value(LogCrashSystem.payload(id: id, length: length)))]
        case .burst(let first, let count, let length):
            return (first..<(first + count)).map { Effect(key: "r\($0)", value: LogCrashSystem.value(LogCrashSystem.payload(id: $0, length: length))) }
        default: return []
        }
    }

    // MARK: The tiny DMU

    /// Imports the pool read-write and opens the log (replay), dropping any previous instance.
    func reopen(_ instance: LogCrashInstance) throws {
        instance.log = nil
        instance.pool = nil
        let pool = try Pool.importPool(devices: instance.devices)
        let (covered, blob) = try LogCrashSystem.readBlob(pool)
        instance.covered = covered
        instance.blob = blob
        instance.pending = [:]
        let log = try IntentLog.open(pool: pool, from: pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue], settings: settings) { record, payload in
            let bytes = payload.withUnsafeBytes { Array($0) }
            instance.pending[record.lsn] = (Int(record.transactionID), LogCrashSystem.value(bytes))
        }
        instance.lastLSN = log.appendedLSN
        nonisolated(unsafe) let unowned = instance
        log.setCheckpointRequestHandler { _ in try? self.checkpoint(unowned) }
        instance.pool = pool
        instance.log = log
    }

    /// Writes the values through the last appended LSN into a new blob, then the log's
    /// two-phase checkpoint around the pool's commit.
    func checkpoint(_ instance: LogCrashInstance) throws {
        let log = instance.log!
        let pool = instance.pool!
        let through = instance.lastLSN
        var values = instance.covered
        for (lsn, entry) in instance.pending where lsn <= through { values[entry.id] = entry.value }
        let entries = values.sorted { $0.key < $1.key }
        let length = (8 + entries.count * 12 + 4095) / 4096 * 4096
        let copies = try pool.allocator.allocate(.metadata, lengthBytes: UInt64(length))
        var bytes = [UInt8](repeating: 0, count: length)
        LogCrashSystem.put(&bytes, UInt64(LogCrashSystem.blobMagic), 0, 4)
        LogCrashSystem.put(&bytes, UInt64(entries.count), 4, 4)
        for (index, entry) in entries.enumerated() {
            let parts = entry.value.split(separator: ":")
            LogCrashSystem.put(&bytes, UInt64(entry.key), 8 + index * 12, 4)
            LogCrashSystem.put(&bytes, UInt64(parts[0])!, 12 + index * 12, 4)
            LogCrashSystem.put(&bytes, UInt64(parts[1], radix: 16)!, 16 + index * 12, 4)
        }
        for extent in copies { try bytes.withUnsafeBytes { try pool.devices[extent.deviceIndex].write($0, at: extent.offsetBytes, fua: false) } }
        let root = try log.beginCheckpoint(through: through)
        var roots = pool.uberblock.roots
        roots[Uberblock.RootSlot.intentLog.rawValue] = root
        roots[Uberblock.RootSlot.dnodeTable.rawValue] = BlockPointer(deviceIndex: copies[0].deviceIndex, offsetBytes: copies[0].offsetBytes,
                                                                     lengthBytes: UInt64(length), birthCheckpoint: pool.uberblock.checkpoint + 1,
                                                                     checksum: CRC32C.checksum(bytes))
        if let old = instance.blob { pool.allocator.free(old) }
        try pool.commitCheckpoint(roots: roots)
        log.checkpointCommitted()
        instance.blob = copies
        instance.covered = values
        instance.pending = instance.pending.filter { $0.key > through }
    }

    static func put(_ bytes: inout [UInt8], _ value: UInt64, _ offset: Int, _ width: Int) {
        for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
    }

    static func get(_ bytes: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
        (0..<width).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }

    static func readBlob(_ pool: Pool) throws -> (values: [Int: String], copies: ExtentCopies?) {
        let pointer = pool.uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue]
        guard !pointer.isNull else { return ([:], nil) }
        var bytes = [UInt8](repeating: 0, count: Int(pointer.lengthBytes))
        try bytes.withUnsafeMutableBytes { try pool.devices[pointer.deviceIndex].read(into: $0, at: pointer.offsetBytes) }
        guard CRC32C.checksum(bytes) == pointer.checksum, get(bytes, 0, 4) == UInt64(blobMagic) else {
            throw LogError.corruptBlock(path: pool.devices[pointer.deviceIndex].path, offsetBytes: pointer.offsetBytes, detail: "checkpoint blob checksum")
        }
        var values: [Int: String] = [:]
        for index in 0..<Int(get(bytes, 4, 4)) {
            values[Int(get(bytes, 8 + index * 12, 4))] = "\(get(bytes, 12 + index * 12, 4)):\(String(get(bytes, 16 + index * 12, 4), radix: 16))"
        }
        let copies = ExtentCopies([Extent(deviceIndex: pointer.deviceIndex, offsetBytes: pointer.offsetBytes, lengthBytes: pointer.lengthBytes)])
        return (values, copies)
    }

    /// Check mode: read-only import, blob, replay; the checks the oracle cannot make.
    func observeImage(_ instance: LogCrashInstance) throws {
        let pool = try Pool.importPool(devices: instance.devices, readOnly: true)
        let (covered, blob) = try LogCrashSystem.readBlob(pool)
        var observed: [String: String] = [:]
        for (id, value) in covered { observed["r\(id)"] = value }
        let root = pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        var previous: LSN? = nil
        var problems: [String] = []
        let summary = try IntentLog.replay(pool: pool, from: root) { record, payload in
            let bytes = payload.withUnsafeBytes { Array($0) }
            let id = Int(record.transactionID)
            if bytes != LogCrashSystem.payload(id: id, length: bytes.count) { problems.append("record \(record.lsn) (r\(id)): payload bytes differ") }
            if let previous, record.lsn != previous + 1 { problems.append("record \(record.lsn) follows \(previous): a gap") }
            previous = record.lsn
            observed["r\(id)"] = LogCrashSystem.value(bytes)
        }
        if summary.recordCount > 0, summary.lastLSN != summary.coveredThroughLSN + LSN(summary.recordCount) {
            problems.append("replayed \(summary.recordCount) records after LSN \(summary.coveredThroughLSN) but the last is \(summary.lastLSN)")
        }
        // Space: the log device holds the head and the segments it lists; the data device the blob.
        let head = try IntentLog.readHead(pool: pool, root: root)
        let statistics = pool.allocator.statistics()
        let logExpected = UInt64(head.headCopies.count * LogHead.headBytes) + UInt64(head.segments.count) * head.segmentBytes
        if statistics.devices[1].usedBytes != logExpected {
            problems.append("log device: \(statistics.devices[1].usedBytes) bytes used, the head and its \(head.segments.count) segments account for \(logExpected)")
        }
        let blobBytes = blob.map { $0[0].lengthBytes } ?? 0
        if statistics.devices[0].usedBytes != blobBytes {
            problems.append("data device: \(statistics.devices[0].usedBytes) bytes used, the checkpoint blob is \(blobBytes)")
        }
        instance.observed = observed
        instance.problems = problems
        instance.pool = pool
    }

    // MARK: Workload

    static let workload = Workload<LogCrashOperation>(name: "log-random", summary: "appends of 8 B - 12 KiB, atomic groups of 2-4 records, syncs, commitAsync, checkpoints, restarts") { seed in
        var random = SeededRandom(seed: seed)
        var operations: [LogCrashOperation] = []
        let lengths = [8, 100, 700, 3000, 5000, 12_000]
        for index in 0..<28 {
            let roll = Int(random.next() % 100)
            switch roll {
            case 0..<40: operations.append(.append(id: index * 100, length: lengths[Int(random.next() % UInt64(lengths.count))]))
            case 40..<58: operations.append(.burst(firstID: index * 100, count: 2 + Int(random.next() % 3), length: lengths[1 + Int(random.next() % 3)]))
            case 58..<72: operations.append(.sync)
            case 72..<82: operations.append(.commitAsync)
            case 82..<93: operations.append(.checkpoint)
            default: operations.append(.restart)
            }
        }
        operations.append(.sync)
        return operations
    }
}
