// LogTestSupport — pools on in-memory devices, small log settings, checkpoints the way the DMU
// will drive them, and crash images taken as device snapshots.

import StrataIO
@testable import StrataLog
import StrataPool
import StrataTesting
import Synchronization

enum LogTestSupport {
    static let mib: UInt64 = 1 << 20

    /// Small bounds so that tests cross segments and fill the log quickly.
    static func settings(writer: LogSettings.Writer = .dedicatedThread) -> LogSettings {
        var settings = LogSettings()
        settings.segmentBytes = 64 << 10
        settings.logBytesMax = 1 << 20
        settings.batchBytesMax = 16 << 10
        settings.appendWaitNsMax = 2_000_000_000
        settings.writer = writer
        return settings
    }

    /// A pool on in-memory devices: data 64 MiB and log 64 MiB (or one 64 MiB device).
    static func makeDevices(tiered: Bool = true) -> [MemoryDevice] {
        tiered ? [MemoryDevice(path: "data0", sizeBytes: 64 * mib), MemoryDevice(path: "log0", sizeBytes: 64 * mib)]
               : [MemoryDevice(path: "solo", sizeBytes: 64 * mib)]
    }

    static func createPool(_ devices: [any BlockStorage]) throws -> Pool {
        let roles: [DeviceRole] = devices.count == 1 ? [.data] : [.data, .log]
        return try Pool.create(name: "logtest", devices: zip(devices, roles).map { (storage: $0, role: $1) })
    }

    /// Commits a checkpoint covering records through `lsn` (the DMU's three steps).
    static func checkpoint(_ log: IntentLog, through lsn: LSN) throws {
        let root = try log.beginCheckpoint(through: lsn)
        var roots = log.pool.uberblock.roots
        roots[Uberblock.RootSlot.intentLog.rawValue] = root
        try log.pool.commitCheckpoint(roots: roots)
        log.checkpointCommitted()
    }

    /// A new, anchored log on a fresh pool.
    static func newLog(devices: [MemoryDevice], settings: LogSettings = settings()) throws -> IntentLog {
        let pool = try createPool(devices)
        let log = try IntentLog.open(pool: pool, from: .null, settings: settings)
        try checkpoint(log, through: 0)
        return log
    }

    /// A crash image of the devices as they are now (every completed write kept).
    static func crashImage(_ devices: [MemoryDevice]) -> [any BlockStorage] {
        devices.map { OverlayDevice(base: $0.snapshot()) }
    }

    /// Imports the pool from `devices` and replays its log (read-only): the records and summary.
    static func replayed(_ devices: [any BlockStorage]) throws -> (records: [(LogRecord, [UInt8])], summary: LogReplaySummary) {
        let pool = try Pool.importPool(devices: devices, readOnly: true)
        var records: [(LogRecord, [UInt8])] = []
        let summary = try IntentLog.replay(pool: pool, from: pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]) { record, payload in
            records.append((record, payload.withUnsafeBytes { Array($0) }))
        }
        return (records, summary)
    }

    /// A deterministic payload for record `index` of `length` bytes.
    static func payload(_ index: Int, length: Int) -> [UInt8] {
        var state = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15 &+ 0x1234_5678
        return (0..<length).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    /// Where the log device's segments are (device index of role log).
    static func logDevice(_ pool: Pool) -> Int { pool.devices.count == 1 ? 0 : 1 }
}

/// A thread-safe list of what callbacks saw.
final class CallbackLog: Sendable {
    let entries = Mutex<[LSN]>([])
    func record(_ lsn: LSN) { entries.withLock { $0.append(lsn) } }
    var all: [LSN] { entries.withLock { $0 } }
}
