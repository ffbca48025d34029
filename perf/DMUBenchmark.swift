// strata-perf dmu — the object store's durable write paths, anchored to fio in the same run.
//
//   strata-perf dmu [--target file|zram|zramN] [--dir PATH] [--size 32G] [--seconds 3] [--ramp 2] [--rounds 3]
//                   [--threads 1,16] [--depth 4] [--depth-low 3] [--workloads new1m,overwrite4k] [--replay-bytes 1G]
//                   [--placement none|split] [--smoke]
//
// What is measured (one pool on the target, one device holding every role, a fresh pool and
// store per workload; default settings except a 1 s checkpoint interval for new1m, so the space
// its destroys free comes back within a run):
//   - new1m: T threads each create an object and write 1 MiB to it in one transaction, durable
//     (commit callback), in a loop; every thread destroys its objects older than
//     its last 8 (separate transactions, not waited). MiB/s against fio 1 MiB sequential write
//     QD32 (io_uring, direct). The data goes to new extents; the record waits for the data's
//     flush (one per batch).
//   - overwrite4k: 100 objects of 4 MiB written and checkpointed first; T threads overwrite a
//     random 4 KiB block of a random object, durable, in a loop. IOPS against fio
//     4 KiB randwrite QD32. The data travels in the log: one sequential append per write.
//   - commit latency p50/p99 (stop → callback) of both at each thread count.
//   Each thread keeps up to --depth transactions stopped and not yet durable (default 4: 16
//   threads keep 64 in flight; --depth 1 waits for each before the next; a thread that had to
//   wait wakes when --depth-low are left, by default as soon as one is durable). fio runs at QD32 (the
//   issue's anchor) and, when threads × depth is not 32, at that depth too, so the ratio at the
//   same number of outstanding writes is printed beside it. A Lustre OST works this way: its
//   threads reply before the commit and learn of it from the callback (last_committed). A
//   transaction counts only once its commit callback fired, and a thread drains its own before
//   the clock stops. The OSD API is asynchronous in the same way: stop returns, the callback
//   tells the caller it is durable.
//   Rounds interleave the sides (fio 1M, fio 4k, then the store on a fresh pool), medians are
//   reported; fio overwrites the target, so each round creates a new pool. Every side runs
//   --ramp seconds (default 2) before its measured window of --seconds: fio with --ramp_time,
//   the store with transactions that complete before the window not counted (nor their CPU,
//   checkpoints or latency), so a round measures steady state rather than a fresh process
//   growing its page pool and log.
//   --placement split pins the log writer alone on the last allowed CPU and the completer, the
//   checkpoint thread and the workload threads on the others (ObjectStoreSettings.placeThreads);
//   fio stays unpinned. Default none.
//   - checkpoint: after overwrite4k, the checkpoint that takes its dirty pages home, timed:
//     bytes written per second, and the longest switch (transactions held off) of the run.
//   - replay: the log filled with 4 KiB overwrites to --replay-bytes without a checkpoint, then
//     `ObjectStore.open` on a read-only import of the same device (replays in memory), timed.
//     Target ≤ 2 s for 1 GiB.

