// strata-perf — measures the Strata I/O engine against fio on the same target, in one run.
//
//   strata-perf io [--engine io_uring|libaio] [--target file|loop|zram|/dev/XYZ --wipe]
//                  [--workloads a,b] [--runtime S] [--size 1G] [--repeats N] [--json PATH]
//                  [--quick | --smoke]
//
// See docs/perf.md for what is measured and how to read the table.

import ArgumentParser
import Foundation
import StrataIO

#if canImport(Glibc)
import Glibc
#endif

struct StrataPerf: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata-perf",
        abstract: "Benchmarks for the Strata storage engine, anchored to fio on the same target.",
        subcommands: [IOBenchmark.self, AllocatorBenchmark.self, PoolImportBenchmark.self, RecordingOverheadBenchmark.self, IndexBenchmark.self, DnodeCacheBenchmark.self, LogBenchmark.self, DMUBenchmark.self]
    )
}

struct IOBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "io",
        abstract: "fio and the StrataIO engine, interleaved, on the same target with the same parameters.",
        discussion: """
        Workloads: seqwrite (1M seq write QD32), seqread (1M seq read QD32), randwrite (4k QD32), \
        randread (4k QD32), randwrite-qd1 (4k QD1), randwrite-16t (16 threads x QD2, one engine per \
        thread, against fio --numjobs=16 --iodepth=2). Each workload runs fio, strata, fio, strata, ... \
        --repeats times; the table shows medians and the ratio strata/fio.
        Targets are overwritten. A block device target needs --wipe and must not be mounted or held.
        """
    )

    @Option(help: "I/O engine for both sides: io_uring or libaio.")
    var engine: String = "io_uring"

    @Option(help: "file (temp file, default), loop (loop device over a sparse file), zram (/dev/zram0), or a block device path /dev/XYZ (needs --wipe).")
    var target: String = "file"

    @Flag(help: "Allow overwriting the named block device given with --target /dev/XYZ.")
    var wipe = false

    @Option(help: "Comma-separated workloads (default: all).")
    var workloads: String?

    @Option(help: "Seconds per measurement (default 3; --quick 1; --smoke 0.2).")
    var runtime: Double?

    @Option(help: "Target size: bytes or 256M, 1G, 1GiB (default 1G; --quick 256M; --smoke 64M).")
    var size: String?

    @Option(help: "Measurements per side per workload (default 3; --quick/--smoke 1).")
    var repeats: Int?

    @Option(help: "Write every repeat and the medians as JSON to this path.")
    var json: String?

    @Option(help: "Directory for the file target's temp dir (default $TMPDIR or /tmp).")
    var dir: String?

    @Option(help: "fio latency compared with Strata's submit→reap: lat (slat+clat, same span; default) or clat (after submission only).")
    var fioLatency: String = "lat"

    @Flag(help: "Give fio --iodepth_batch_submit=8 --iodepth_batch_complete_max=32 on the 4 KiB QD32 workloads.")
    var fioBatch = false

    @Option(help: "How the Strata engine pushes requests to the kernel: each (submitBatch 1, the engine default, like fio's iodepth_batch_submit=1) or batch (submitBatch = queue depth: the next reap sends every queued request in one system call).")
    var strataSubmit: String = "each"

    @Flag(help: "Short run: runtime 1 s, 1 repeat, size 256 MiB.")
    var quick = false

    @Flag(help: "Tiny run for tests: runtime 0.2 s, 1 repeat, size 64 MiB.")
    var smoke = false

    func validate() throws {
        guard IOEngineKind(rawValue: engine) != nil else {
            throw ValidationError("--engine must be io_uring or libaio (got '\(engine)')")
        }
        if let runtime, !(runtime > 0 && runtime <= 3600) { throw ValidationError("--runtime must be in (0, 3600] seconds") }
        if let repeats, !(1...100).contains(repeats) { throw ValidationError("--repeats must be in 1...100") }
        if FioLatency(rawValue: fioLatency) == nil { throw ValidationError("--fio-latency must be lat or clat") }
        guard strataSubmit == "batch" || strataSubmit == "each" else {
            throw ValidationError("--strata-submit must be batch or each")
        }
        if quick && smoke { throw ValidationError("--quick and --smoke are exclusive") }
    }

    func run() throws {
        let kind = IOEngineKind(rawValue: engine)!
        let runtimeSeconds = runtime ?? (smoke ? 0.2 : quick ? 1 : 3)
        let repeatCount = repeats ?? (smoke || quick ? 1 : 3)
        let sizeBytes = try size.map(parseSize) ?? (smoke ? 64 << 20 : quick ? 256 << 20 : 1 << 30)
        guard sizeBytes >= 1 << 20, sizeBytes % (1 << 20) == 0 else {
            throw PerfError.usage("--size must be a multiple of 1 MiB, at least 1 MiB (got \(sizeBytes) bytes)")
        }
        let chosen = try workloads.map(Workload.named) ?? Workload.all

        Cleanup.shared.installSignalHandlers()
        defer { Cleanup.shared.runAll() }
        let tmp = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        let scratch = try makeTempDirectory(base: tmp)
        Cleanup.shared.add("remove \(scratch)") { removeTree(scratch) }

        let fioVersion = try Fio.ensureInstalled(scratch: scratch)
        let target = try prepareTarget(self.target, wipe: wipe, sizeBytes: sizeBytes, directory: dir ?? scratch,
                                       scratch: scratch)
        for note in target.notes { progress("strata-perf: note: \(note)") }

        try Benchmark(kind: kind, target: target, workloads: chosen, runtimeSeconds: runtimeSeconds,
                      repeats: repeatCount, fioVersion: fioVersion, fioLatency: FioLatency(rawValue: fioLatency)!,
                      fioBatch: fioBatch, strataSubmitEach: strataSubmit == "each", scratch: scratch, jsonPath: json).run()
    }
}

