// strata-perf pool-import — how long importing a 5-device pool takes.
//
//   strata-perf pool-import [--device-size 1G] [--repeats 20] [--dir D] [--json PATH] [--smoke]
//
// A pool of five sparse files is created in a temp dir — two data devices, one metadata, one
// log, one spill, each of --device-size — with some allocations committed, then exported. Then,
// --repeats times each, timed with clock_gettime around the whole call:
//   - read-only import by paths (labels of 5 devices, both copies, all uberblock slots; the
//     space maps read and verified; nothing written);
//   - read-write import by paths (the same, plus the label repair check and one checkpoint: a
//     flush of every device and a FUA uberblock into both labels of every device), then export
//     (untimed);
//   - read-only import by scanning the directory.
// Reported: median, min and max in ms. Target (issue 4): ≤ 50 ms for a 5-device pool. The space
// maps are read whole (1 bit per 4 KiB: 32 MiB per TiB per device), so the time grows with device
// size; run with --device-size 1T to see the large-device cost.

import ArgumentParser
import Foundation
import StrataIO
import StrataPool

#if canImport(Glibc)
import Glibc
#endif

struct PoolImportBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool-import",
        abstract: "Import time of a 5-device pool (read-only, read-write, directory scan)."
    )

    @Option(help: "Size of each of the 5 devices: bytes or 1G, 1T (default 1G; --smoke 64M).")
    var deviceSize: String?

    @Option(help: "Imports per kind (default 20; --smoke 3).")
    var repeats: Int?

    @Option(help: "Directory for the temp dir holding the devices (default $TMPDIR or /tmp).")
    var dir: String?

    @Option(help: "Write the results as JSON to this path.")
    var json: String?

    @Flag(help: "Tiny run for tests: 64 MiB devices, 3 repeats.")
    var smoke = false

    struct Timing: Codable {
        var kind: String
        var medianMs: Double
        var minMs: Double
        var maxMs: Double
    }

    struct Result: Codable {
        var deviceCount: Int
        var deviceSizeBytes: UInt64
        var timings: [Timing]
    }

    func run() throws {
        guard let sizeBytes = PoolPolicy.parseBytes(deviceSize ?? (smoke ? "64M" : "1G")), sizeBytes >= 64 << 20 else {
            throw ValidationError("--device-size must be at least 64M")
        }
        let count = repeats ?? (smoke ? 3 : 20)
        guard count >= 1 else { throw ValidationError("--repeats must be at least 1") }
        let base = dir ?? ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let directory = base + "/strata-pool-import.\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let roles: [DeviceRole] = [.data, .data, .metadata, .log, .spill]
        let members = roles.enumerated().map { index, role in
            Pool.MemberSpec(path: "\(directory)/\(role.name)\(index)", role: role, createSizeBytes: sizeBytes)
        }
        do {
            let pool = try Pool.create(name: "bench", members: members)
            for _ in 0..<64 { _ = try pool.allocator.allocate(.data, lengthBytes: 1 << 20) }
            for _ in 0..<512 { _ = try pool.allocator.allocate(.metadata, lengthBytes: 4096) }
            try pool.commitCheckpoint()
            try pool.export()
        }
        let paths = members.map(\.path)

        func measure(_ kind: String, _ body: () throws -> Void) throws -> Timing {
            var samples: [Double] = []
            for _ in 0..<count {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                samples.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            }
            samples.sort()
            return Timing(kind: kind, medianMs: samples[samples.count / 2], minMs: samples.first!, maxMs: samples.last!)
        }

        var timings: [Timing] = []
        timings.append(try measure("read-only, by paths") {
            _ = try Pool.importPool(paths: paths, readOnly: true)
        })
        var writable: [Double] = []
        for _ in 0..<count {
            let start = DispatchTime.now().uptimeNanoseconds
            let pool = try Pool.importPool(paths: paths)
            writable.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            try pool.export()
        }
        writable.sort()
        timings.append(Timing(kind: "read-write, by paths", medianMs: writable[writable.count / 2], minMs: writable.first!, maxMs: writable.last!))
        timings.append(try measure("read-only, directory scan") {
            _ = try Pool.importPool(scanning: directory, readOnly: true)
        })

        print("pool import: 5 devices of \(sizeBytes >> 20) MiB (data, data, metadata, log, spill), \(count) imports each")
        for timing in timings {
            print("  \(timing.kind.padding(toLength: 28, withPad: " ", startingAt: 0)) median \(String(format: "%7.2f", timing.medianMs)) ms"
                  + "  min \(String(format: "%7.2f", timing.minMs))  max \(String(format: "%7.2f", timing.maxMs))")
        }
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(Result(deviceCount: 5, deviceSizeBytes: sizeBytes, timings: timings)).write(to: URL(fileURLWithPath: json))
        }
    }
}