import ArgumentParser
import Foundation
import StrataDMU
import StrataIO
import StrataLog
import StrataPool
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct DMUBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmu",
        abstract: "Object store: durable 1 MiB writes into new objects and 4 KiB overwrites (vs fio), commit latency, checkpoint rate, replay of a full log."
    )

    @OptionGroup var options: SingleDeviceOptions
    @Option(help: "Interleaved rounds (default 3; --smoke 1; 0: only the replay measurement).")
    var rounds: Int?
    @Option(help: "Transactions each thread keeps stopped and not yet durable (default 4: 16 threads keep 64 in flight, and fio runs at QD64 as well as QD32; 1: each thread waits for each).")
    var depth: Int = 4
    @Option(help: "A thread that waits for a free slot wakes when this many of its transactions are still in flight (fio's iodepth_low). Default --depth − 1: as soon as one is durable. Lower: fewer, larger wakeups.")
    var depthLow: Int?
    @Option(help: "Comma-separated workloads: new1m (1 MiB creates), overwrite4k (4 KiB overwrites) (default both).")
    var workloads: String = "new1m,overwrite4k"
    @Option(help: "Log bytes to fill and replay (default 1G; --smoke 16M; 0 skips).")
    var replayBytes: String?
    @Flag(help: "Skip fio (no ratios): for A/B runs of Strata alone and profiling.")
    var noFio = false
    @Flag(help: "Discard the space checkpoints free (ObjectStoreSettings.discardFreedSpace; off by default).")
    var discard = false
    @Option(help: "Seconds each side runs before its measured window (fio --ramp_time; Strata: transactions before it are not timed), so a round measures steady state, not the store's warm-up (its page pool and log segments grow in the first seconds of a process). Default 2; --smoke 0.")
    var ramp: Double?
    @Option(help: "Thread placement: none (the scheduler places every thread), or split (the log writer alone on the last allowed CPU; the completer, the checkpoint thread and the workload threads on the others: ObjectStoreSettings.placeThreads; needs 2 CPUs). Default none.")
    var placement: String = "none"
    @Option(name: .customLong("precondition"), help: "Bytes of incompressible data written at the start of the target before the first round, so both sides run on memory zram already holds (default on zram: 4G or half the target, whichever is smaller; 0 on files; 0 skips; never more than the target).")
    var preconditionSize: String?
    @Option(name: .customLong("log-bytes"), help: "The log's bound for the workloads (LogSettings.logBytesMax, a multiple of its 32 MiB segments; default the store's, 3G): 1G shows what the log's size does to overwrite4k.")
    var logBytesOption: String?
    /// `--log-bytes` (nil: the store's default; `run` refuses a value that does not parse).
    var logBytesMax: UInt64? { logBytesOption.flatMap { try? parseSize($0) } }

    struct Run {
        var perSecond: Double          // MiB/s for new1m, IOPS for overwrite4k
        var p50Microseconds: Double
        var p99Microseconds: Double
        /// overwrite4k: checkpoints during the run, and pages the checkpoints wrote home per
        /// overwrite (the second write of the deferred-write design; 0 if none ran).
        var checkpoints = 0
        var homeWritesPerOperation = 0.0
        /// Process CPU time (user + system, every thread: the store's and the kernel's work for
        /// it, zram's compression included) per operation. On a CPU-bound target this is what
        /// the rate depends on, and it varies less than the rate on a shared machine.
        var cpuMicrosecondsPerOperation = 0.0
        /// Log records per group-commit batch.
        var recordsPerBatch = 0.0
    }

    func run() throws {
        defer { Cleanup.shared.runAll() }
        let (sizeBytes, runSeconds, threadCounts) = try options.resolved(sizeDefault: 32 << 30, smokeSize: 1 << 30)
        let roundCount = rounds ?? (options.smoke ? 1 : 3)
        let rampSeconds = ramp ?? (options.smoke ? 0 : 2)
        guard rampSeconds >= 0 && rampSeconds <= 600 else { throw ValidationError("--ramp must be 0…600 seconds, not \(rampSeconds)") }
        let fillBytes = try replayBytes.map { $0 == "0" ? 0 : try parseSize($0) } ?? (options.smoke ? 16 << 20 : 1 << 30)
        let chosen = Set(workloads.split(separator: ",").map(String.init))
        guard !chosen.isEmpty, chosen.isSubset(of: ["new1m", "overwrite4k"]) else {
            throw ValidationError("--workloads takes new1m and/or overwrite4k, not \(workloads)")
        }
        guard placement == "none" || placement == "split" else { throw ValidationError("--placement takes none or split, not \(placement)") }
        if placement == "split" && ThreadSetup.allowedCPUs().count < 2 {
            throw ValidationError("--placement split needs at least 2 CPUs; this process may use \(ThreadSetup.allowedCPUs())")
        }
        if let depthLow, !(0..<depth).contains(depthLow) {
            throw ValidationError("--depth-low must be 0…\(depth - 1) (below --depth), not \(depthLow)")
        }
        if let logBytesOption {
            var log = LogSettings()
            log.logBytesMax = try parseSize(logBytesOption)
            let problems = log.validationProblems()
            guard problems.isEmpty else { throw ValidationError("--log-bytes \(logBytesOption): \(problems.joined(separator: "; "))") }
        }
        guard depth >= 1 && depth <= 1024 else { throw ValidationError("--depth must be 1…1024, not \(depth)") }
        let runsNew1m = chosen.contains("new1m"), runsOverwrite4k = chosen.contains("overwrite4k")
        let scratch = try makeTempDirectory(base: "/tmp")
        defer { removeTree(scratch) }
        let targetDevice = try SingleDeviceTarget(spec: options.target, dir: options.dir, sizeBytes: sizeBytes, fileName: "dmu-target.img", scratch: scratch)
        defer { targetDevice.remove() }
        let path = targetDevice.path
        let hasFio = !noFio && (try? Fio.ensureInstalled(scratch: scratch)) != nil
        let fioSize = min(sizeBytes / 2, 2 << 30)
        print("strata-perf dmu: \(options.target) target \(path), \(sizeBytes >> 20) MiB, \(roundCount) rounds of \(runSeconds) s after \(fixed(rampSeconds, 1)) s of ramp, \(depth) transaction(s) in flight per thread, log bound \(settings(.overwrite4k).log.logBytesMax >> 20) MiB")
        if let split = placementSplit {
            print("  placement: log writer on CPU \(split.writer.map(String.init).joined(separator: ",")); completer, checkpoint thread and workload threads on CPU \(split.others.map(String.init).joined(separator: ",")) (fio unpinned)")
        }
        let preconditionBytes = try preconditionSize.map { $0 == "0" ? 0 : try parseSize($0) }
            ?? (targetDevice.isFile ? 0 : min(4 << 30, sizeBytes / 2))
        if preconditionBytes > 0 { try writePrecondition(path: path, bytes: min(preconditionBytes, sizeBytes)) }

        let fioRamp = "--ramp_time=\(Int(rampSeconds * 1000))ms"
        var fio1m: [Double] = [], fio4k: [Double] = []
        // fio at Strata's own total depth (threads × --depth of the largest thread count), when
        // that is not 32: the same number of writes outstanding on both sides.
        let sameDepth = (threadCounts.max() ?? 1) * depth
        var fio4kSame: [Double] = [], fio1mSame: [Double] = []
        var new1m: [Int: [Run]] = [:], over4k: [Int: [Run]] = [:]
        var checkpointRates: [Double] = [], switchMaxMs: [Double] = [], quiesceMaxMs: [Double] = []
        for round in 0..<roundCount {
            if hasFio && runsNew1m {
                if let m = try? runFioAnchor(path: path, scratch: scratch, seconds: runSeconds, arguments: [fioRamp,
                    "--ioengine=io_uring", "--rw=write", "--bs=1m", "--iodepth=32", "--size=\(fioSize)"]) { fio1m.append(m.mibPerSecond) }
                if sameDepth != 32, let m = try? runFioAnchor(path: path, scratch: scratch, seconds: runSeconds, arguments: [fioRamp,
                    "--ioengine=io_uring", "--rw=write", "--bs=1m", "--iodepth=\(sameDepth)", "--size=\(fioSize)"]) { fio1mSame.append(m.mibPerSecond) }
            }
            if hasFio && runsOverwrite4k {
                if let m = try? runFioAnchor(path: path, scratch: scratch, seconds: runSeconds, arguments: [fioRamp,
                    "--ioengine=io_uring", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=\(fioSize)", "--norandommap", "--randrepeat=0"]) {
                    fio4k.append(m.iops)
                }
                if sameDepth != 32, let m = try? runFioAnchor(path: path, scratch: scratch, seconds: runSeconds, arguments: [fioRamp,
                    "--ioengine=io_uring", "--rw=randwrite", "--bs=4k", "--iodepth=\(sameDepth)", "--size=\(fioSize)", "--norandommap", "--randrepeat=0"]) {
                    fio4kSame.append(m.iops)
                }
            }
            // Each workload on a fresh pool and store: nothing carries over from one to the other.
            var measured: ObjectStore? = nil
            if runsNew1m {
                let (store, _) = try openStore(path: path, sizeBytes: sizeBytes, purpose: .new1m)
                for count in threadCounts {
                    do {
                        new1m[count, default: []].append(try newObjects(store, threads: count, seconds: runSeconds, ramp: rampSeconds))
                    } catch {
                        let space = store.pool.allocator.statistics().devices[0]
                        progress("strata-perf dmu: new1m failed with \(space.usedBytes >> 20) MiB used, \(space.deferredBytes >> 20) MiB deferred, \(space.reservedBytes >> 20) MiB reserved, \(space.freeBytes >> 20) MiB free; \(store.statistics); log \(store.log!.usage)")
                        throw error
                    }
                }
                if runsOverwrite4k {
                    try store.close()
                    try store.pool.export()
                } else {
                    measured = store
                }
            }
            if runsOverwrite4k {
                let (store, _) = try openStore(path: path, sizeBytes: sizeBytes, purpose: .overwrite4k)
                let objects = try preallocate(store, count: 100, bytes: 4 << 20)
                for count in threadCounts {
                    over4k[count, default: []].append(try overwrites(store, objects: objects, threads: count, seconds: runSeconds, ramp: rampSeconds))
                }
                measured = store
            }
            guard let store = measured else { preconditionFailure("no workload ran") }
            let before = store.statistics
            let start = monotonicNanoseconds()
            try store.checkpoint()
            let elapsed = Double(monotonicNanoseconds() - start) / 1e9
            let after = store.statistics
            checkpointRates.append(Double(after.checkpointBytesWritten - before.checkpointBytesWritten) / elapsed / 1_048_576)
            switchMaxMs.append(Double(after.switchNsMax) / 1e6)
            quiesceMaxMs.append(Double(after.quiesceNsMax) / 1e6)
            try store.close()
            try store.pool.export()
            progress("  round \(round + 1)/\(roundCount) done")
        }

        if roundCount == 0 {                    // --rounds 0: the replay measurement alone
            if fillBytes > 0 { try replay(path: path, sizeBytes: sizeBytes, fillBytes: fillBytes) }
            return
        }
        let fio1mMedian = fio1m.isEmpty ? nil : median(fio1m)
        let fio4kMedian = fio4k.isEmpty ? nil : median(fio4k)
        let fio4kSameMedian = fio4kSame.isEmpty ? nil : median(fio4kSame)
        let fio1mSameMedian = fio1mSame.isEmpty ? nil : median(fio1mSame)
        print("  fio 1 MiB write QD32: \(fio1mMedian.map { fixed($0, 0) + " MiB/s" } ?? "not measured");  fio 4 KiB randwrite QD32: \(fio4kMedian.map { fixed($0, 0) + " IOPS" } ?? "not measured")"
              + (fio4kSameMedian.map { ";  4 KiB QD\(sameDepth) (Strata's \(sameDepth) in flight): " + fixed($0, 0) + " IOPS" } ?? "")
              + (fio1mSameMedian.map { ";  1 MiB QD\(sameDepth): " + fixed($0, 0) + " MiB/s" } ?? ""))
        print("  workload      threads   median          commit p50 µs  p99 µs   vs fio")
        for count in threadCounts where runsNew1m {
            let runs = new1m[count]!
            let value = median(runs.map(\.perSecond))
            print("  new1m         " + pad("\(count)", 7, left: true) + "   " + pad(fixed(value, 0) + " MiB/s", 13, left: true)
                  + "  " + pad(fixed(median(runs.map(\.p50Microseconds)), 0), 13, left: true) + "  " + pad(fixed(median(runs.map(\.p99Microseconds)), 0), 6, left: true)
                  + "   " + (fio1mMedian.map { fixed(value / $0, 2) + "x" } ?? "-")
                  + (fio1mSameMedian.map { "  (\(fixed(value / $0, 2))x fio QD\(sameDepth))" } ?? ""))
        }
        for count in threadCounts where runsOverwrite4k {
            let runs = over4k[count]!
            let value = median(runs.map(\.perSecond))
            print("  overwrite4k   " + pad("\(count)", 7, left: true) + "   " + pad(fixed(value, 0) + " IOPS", 13, left: true)
                  + "  " + pad(fixed(median(runs.map(\.p50Microseconds)), 0), 13, left: true) + "  " + pad(fixed(median(runs.map(\.p99Microseconds)), 0), 6, left: true)
                  + "   " + (fio4kMedian.map { fixed(value / $0, 2) + "x" } ?? "-")
                  + (fio4kSameMedian.map { "  (\(fixed(value / $0, 2))x fio QD\(sameDepth))" } ?? "")
                  + ";  \(fixed(median(runs.map { Double($0.checkpoints) }), 0)) checkpoints, \(fixed(median(runs.map(\.homeWritesPerOperation)), 2)) pages written home per overwrite, \(fixed(median(runs.map(\.cpuMicrosecondsPerOperation)), 1)) CPU µs per overwrite, \(fixed(median(runs.map(\.recordsPerBatch)), 1)) records per log batch")
        }
        print("  checkpoint after \(runsOverwrite4k ? "overwrite4k" : "new1m"): \(fixed(median(checkpointRates), 0)) MiB/s written; longest switch \(fixed(switchMaxMs.max() ?? 0, 2)) ms (of it, waiting for transactions in flight: \(fixed(quiesceMaxMs.max() ?? 0, 2)) ms at most)")

        if fillBytes > 0 { try replay(path: path, sizeBytes: sizeBytes, fillBytes: fillBytes) }
    }

    /// Writes `bytes` of incompressible data from offset 0 in 1 MiB writes, then flushes.
    ///
    /// Why: on this VM the first touch of guest memory is slow (the host maps the page on
    /// demand). zram allocates memory for every sector written for the first time, so the first
    /// pass over a region costs far more than later ones: fio 4 KiB randwrite gave 61–86k IOPS
    /// on never-written sectors against 120–144k on rewritten ones, and in a cold 30 s run of
    /// overwrite4k, zs_malloc on the checkpoint thread took 10–30 % of both CPUs until zram's
    /// memory stopped growing (~12 s, 3.3 GB), then vanished from the profile. Strata's footprint
    /// (objects, a 1 GiB log, checkpoint copies) is larger than fio's 2 GiB region, so a short
    /// cold run mostly measured the VM's page faults, against Strata. Writing the region once
    /// first (SNIA-style preconditioning) puts both sides on memory zram already holds: a later
    /// write frees its sector's old copy and allocates a page the guest has used before.
    func writePrecondition(path: String, bytes: UInt64) throws {
        let chunk = 1 << 20
        let device = try BlockDevice.open(path)       // closed when released
        let buffer = allocateAlignedBuffer(byteCount: chunk)
        defer { buffer.deallocate() }
        fillRandom(buffer)
        let start = monotonicNanoseconds()
        var offset: UInt64 = 0
        while offset < bytes {
            let length = Int(min(UInt64(chunk), bytes - offset)) / 4096 * 4096
            guard length > 0 else { break }
            try device.write(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), at: offset)
            offset += UInt64(length)
        }
        try device.flush()
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        print("  preconditioned: \(offset >> 20) MiB of incompressible data written at the start of the target in \(fixed(seconds, 1)) s (--precondition 0 skips)")
    }

    /// User + system CPU time of the whole process (every thread).
    func processCPUNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// What a store is opened for (its settings differ only where the workload needs it).
    enum Purpose { case new1m, overwrite4k, replay }

    /// Default settings, except: new1m checkpoints every second so the space its destroys free
    /// comes back within a run (frees return two checkpoints later); replay never checkpoints
    /// while the log fills.
    func settings(_ purpose: Purpose, fillBytes: UInt64 = 0, sizeBytes: UInt64 = 0) -> ObjectStoreSettings {
        var settings = ObjectStoreSettings()
        switch purpose {
        case .new1m:
            settings.checkpointIntervalNs = 1_000_000_000
        case .overwrite4k:
            if let logBytes = logBytesMax { settings.log.logBytesMax = logBytes }
        case .replay:
            // No checkpoint while the log fills: no background thread, and bounds (dirty pages,
            // the reserve behind them, the log) above what the fill reaches.
            settings.backgroundCheckpoints = false
            settings.log.logBytesMax = (fillBytes * 2 + (64 << 20)) / settings.log.segmentBytes * settings.log.segmentBytes
            settings.dirtyBytesMax = 1 << 30
            settings.checkpointReserveBytes = min(sizeBytes / 3, fillBytes * 3 / 2 + (128 << 20)) / (1 << 20) * (1 << 20)
        }
        settings.discardFreedSpace = discard
        if let split = placementSplit { settings.placeThreads(writerCPUs: split.writer, otherCPUs: split.others) }
        return settings
    }

    /// `--placement split`: the last allowed CPU for the log writer, the others for every other
    /// thread of the store and of the workload; nil for `none`.
    var placementSplit: (writer: [Int], others: [Int])? {
        guard placement == "split" else { return nil }
        let cpus = ThreadSetup.allowedCPUs()
        guard cpus.count >= 2 else { return nil }
        return ([cpus.last!], Array(cpus.dropLast()))
    }

    func openStore(path: String, sizeBytes: UInt64, purpose: Purpose, fillBytes: UInt64 = 0) throws -> (ObjectStore, BlockDevice) {
        let opened = try options.openDevice(path, sizeBytes: sizeBytes)
        let pool = try Pool.create(name: "dmubench", devices: [(storage: opened, role: .data)], force: true)
        return (try ObjectStore.open(pool: pool, settings: settings(purpose, fillBytes: fillBytes, sizeBytes: sizeBytes)), opened)
    }

    /// A latency histogram that commit callbacks (on the log's writer thread) and its owner share.
    final class LockedHistogram: @unchecked Sendable {
        private let lock = Mutex(())
        private let histogram = LatencyHistogram()
        func record(_ nanoseconds: UInt64) { lock.withLock { _ in histogram.record(nanoseconds) } }
        func merge(into other: LatencyHistogram) { lock.withLock { _ in other.merge(histogram) } }
    }

    /// One workload thread's transactions in flight: `begin` waits while `depth` are, and once
    /// it waits, is woken only when no more than `low` are (fio's iodepth_low; `depth − 1`: at
    /// the first that becomes durable, as a counting semaphore would).
    final class Slots: @unchecked Sendable {
        private let monitor = Monitor()
        private let depth: Int, low: Int
        private var inFlight = 0
        private var waiting = false

        init(depth: Int, low: Int) {
            precondition(depth >= 1 && low >= 0 && low < depth)
            self.depth = depth
            self.low = low
        }

        func begin() {
            monitor.lock()
            while inFlight >= depth {
                waiting = true
                monitor.wait()
            }
            inFlight += 1
            monitor.unlock()
        }

        func finish() {
            monitor.lock()
            precondition(inFlight > 0, "a transaction finished that never began")
            inFlight -= 1
            let wakes = waiting && inFlight <= low      // drain waits for 0 ≤ low: woken on each
            if wakes { waiting = false }
            monitor.unlock()
            if wakes { monitor.signal() }
        }

        /// Waits until none is in flight, or until `deadlineNs` (monotonic); the number still in
        /// flight (0: drained). A store that failed never fires the callbacks of transactions
        /// that were not durable yet, so the wait is bounded.
        func drain(untilNs deadlineNs: UInt64) -> Int {
            monitor.lock()
            defer { monitor.unlock() }
            while inFlight > 0 {
                waiting = true
                if !monitor.wait(untilNs: deadlineNs) && inFlight > 0 { return inFlight }
            }
            return 0
        }
    }

    /// What a loop body hands back: how to stop its transaction so that the loop learns when it
    /// is durable. `stop(transaction)` stops it with a callback that counts it and records its
    /// stop → durable latency, once.
    struct Completion {
        let stop: (Transaction) throws -> Void
    }

    /// Runs `body(thread, completion)` on `count` threads for `ramp` + `seconds`, each thread
    /// keeping at most `depth` transactions stopped and not yet durable (depth 1: it waits for
    /// each). The measured window starts after `ramp` (when `atWindowStart` runs, on the calling
    /// thread, to snapshot counters): a transaction counts when its commit callback fires inside
    /// the window, and its latency when it also stopped inside it; the threads drain their own
    /// before they end, so the window covers every counted transaction.
    func loop(threads count: Int, depth: Int, seconds: Double, ramp: Double = 0, atWindowStart: () -> Void = {},
              _ body: @escaping @Sendable (Int, Completion) throws -> Void) throws -> (done: Int, elapsed: Double, histogram: LatencyHistogram) {
        precondition(depth >= 1 && ramp >= 0)
        let histograms = (0..<count).map { _ in LockedHistogram() }
        let shared = histograms
        nonisolated(unsafe) let doneRef = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: 1)
        doneRef.initialize(to: Atomic<Int>(0))
        defer { doneRef.deinitialize(count: 1); doneRef.deallocate() }
        let failure = Mutex<String?>(nil)
        let start = monotonicNanoseconds()
        let windowStart = start + UInt64(ramp * 1e9)
        let deadline = windowStart + UInt64(seconds * 1e9)
        let group = DispatchGroup()
        for thread in 0..<count {
            group.enter()
            let completionCPUs = placementSplit?.others ?? []
            Thread.detachNewThread {
                defer { group.leave() }
                ThreadSetup.pinOrReport("workload thread \(thread)", to: completionCPUs, setting: "--placement")
                let slots = Slots(depth: depth, low: depthLow ?? depth - 1)
                // Whether this body's counted transaction stopped: from then on its slot is the
                // callback's to free, even if the body fails afterwards (new1m's destroy).
                nonisolated(unsafe) var handedOver = false
                let completion = Completion { transaction in
                    let stopped = monotonicNanoseconds()
                    try transaction.stop { _ in
                        if stopped >= windowStart { shared[thread].record(monotonicNanoseconds() - stopped) }
                        doneRef.pointee.wrappingAdd(1, ordering: .relaxed)
                        slots.finish()
                    }
                    handedOver = true
                }
                while monotonicNanoseconds() < deadline {
                    slots.begin()
                    handedOver = false
                    do {
                        try body(thread, completion)
                    } catch {
                        if !handedOver { slots.finish() }
                        failure.withLock { $0 = "\(error)" }
                        break
                    }
                }
                // Every stopped transaction durable; bounded, since a failed store drops the
                // callbacks of what was not durable yet.
                let left = slots.drain(untilNs: monotonicNanoseconds() + 60_000_000_000)
                if left > 0 {
                    failure.withLock { $0 = $0 ?? "\(left) stopped transaction(s) of thread \(thread) not durable after 60 s" }
                }
            }
        }
        var doneBefore = 0
        if ramp > 0 {
            let now = monotonicNanoseconds()
            if windowStart > now { usleep(useconds_t((windowStart - now) / 1000)) }
            doneBefore = doneRef.pointee.load(ordering: .relaxed)
        }
        atWindowStart()
        group.wait()
        let elapsed = Double(monotonicNanoseconds() - max(windowStart, start)) / 1e9
        if let failure = failure.withLock({ $0 }) { throw ValidationError("workload failed: \(failure)") }
        let merged = LatencyHistogram()
        for histogram in histograms { histogram.merge(into: merged) }
        return (doneRef.pointee.load(ordering: .relaxed) - doneBefore, elapsed, merged)
    }

    func newObjects(_ store: ObjectStore, threads count: Int, seconds: Double, ramp: Double) throws -> Run {
        let data = allocateAlignedBuffer(byteCount: 1 << 20)
        defer { data.deallocate() }
        fillRandom(data)                        // incompressible, as fio's buffers (zram compresses)
        nonisolated(unsafe) let buffer = UnsafeRawBufferPointer(data)
        let owned = Mutex<[[UInt64]]>(Array(repeating: [], count: count))
        let result = try loop(threads: count, depth: depth, seconds: seconds, ramp: ramp) { thread, completion in
            let transaction = store.transaction()
            let object = transaction.declareCreate()
            transaction.declareWrite(object, offset: 0, length: buffer.count)
            try transaction.start()
            try transaction.create(object, type: .regular)
            try transaction.write(object, at: 0, buffer)
            try completion.stop(transaction)
            let old = owned.withLock { lists -> UInt64? in
                lists[thread].append(object)
                return lists[thread].count > 8 ? lists[thread].removeFirst() : nil
            }
            if let old {
                let destroy = store.transaction()
                destroy.declareDestroy(old)
                try destroy.start()
                try destroy.destroy(old)
                try destroy.stop()
            }
        }
        // Leave the store small for the next workload.
        for list in owned.withLock({ $0 }) {
            for object in list {
                let destroy = store.transaction()
                destroy.declareDestroy(object)
                try destroy.start()
                try destroy.destroy(object)
                try destroy.stop()
            }
        }
        return Run(perSecond: Double(result.done) / result.elapsed, p50Microseconds: result.histogram.percentile(0.5) / 1000,
                   p99Microseconds: result.histogram.percentile(0.99) / 1000)
    }

    func preallocate(_ store: ObjectStore, count: Int, bytes: Int) throws -> [UInt64] {
        let data = allocateAlignedBuffer(byteCount: bytes)
        defer { data.deallocate() }
        fillRandom(data)
        var objects: [UInt64] = []
        for _ in 0..<count {
            let transaction = store.transaction()
            let object = transaction.declareCreate()
            transaction.declareWrite(object, offset: 0, length: bytes)
            try transaction.start()
            try transaction.create(object, type: .regular)
            try transaction.write(object, at: 0, UnsafeRawBufferPointer(data))
            try transaction.stop()
            objects.append(object)
        }
        try store.sync()
        try store.checkpoint()
        return objects
    }

    func overwrites(_ store: ObjectStore, objects: [UInt64], threads count: Int, seconds: Double, ramp: Double) throws -> Run {
        let blocks = UInt64(4 << 20) / 4096
        let random = allocateAlignedBuffer(byteCount: 1 << 20)
        defer { random.deallocate() }
        fillRandom(random)
        nonisolated(unsafe) let randomBytes = UnsafeRawBufferPointer(random)
        // One splitmix64 per thread (SystemRandomNumberGenerator is a getrandom syscall per call:
        // three per transaction would be the benchmark's cost, not the store's).
        nonisolated(unsafe) let generators = UnsafeMutablePointer<SplitMix>.allocate(capacity: count)
        for thread in 0..<count { (generators + thread).initialize(to: SplitMix(state: UInt64(thread + 1) &* 0x2545_F491_4F6C_DD1D)) }
        defer { generators.deallocate() }
        let chunks = UInt64(randomBytes.count / 4096)
        var before = store.statistics
        var cpuBefore = processCPUNanoseconds()
        var logBefore = store.log!.statistics
        let result = try loop(threads: count, depth: depth, seconds: seconds, ramp: ramp, atWindowStart: {
            before = store.statistics
            cpuBefore = processCPUNanoseconds()
            logBefore = store.log!.statistics
        }) { thread, completion in
            let start = Int(generators[thread].next() % chunks) * 4096
            let block = UnsafeRawBufferPointer(rebasing: randomBytes[start ..< start + 4096])
            let object = objects[Int(generators[thread].next() % UInt64(objects.count))]
            let offset = (generators[thread].next() % blocks) * 4096
            let transaction = store.transaction()
            transaction.declareWrite(object, offset: offset, length: 4096)
            try transaction.start()
            try transaction.write(object, at: offset, block)
            try completion.stop(transaction)
        }
        let after = store.statistics
        let cpu = Double(processCPUNanoseconds() - cpuBefore) / 1000 / Double(max(1, result.done))
        let logAfter = store.log!.statistics
        if discard {
            let discards = store.pool.discardStatistics
            print("  discards so far (\(count) threads): \(discards.ranges) ranges, \(discards.bytes >> 20) MiB, \(discards.skippedRanges) ranges skipped, \(discards.failures) failures")
        }
        return Run(perSecond: Double(result.done) / result.elapsed, p50Microseconds: result.histogram.percentile(0.5) / 1000,
                   p99Microseconds: result.histogram.percentile(0.99) / 1000, checkpoints: after.checkpoints - before.checkpoints,
                   homeWritesPerOperation: Double(after.pageBytesWrittenBack - before.pageBytesWrittenBack) / 4096 / Double(max(1, result.done)),
                   cpuMicrosecondsPerOperation: cpu,
                   recordsPerBatch: Double(logAfter.records - logBefore.records) / Double(max(1, logAfter.batches - logBefore.batches)))
    }

    /// Fills the log with 4 KiB overwrites (no checkpoint), then times a replaying open of a
    /// read-only import of the same device.
    func replay(path: String, sizeBytes: UInt64, fillBytes: UInt64) throws {
        let (store, device) = try openStore(path: path, sizeBytes: sizeBytes, purpose: .replay, fillBytes: fillBytes)
        let objects = try preallocate(store, count: 100, bytes: 4 << 20)
        let covered = store.log!.usage.appendedLSN
        let perRecord = UInt64(LogBlock.recordBytes(payloadBytes: 20 + 4096))
        let target = fillBytes / perRecord
        let fillStart = monotonicNanoseconds()
        let failure = Mutex<String?>(nil)
        let group = DispatchGroup()
        for thread in 0..<4 {
            group.enter()
            let completionCPUs = placementSplit?.others ?? []
            Thread.detachNewThread {
                defer { group.leave() }
                ThreadSetup.pinOrReport("workload thread \(thread)", to: completionCPUs, setting: "--placement")
                var block = [UInt8](repeating: UInt8(thread), count: 4096)
                block.withUnsafeMutableBytes { fillRandom($0) }
                while store.log!.appendedLSN - covered < target {
                    do {
                        let object = objects[Int.random(in: 0..<objects.count)]
                        let offset = UInt64.random(in: 0..<1024) * 4096
                        let transaction = store.transaction()
                        transaction.declareWrite(object, offset: offset, length: 4096)
                        try transaction.start()
                        try transaction.write(object, at: offset, block)
                        try transaction.stop()
                    } catch {
                        failure.withLock { $0 = "\(error)" }
                        return
                    }
                }
            }
        }
        group.wait()
        if let failure = failure.withLock({ $0 }) { throw ValidationError("filling the log failed: \(failure)") }
        try store.sync()
        let fillSeconds = Double(monotonicNanoseconds() - fillStart) / 1e9
        let logBytes = (store.log!.appendedLSN - covered) * perRecord
        // The "crash": a read-only import of the device as it is, replaying in memory.
        let readOnly = try Pool.importPool(devices: [device], readOnly: true)
        let start = monotonicNanoseconds()
        let recovered = try ObjectStore.open(pool: readOnly, settings: settings(.replay, fillBytes: fillBytes, sizeBytes: sizeBytes))
        let replaySeconds = Double(monotonicNanoseconds() - start) / 1e9
        let records = recovered.statistics.replayedRecords
        print("  replay: \(records) records, \(logBytes >> 20) MiB of log in \(fixed(replaySeconds, 3)) s "
              + "(\(fixed(Double(logBytes) / replaySeconds / 1_048_576, 0)) MiB/s; target ≤ 2 s per GiB); filled in \(fixed(fillSeconds, 1)) s")
        try store.close()
    }
}

/// Random bytes (what fio writes: zram compresses anything else away). Cold path: once per buffer.
func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) {
    var generator = SystemRandomNumberGenerator()
    var offset = 0
    while offset + 8 <= buffer.count {
        buffer.storeBytes(of: generator.next() as UInt64, toByteOffset: offset, as: UInt64.self)
        offset += 8
    }
}