/// One run: layout pass, then every workload's interleaved repeats, then the table.
struct Benchmark {
    let kind: IOEngineKind
    let target: Target
    let workloads: [Workload]
    let runtimeSeconds: Double
    let repeats: Int
    let fioVersion: String
    let fioLatency: FioLatency
    let fioBatch: Bool
    let strataSubmitEach: Bool
    let scratch: String
    let jsonPath: String?

    func run() throws {
        // The Strata side's handle on the target, kept for the whole run (released before cleanup).
        let device: BlockDevice
        do { device = try BlockDevice.open(target.path) } catch { throw PerfError.target("\(error)") }
        guard device.sizeBytes >= target.sizeBytes else {
            throw PerfError.target("\(target.path) has \(device.sizeBytes) bytes, less than the \(target.sizeBytes) asked for")
        }
        let fio = Fio(engine: kind.rawValue, target: target.path, sizeBytes: target.sizeBytes, scratch: scratch,
                      latency: fioLatency, batching: fioBatch)
        let histogram = LatencyHistogram()

        // Lay the target out once: one sequential 1 MiB write pass over the whole region, so reads
        // read written blocks and writes do not allocate (file, loop) or compress zeroes (zram).
        progress("strata-perf: laying out \(target.path): sequential 1 MiB writes over \(formatBytes(target.sizeBytes)) with the \(kind.rawValue) engine")
        let layoutParameters = LoopParameters(operation: .write, pattern: .sequential, blockSize: 1 << 20, queueDepth: 32,
                                              regionBytes: target.sizeBytes,
                                              requestLimit: target.sizeBytes >> 20, seed: 0x5EED)
        let layout = try StrataRunner.run(device: device, kind: kind, parameters: layoutParameters, histogram: histogram)
        guard layout.bytes == target.sizeBytes else {
            throw PerfError.engine("layout pass wrote \(layout.bytes) bytes, expected \(target.sizeBytes)")
        }
        try device.flush()
        let layoutMeasurement = layout.measurement(histogram)
        progress("strata-perf: layout done: \(describe(layoutMeasurement))")

        let date = ISO8601DateFormatter().string(from: Date())
        let kernel = kernelRelease()
        let registered: Bool? = kind == .ioUring ? layout.registeredBuffers : nil
        let registeredText = registered.map { $0 ? "yes" : "no (kernel refused registration; see log)" } ?? "n/a (libaio)"
        let fioEngine = kind == .ioUring ? "io_uring --fixedbufs --registerfiles" : "libaio"
        print("strata-perf io | target: \(target.kind.rawValue) \(target.path) (\(formatBytes(target.sizeBytes))) | engine: \(kind.rawValue) (fio --ioengine=\(fioEngine)) | kernel \(kernel) | io_uring registered buffers: \(registeredText) | \(fioVersion) | \(date)")
        print("runtime \(runtimeSeconds) s per measurement, \(repeats) repeat(s) per side, medians shown; O_DIRECT; \(ProcessInfo.processInfo.activeProcessorCount) CPUs; strata submit: \(strataSubmitEach ? "each request" : "batched per reap")\(fioBatch ? "; fio batching on 4k QD32" : "")")
        fflush(nil)

        var report = RunReport(date: date, kernel: kernel, cpus: ProcessInfo.processInfo.activeProcessorCount,
                               engine: kind.rawValue, fioVersion: fioVersion, registeredBuffers: registered,
                               target: .init(kind: target.kind.rawValue, path: target.path, sizeBytes: target.sizeBytes,
                                             notes: target.notes),
                               runtimeSeconds: runtimeSeconds, repeats: repeats, fioLatency: fioLatency,
                               strataSubmit: strataSubmitEach ? "each" : "batch",
                               layout: layoutMeasurement)

        let runtimeNanoseconds = UInt64(runtimeSeconds * 1e9)
        for workload in workloads {
            var entry = WorkloadReport(name: workload.name, rw: workload.fioRW, blockSize: workload.blockSize,
                                       queueDepth: workload.queueDepth, threads: workload.threads,
                                       totalQueueDepth: workload.totalQueueDepth,
                                       fioCommand: ["fio"] + fio.arguments(for: workload, runtimeSeconds: runtimeSeconds))
            var engineTotals = LoopResult()
            var allRegistered = true
            for round in 1...repeats {
                let label = "\(workload.name) \(round)/\(repeats)"
                let fioResult = try fio.run(workload, runtimeSeconds: runtimeSeconds)
                entry.fio.repeats.append(fioResult)
                progress("[fio    \(label)] \(describe(fioResult))")

                histogram.reset()
                var parameters = LoopParameters(operation: workload.operation, pattern: workload.pattern,
                                                blockSize: workload.blockSize, queueDepth: workload.queueDepth,
                                                regionBytes: target.sizeBytes, runtimeNanoseconds: runtimeNanoseconds)
                parameters.seed = 0x5151_0000 &+ UInt64(round) &* 7919
                parameters.submitEach = strataSubmitEach
                let result: LoopResult
                if workload.threads > 1 {
                    (result, _) = try StrataRunner.runThreads(workload.threads, device: device, kind: kind,
                                                              parameters: parameters, histogram: histogram)
                } else {
                    result = try StrataRunner.run(device: device, kind: kind, parameters: parameters, histogram: histogram)
                }
                let strataResult = result.measurement(histogram)
                entry.strata.repeats.append(strataResult)
                engineTotals.add(result)
                allRegistered = allRegistered && result.registeredBuffers
                if fioResult.mibPerSecond > 0 {
                    entry.throughputRatioPerRepeat.append(strataResult.mibPerSecond / fioResult.mibPerSecond)
                }
                progress("[strata \(label)] \(describe(strataResult))")
            }
            entry.fio.median = medianMeasurement(entry.fio.repeats)
            entry.strata.median = medianMeasurement(entry.strata.repeats)
            if let f = entry.fio.median, let s = entry.strata.median {
                if f.mibPerSecond > 0 { entry.throughputRatio = s.mibPerSecond / f.mibPerSecond }
                if workload.reportsLatencyRatio, f.p50Microseconds > 0 {
                    entry.p50LatencyRatio = s.p50Microseconds / f.p50Microseconds
                    if let clat = f.fioClatP50Microseconds, clat > 0 { entry.p50ClatRatio = s.p50Microseconds / clat }
                }
            }
            if engineTotals.ios > 0 {
                entry.strataSubmitSyscallsPerIO = Double(engineTotals.submitSyscalls) / Double(engineTotals.ios)
                entry.strataKernelRequestsPerIO = Double(engineTotals.kernelSubmissions) / Double(engineTotals.ios)
            }
            entry.strataShortTransfers = engineTotals.shortTransfersResubmitted
            entry.strataRetries = engineTotals.retries
            if kind == .ioUring { entry.strataRegisteredBuffers = allRegistered }
            report.workloads.append(entry)
        }

        print(renderTable(report))
        let latencyNote = fioLatency == .lat ? "fio lat (slat+clat)" : "fio clat (excludes submission)"
        print("tput = strata MiB/s ÷ fio MiB/s (medians); p50 = strata p50 ÷ fio p50 latency (QD1). Latency: \(latencyNote), strata submit→reap.")
        fflush(nil)
        if let jsonPath {
            try writeJSON(report, to: jsonPath)
            progress("strata-perf: wrote \(jsonPath)")
        }
    }
}

StrataPerf.main()
