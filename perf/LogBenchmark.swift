// strata-perf log — the intent log's group commit and replay, anchored to fio in the same run.
//
//   strata-perf log [--target file|zram] [--dir PATH] [--size 4G] [--seconds 3] [--threads 1,16]
//                   [--record-bytes 4096] [--replay-bytes 1G] [--smoke]
//
// What is measured (one pool on the target, one device holding every role):
//   - group commit: T threads each append a record and wait for it to be durable (`sync`), in a
//     loop, for --seconds: records/s, payload MiB/s, commit latency p50/p99 (append → durable),
//     batches and records per batch. A checkpoint thread answers the log's checkpoint requests.
//   - fio on the same target, before the pool is created: 4 KiB randwrite QD32 (io_uring,
//     direct) and 4 KiB sequential writes with --fdatasync=1 at 16 jobs (psync, direct): the
//     device's random-write ceiling and the "one flush per write" floor the log must beat.
//     Ratios are records/s over fio's write IOPS.
//   - replay: the log filled to --replay-bytes without a checkpoint, then `IntentLog.replay`
//     timed on the pool re-imported (O_DIRECT reads; target ≤ 2 s for 1 GiB).

import ArgumentParser
import Foundation
import StrataIO
import StrataLog
import StrataPool
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct LogBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "Intent log: group commit (records/s, latency, batch sizes) and replay of a full log, with fio anchors."
    )

    @OptionGroup var options: SingleDeviceOptions

    @Option(help: "Payload bytes per record (default 4096).")
    var recordBytes: Int = 4096

    @Option(help: "Log bytes to fill and replay (default 1G; --smoke 32M).")
    var replayBytes: String?


    func run() throws {
        defer { Cleanup.shared.runAll() }                   // e.g. resets zram0 when this run sized it
        let (sizeBytes, runSeconds, threadCounts) = try options.resolved(sizeDefault: 4 << 30, smokeSize: 256 << 20)
        let fillBytes = try replayBytes.map(parseSize) ?? (options.smoke ? 32 << 20 : 1 << 30)
        let scratch = try makeTempDirectory(base: "/tmp")
        defer { removeTree(scratch) }
        let targetDevice = try SingleDeviceTarget(spec: options.target, dir: options.dir, sizeBytes: sizeBytes, fileName: "log-target.img", scratch: scratch)
        defer { targetDevice.remove() }
        let path = targetDevice.path

        // fio anchors first (they overwrite the target).
        var anchors: [(String, Measurement?)] = []
        let fioSize = min(sizeBytes, 1 << 30)
        if (try? Fio.ensureInstalled(scratch: scratch)) != nil {
            anchors.append(("fio 4k randwrite QD32", try? runFioAnchor(path: path, scratch: scratch, seconds: runSeconds, arguments: [
                "--ioengine=io_uring", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=\(fioSize)", "--norandommap", "--randrepeat=0"])))
            anchors.append(("fio 4k seq write fdatasync=1 x16", try? runFioAnchor(path: path, scratch: scratch, seconds: runSeconds, arguments: [
                "--ioengine=psync", "--rw=write", "--bs=4k", "--fdatasync=1", "--numjobs=16", "--size=\(fioSize / 16)",
                "--offset_increment=\(fioSize / 16)", "--group_reporting"])))
        }

        let device = try options.openDevice(path, sizeBytes: sizeBytes)
        let pool = try Pool.create(name: "logbench", devices: [(storage: device, role: .data)], force: true)
        var settings = LogSettings()
        settings.logBytesMax = max(fillBytes + 3 * settings.segmentBytes, 256 << 20) / settings.segmentBytes * settings.segmentBytes
        let log = try IntentLog.open(pool: pool, from: .null, settings: settings)
        let checkpointer = Checkpointer(log: log)
        try checkpointer.checkpoint()
        log.setCheckpointRequestHandler { _ in checkpointer.request() }

        print("strata-perf log: \(options.target) target \(path), \(sizeBytes >> 20) MiB; records of \(recordBytes) bytes; \(runSeconds) s per run")
        for (name, measurement) in anchors {
            if let measurement {
                print("  \(name): \(fixed(measurement.iops, 0)) IOPS, \(fixed(measurement.mibPerSecond, 1)) MiB/s, lat p50 \(fixed(measurement.p50Microseconds, 0)) µs p99 \(fixed(measurement.p99Microseconds, 0)) µs")
            } else {
                print("  \(name): not measured")
            }
        }
        print("  threads  records/s  MiB/s  commit p50 µs  p99 µs  batches  records/batch  " + anchors.map { "vs \($0.0.split(separator: " ").dropFirst().prefix(3).joined(separator: " "))" }.joined(separator: "  "))
        for count in threadCounts {
            let result = try groupCommit(log: log, threadCount: count, seconds: runSeconds)
            let ratios = anchors.map { anchor in anchor.1.map { fixed(result.recordsPerSecond / $0.iops, 2) + "x" } ?? "-" }
            print("  " + [pad("\(count)", 7, left: true), pad(fixed(result.recordsPerSecond, 0), 9, left: true),
                          pad(fixed(result.mibPerSecond, 1), 6, left: true), pad(fixed(result.p50Microseconds, 0), 13, left: true),
                          pad(fixed(result.p99Microseconds, 0), 7, left: true), pad("\(result.batches)", 7, left: true),
                          pad(fixed(result.recordsPerBatch, 1), 13, left: true)].joined(separator: "  ")
                  + "  " + ratios.map { pad($0, 20, left: true) }.joined(separator: "  "))
            print("           batch size distribution (records: batches): " + result.distribution)
        }

        // Replay of a full log: fill without checkpoints, then time a replay on a fresh import.
        log.setCheckpointRequestHandler(nil)
        checkpointer.waitIdle()
        try checkpointer.checkpoint()
        let fillStart = monotonicNanoseconds()
        let filled = try fill(log: log, bytes: fillBytes)
        let fillSeconds = Double(monotonicNanoseconds() - fillStart) / 1e9
        try log.close()
        let root = pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        let replayPool = try Pool.importPool(devices: [device], readOnly: true)
        _ = replayPool
        let start = monotonicNanoseconds()
        var records = 0
        let summary = try IntentLog.replay(pool: pool, from: root) { _, _ in records += 1 }
        let replaySeconds = Double(monotonicNanoseconds() - start) / 1e9
        print("  replay: \(summary.recordCount) records, \(summary.bytesRead >> 20) MiB read in \(fixed(replaySeconds, 3)) s "
              + "(\(fixed(Double(summary.bytesRead) / replaySeconds / 1e9, 2)) GB/s; target ≤ 2 s per GiB); "
              + "filled \(filled >> 20) MiB of records in \(fixed(fillSeconds, 2)) s")
    }

    struct GroupCommitResult {
        var recordsPerSecond: Double
        var mibPerSecond: Double
        var p50Microseconds: Double
        var p99Microseconds: Double
        var batches: Int
        var recordsPerBatch: Double
        var distribution: String
    }

    func groupCommit(log: IntentLog, threadCount: Int, seconds: Double) throws -> GroupCommitResult {
        let before = log.statistics
        let histograms = (0..<threadCount).map { _ in LatencyHistogram() }
        let counts = Mutex<[Int]>([Int](repeating: 0, count: threadCount))
        let failure = Mutex<String?>(nil)
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        let payload = [UInt8](repeating: 0x5A, count: recordBytes)
        let group = DispatchGroup()
        nonisolated(unsafe) let unsafeHistograms = histograms
        let start = monotonicNanoseconds()
        for thread in 0..<threadCount {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                let histogram = unsafeHistograms[thread]
                var done = 0
                while monotonicNanoseconds() < deadline {
                    let begin = monotonicNanoseconds()
                    do {
                        try log.append(type: 1, transactionID: UInt64(thread), payload: payload)
                        try log.sync()
                    } catch {
                        failure.withLock { $0 = "\(error)" }
                        break
                    }
                    histogram.record(monotonicNanoseconds() - begin)
                    done += 1
                }
                counts.withLock { $0[thread] = done }
            }
        }
        group.wait()
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        if let failure = failure.withLock({ $0 }) { throw ValidationError("group commit failed: \(failure)") }
        let merged = LatencyHistogram()
        for histogram in histograms { merged.merge(histogram) }
        let total = counts.withLock { $0.reduce(0, +) }
        let after = log.statistics
        let batches = after.batches - before.batches
        var distribution: [String] = []
        for bucket in 0..<after.batchRecordCountHistogram.count {
            let count = after.batchRecordCountHistogram[bucket] - before.batchRecordCountHistogram[bucket]
            if count > 0 { distribution.append("\(1 << bucket)-\((2 << bucket) - 1): \(count)") }
        }
        return GroupCommitResult(recordsPerSecond: Double(total) / elapsed,
                                 mibPerSecond: Double(total * recordBytes) / elapsed / 1_048_576,
                                 p50Microseconds: merged.percentile(0.5) / 1000, p99Microseconds: merged.percentile(0.99) / 1000,
                                 batches: batches, recordsPerBatch: batches > 0 ? Double(after.records - before.records) / Double(batches) : 0,
                                 distribution: distribution.joined(separator: ", "))
    }

    /// Appends records from 4 threads (no waiting) until `bytes` of log are written; returns the bytes.
    func fill(log: IntentLog, bytes: UInt64) throws -> UInt64 {
        let perRecord = UInt64(32 + recordBytes)
        let target = LSN(bytes / perRecord)
        let first = log.appendedLSN
        let payload = [UInt8](repeating: 0xC3, count: recordBytes)
        let group = DispatchGroup()
        let failure = Mutex<String?>(nil)
        for _ in 0..<4 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                while log.appendedLSN - first < target {
                    do { try log.append(type: 2, transactionID: 0, payload: payload) } catch {
                        failure.withLock { $0 = "\(error)" }
                        return
                    }
                }
            }
        }
        group.wait()
        if let failure = failure.withLock({ $0 }) { throw ValidationError("filling the log failed: \(failure)") }
        try log.sync()
        return (log.appendedLSN - first) * perRecord
    }
}

/// The DMU's stand-in: one checkpoint at a time, on its own thread, on the log's request.
final class Checkpointer: Sendable {
    let log: IntentLog
    let busy = Mutex(false)

    init(log: IntentLog) { self.log = log }

    func request() {
        let start = busy.withLock { (busy: inout Bool) -> Bool in
            if busy { return false }
            busy = true
            return true
        }
        guard start else { return }
        Thread.detachNewThread { [self] in
            try? checkpoint()
            busy.withLock { $0 = false }
        }
    }

    /// Waits for a checkpoint started by `request` to finish.
    func waitIdle() {
        while busy.withLock({ $0 }) { usleep(1000) }
    }

    func checkpoint() throws {
        let root = try log.beginCheckpoint(through: log.durableLSN)
        var roots = log.pool.uberblock.roots
        roots[Uberblock.RootSlot.intentLog.rawValue] = root
        try log.pool.commitCheckpoint(roots: roots)
        log.checkpointCommitted()
    }
}
