// strata-perf alloc — the allocator's latency at high fill and its memory per TiB managed.
//
//   strata-perf alloc [--size 1T] [--fill 90] [--operations 200000] [--seed N] [--json PATH] [--smoke]
//
// One data device of --size (a one-device pool: every class lands on it) is aged the way a pool
// ages: filled to --fill percent with a random mix (by bytes ~90% 1 MiB records, ~10% small blocks
// of 4–64 KiB, 85% of the operations), then 20% of the extents, picked at random, are freed (with
// two checkpoints so the frees become allocatable) and the device is refilled to --fill with the
// same mix. That leaves small holes scattered over most regions, as metadata churn does.
// Then, timed one operation pair at a time (clock_gettime around allocate + free, the free being
// the deferred free the transaction layer issues): a 1 MiB record (class data) and a 4 KiB block
// (class metadata), --operations each. Every 1024 pairs a checkpoint is begun and made durable,
// untimed (every 1024 pairs, or fewer when the free space is small), so deferred frees return as they would in a running pool. Reported: median and p99 in
// ns, and the allocator's index bytes scaled to one TiB managed (`SpaceMap.indexBytes`), plus the
// pending-free/held run lists at the end of the run (`listBytes`, proportional to outstanding
// frees, not to the size managed). Targets (issue 4): medians ≤ 1 µs; ≤ 64 MiB per TiB.

import ArgumentParser
import Foundation
import StrataPool

#if canImport(Glibc)
import Glibc
#endif

struct AllocatorBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alloc",
        abstract: "Allocator latency (1 MiB and 4 KiB allocate+free) at high fill, and its memory per TiB managed."
    )

    @Option(help: "Managed device size: bytes or 256G, 1T (default 1T; --smoke 4G).")
    var size: String?

    @Option(help: "Fill percent to age the device to before measuring (default 90).")
    var fill: Int = 90

    @Option(help: "Timed allocate+free pairs per size (default 200000; --smoke 2000).")
    var operations: Int?

    @Option(help: "Seed of the aging mix.")
    var seed: UInt64 = 0x5EED

    @Option(help: "Write the results as JSON to this path.")
    var json: String?

    @Flag(help: "Tiny run for tests: 4 GiB, 2000 pairs.")
    var smoke = false

    struct Result: Codable {
        var managedBytes: UInt64
        var fillPercent: Double
        var fragmentation: Double
        var agingOperations: Int
        var record: Latency
        var block: Latency
        var stateBytes: Int
        var indexBytes: Int
        var indexBytesPerTiB: Int
        var listBytes: Int
    }

    struct Latency: Codable {
        var operations: Int
        var medianNanoseconds: UInt64
        var p99Nanoseconds: UInt64
        var allocateMedianNanoseconds: UInt64
    }

    func validate() throws {
        guard (1...99).contains(fill) else { throw ValidationError("--fill must be 1...99") }
        if let operations, operations < 1 { throw ValidationError("--operations must be positive") }
    }

    func run() throws {
        let sizeBytes: UInt64 = try size.map(parseSize) ?? (smoke ? 4 << 30 : 1 << 40)
        guard sizeBytes >= 64 << 20 else { throw PerfError.usage("--size must be at least 64 MiB") }
        let operationCount = operations ?? (smoke ? 2000 : 200_000)
        let result = try AllocatorBenchmark.measure(sizeBytes: sizeBytes, fillPercent: fill, operations: operationCount, seed: seed)
        let mib = 1024.0 * 1024.0
        print("strata-perf alloc | managed \(formatBytes(result.managedBytes)) at \(String(format: "%.1f", result.fillPercent))% fill, fragmentation \(String(format: "%.2f", result.fragmentation)) (share of free space outside whole 1 MiB regions) | aging: \(result.agingOperations) operations | \(ProcessInfo.processInfo.activeProcessorCount) CPUs")
        for (name, latency) in [("1 MiB alloc+free", result.record), ("4 KiB alloc+free", result.block)] {
            print("\(name.padding(toLength: 18, withPad: " ", startingAt: 0)) median \(latency.medianNanoseconds) ns, p99 \(latency.p99Nanoseconds) ns (allocate alone: median \(latency.allocateMedianNanoseconds) ns; \(latency.operations) pairs)")
        }
        print("allocator state: index \(result.indexBytes) bytes = \(result.indexBytesPerTiB) bytes per TiB managed (\(String(format: "%.1f", Double(result.indexBytesPerTiB) / mib)) MiB/TiB; target ≤ 64 MiB) + pending-free/held lists \(result.listBytes) bytes (16 B per outstanding run, independent of size)")
        fflush(nil)
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(result).write(to: URL(fileURLWithPath: json))
        }
    }

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Ages a one-device pool of `sizeBytes` to `fillPercent`, then times allocate+free pairs.
    static func measure(sizeBytes: UInt64, fillPercent: Int, operations: Int, seed: UInt64) throws -> Result {
        let device = AllocatorDevice(index: 0, path: "bench", role: .data, sizeBytes: sizeBytes,
                                     reservedRanges: [0 ..< 256 << 10])
        let allocator = PoolAllocator(devices: [device], policy: PoolPolicy())
        let capacity = allocator.statistics().devices[0].capacityBytes
        let target = capacity / 100 * UInt64(fillPercent)
        var generator = SplitMix(state: seed)
        var live: [Extent] = []
        live.reserveCapacity(Int(target / (160 << 10)) + 1024)
        var allocated: UInt64 = 0
        var agingOperations = 0

        func fillToTarget() throws {
            while allocated < target {
                let small = generator.next() % 100 < 85
                let length: UInt64 = small ? (generator.next() % 2 == 0 ? 4096 : 4096 * (2 + generator.next() % 15)) : 1 << 20
                let copies = try allocator.allocate(small ? .metadata : .data, lengthBytes: length)
                live.append(copies[0])
                allocated += length
                agingOperations += 1
            }
        }
        func settle() {
            for _ in 0 ..< 2 { allocator.checkpointDurable(allocator.beginCheckpoint().checkpoint) }
        }

        try fillToTarget()
        // Free 20% at random (swap-remove), let the frees return, refill.
        var toFree = live.count / 5
        while toFree > 0 {
            let index = Int(generator.next() % UInt64(live.count))
            let extent = live[index]
            live[index] = live[live.count - 1]
            live.removeLast()
            allocator.free(extent)
            allocated -= extent.lengthBytes
            agingOperations += 1
            toFree -= 1
        }
        settle()
        try fillToTarget()
        settle()

        let record = try time(allocator, .data, lengthBytes: 1 << 20, operations: operations)
        let block = try time(allocator, .metadata, lengthBytes: 4096, operations: operations)
        let statistics = allocator.statistics()
        let space = statistics.devices[0]
        let managed = space.capacityBytes + space.excludedBytes
        return Result(managedBytes: managed, fillPercent: space.fillPercent, fragmentation: space.fragmentation,
                      agingOperations: agingOperations, record: record, block: block, stateBytes: statistics.stateBytes,
                      indexBytes: space.indexBytes, indexBytesPerTiB: Int(Double(space.indexBytes) * Double(1 << 40) / Double(managed)),
                      listBytes: space.listBytes)
    }

    static func time(_ allocator: PoolAllocator, _ allocationClass: AllocationClass, lengthBytes: UInt64, operations: Int) throws -> Latency {
        // Deferred frees come back two checkpoints later: keep what is in flight well below the free space.
        let freeBytes = allocator.statistics().devices[0].freeBytes
        let checkpointInterval = Int(max(16, min(1024, freeBytes / (lengthBytes * 4))))
        var pairs = [UInt64](repeating: 0, count: operations)
        var allocations = [UInt64](repeating: 0, count: operations)
        for index in 0 ..< operations {
            if index % checkpointInterval == checkpointInterval - 1 { allocator.checkpointDurable(allocator.beginCheckpoint().checkpoint) }
            let start = now()
            let copies = try allocator.allocate(allocationClass, lengthBytes: lengthBytes)
            let middle = now()
            allocator.free(copies)
            let end = now()
            pairs[index] = end - start
            allocations[index] = middle - start
        }
        pairs.sort()
        allocations.sort()
        func percentile(_ values: [UInt64], _ p: Double) -> UInt64 { values[min(values.count - 1, Int(Double(values.count) * p))] }
        return Latency(operations: operations, medianNanoseconds: percentile(pairs, 0.5), p99Nanoseconds: percentile(pairs, 0.99),
                       allocateMedianNanoseconds: percentile(allocations, 0.5))
    }
}

/// splitmix64, for a reproducible aging mix.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
