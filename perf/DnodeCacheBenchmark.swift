// strata-perf dnode-cache — cached dnode lookups per second (one thread, two threads) and the
// memory each cached dnode costs.
//
//   strata-perf dnode-cache [--objects N] [--seconds S] [--shards N] [--json PATH] [--smoke]
//
// The cache is filled with --objects Lustre-shaped dnodes (LMA + PFID inline, as on an OST object,
// plus a 40-byte inline extent) and every lookup hits. Each thread looks up objects in a
// precomputed uniform pseudo-random order (no generator cost in the loop; one position per cached
// dnode, at least 64k, so the lookups range over the whole cache) for --seconds, reading one
// field so the lookup is not optimised away. Two paths are timed:
//   - `withDnode` (borrowed, no copy): the path callers use (read a few fields under the lock);
//   - `lookup` (a copy of the Dnode: retains and later releases its arrays), for comparison.
// `withDnode` is inlinable: the body (here one field read) is inlined into the caller and the
// optimizer reads only what it uses. A third measurement (one thread) passes a body the compiler
// may not inline, so the cache moves the whole dnode out of its slot and back around the call:
// what a caller with a large closure pays.
// Each rate is given per wall-clock second and per second of the thread's CPU time
// (CLOCK_THREAD_CPUTIME_ID): on a shared machine the second is the one that does not depend on how
// many other processes compete for the cores. Memory per cached dnode: the heap growth of
// filling the cache (resident set size before and after) divided by the count, next
// to the cache's own accounting (what the memory bound is charged). Target (issue 6): ≥ 5 M
// lookups/s on one core.

import ArgumentParser
import Dispatch
import Foundation
import StrataDMU
import StrataPool

#if canImport(Glibc)
import Glibc
#endif

struct DnodeCacheBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dnode-cache",
        abstract: "Cached dnode lookups/s on 1 and 2 threads, and memory per cached dnode."
    )

    @Option(help: "Dnodes in the cache (default 1000000; --smoke 10000).")
    var objects: Int?

    @Option(help: "Seconds per measurement (default 2; --smoke 0.1).")
    var seconds: Double?

    @Option(help: "Lock stripes (power of two; default: the cache's default).")
    var shards: Int?

    @Option(help: "Write the results as JSON to this path.")
    var json: String?

    @Flag(help: "Tiny run for tests: 10000 dnodes, 0.1 s per measurement.")
    var smoke = false

    struct Result: Codable {
        var objects: Int
        var shards: Int
        var seconds: Double
        var oneThreadLookupsPerSecond: Double
        var twoThreadLookupsPerSecond: Double
        var twoThreadPerThread: [Double]
        var oneThreadBorrowingLookupsPerSecond: Double
        /// `withDnode` with a body that is not inlined (a call): one thread.
        var oneThreadBorrowingCallLookupsPerSecond: Double
        var oneThreadBorrowingCallLookupsPerCPUSecond: Double
        var twoThreadBorrowingLookupsPerSecond: Double
        /// The same rates per second of thread CPU time (two threads: summed).
        var oneThreadLookupsPerCPUSecond: Double
        var twoThreadLookupsPerCPUSecond: Double
        var oneThreadBorrowingLookupsPerCPUSecond: Double
        var twoThreadBorrowingLookupsPerCPUSecond: Double
        var heapBytesPerDnode: Double
        var chargedBytesPerDnode: Double
        var dnodeStructBytes: Int
    }

    func validate() throws {
        if let objects, objects < 1 { throw ValidationError("--objects must be positive") }
        if let seconds, !(seconds > 0 && seconds <= 600) { throw ValidationError("--seconds must be in (0, 600]") }
        if let shards, shards < 1 || shards & (shards - 1) != 0 { throw ValidationError("--shards must be a power of two") }
    }

    func run() throws {
        let count = objects ?? (smoke ? 10_000 : 1_000_000)
        let duration = seconds ?? (smoke ? 0.1 : 2)
        var settings = DnodeCacheSettings(memoryBytesMax: max(64 << 20, count * 1024))
        if let shards { settings.shardCount = shards }

        let store = MemoryMetadataStore()
        var template = Dnode(objectNumber: 0, type: .regular)
        try template.setXattr("trusted.lma", Array(repeating: 1, count: 24), store: store)
        try template.setXattr("trusted.fid", Array(repeating: 2, count: 44), store: store)
        template.extentMap = .inline(Array(repeating: 0, count: 40))

        let heapBefore = Self.heapInUseBytes()
        let cache = DnodeCache(settings: settings)
        for object in 0 ..< UInt64(count) {
            var dnode = template
            dnode.objectNumber = object
            dnode.sizeBytes = object
            // Each dnode owns its buffers (as dnodes decoded from disk do), not shared copies.
            dnode.extentMap = .inline(Array(repeating: UInt8(truncatingIfNeeded: object), count: 40))
            try dnode.setXattr("trusted.lma", Array(repeating: UInt8(truncatingIfNeeded: object), count: 24), store: store)
            cache.insertClean(dnode)
        }
        let heapAfter = Self.heapInUseBytes()
        let statistics = cache.statistics
        guard statistics.cachedCount == count, statistics.evictions == 0 else {
            throw PerfError.usage("cache holds \(statistics.cachedCount) of \(count) dnodes (\(statistics.evictions) evicted)")
        }

        // One position per cached dnode (at least 64k), so the lookups range over the whole cache:
        // a 64k order repeated (as before) touched only 64k distinct dnodes, a working set that
        // largely fits in L3 even when a million are cached.
        let orderLength = max(1 << 16, 1 << (Int.bitWidth - (count - 1).leadingZeroBitCount))
        let orders: [[UInt64]] = (0 ..< 2).map { thread in
            var generator = SplitMix(state: 0xD40D_E000 &+ UInt64(thread))
            return (0 ..< orderLength).map { _ in generator.next() % UInt64(count) }
        }
        let oneBorrowing = Self.measure(cache: cache, orders: [orders[0]], seconds: duration, borrowing: true)
        let twoBorrowing = Self.measure(cache: cache, orders: orders, seconds: duration, borrowing: true)
        let oneBorrowingCall = Self.measure(cache: cache, orders: [orders[0]], seconds: duration, borrowing: true, bodyInlined: false)
        let one = Self.measure(cache: cache, orders: [orders[0]], seconds: duration)
        let two = Self.measure(cache: cache, orders: orders, seconds: duration)
        func sum(_ rates: [Rate], _ part: KeyPath<Rate, Double>) -> Double { rates.map { $0[keyPath: part] }.reduce(0, +) }
        let result = Result(objects: count, shards: settings.shardCount, seconds: duration,
                            oneThreadLookupsPerSecond: sum(one, \.wall), twoThreadLookupsPerSecond: sum(two, \.wall),
                            twoThreadPerThread: two.map(\.wall),
                            oneThreadBorrowingLookupsPerSecond: sum(oneBorrowing, \.wall),
                            oneThreadBorrowingCallLookupsPerSecond: sum(oneBorrowingCall, \.wall),
                            oneThreadBorrowingCallLookupsPerCPUSecond: sum(oneBorrowingCall, \.cpu),
                            twoThreadBorrowingLookupsPerSecond: sum(twoBorrowing, \.wall),
                            oneThreadLookupsPerCPUSecond: sum(one, \.cpu), twoThreadLookupsPerCPUSecond: sum(two, \.cpu),
                            oneThreadBorrowingLookupsPerCPUSecond: sum(oneBorrowing, \.cpu),
                            twoThreadBorrowingLookupsPerCPUSecond: sum(twoBorrowing, \.cpu),
                            heapBytesPerDnode: Double(heapAfter &- heapBefore) / Double(count),
                            chargedBytesPerDnode: Double(statistics.residentBytes) / Double(count),
                            dnodeStructBytes: MemoryLayout<Dnode>.stride)

        func millions(_ value: Double) -> String { String(format: "%.2f M", value / 1e6) }
        print("strata-perf dnode-cache | \(count) cached dnodes (LMA + PFID inline, 1 inline extent), \(settings.shardCount) shards, \(duration) s per measurement | \(ProcessInfo.processInfo.activeProcessorCount) CPUs")
        print("withDnode (borrowed, no copy; the callers' path): 1 thread \(millions(result.oneThreadBorrowingLookupsPerSecond)) lookups/s "
              + "(\(millions(result.oneThreadBorrowingLookupsPerCPUSecond)) per CPU-second; target ≥ 5 M), "
              + "2 threads \(millions(result.twoThreadBorrowingLookupsPerSecond)) lookups/s (\(millions(result.twoThreadBorrowingLookupsPerCPUSecond)) per CPU-second)")
        print("withDnode with a body that is not inlined (the dnode moved out and back): 1 thread \(millions(result.oneThreadBorrowingCallLookupsPerSecond)) lookups/s "
              + "(\(millions(result.oneThreadBorrowingCallLookupsPerCPUSecond)) per CPU-second)")
        print("lookup (a copy): 1 thread \(millions(result.oneThreadLookupsPerSecond)) lookups/s (\(millions(result.oneThreadLookupsPerCPUSecond)) per CPU-second), "
              + "2 threads \(millions(result.twoThreadLookupsPerSecond)) lookups/s (\(two.map(\.wall).map(millions).joined(separator: " + ")); "
              + "\(millions(result.twoThreadLookupsPerCPUSecond)) per CPU-second)")
        print("memory: \(String(format: "%.0f", result.heapBytesPerDnode)) bytes per cached dnode measured (RSS growth / count), \(String(format: "%.0f", result.chargedBytesPerDnode)) charged to the bound; Dnode struct \(result.dnodeStructBytes) bytes")
        fflush(nil)
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(result).write(to: URL(fileURLWithPath: json))
        }
        withExtendedLifetime(cache) {}
    }

    /// Lookups per second of wall-clock time and per second of the thread's CPU time.
    struct Rate {
        var wall: Double
        var cpu: Double
    }

    static func threadCPUNs() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// The rates of each thread, all threads running at once.
    /// A `withDnode` body the compiler does not inline.
    @inline(never)
    static func sizeBytes(of dnode: borrowing Dnode) -> UInt64 { dnode.sizeBytes }

    static func measure(cache: DnodeCache, orders: [[UInt64]], seconds: Double, borrowing: Bool = false, bodyInlined: Bool = true) -> [Rate] {
        let rates = UnsafeMutableBufferPointer<Rate>.allocate(capacity: orders.count)
        defer { rates.deallocate() }
        let ratesAddress = UInt(bitPattern: rates.baseAddress)
        DispatchQueue.concurrentPerform(iterations: orders.count) { thread in
            let order = orders[thread]
            let mask = order.count - 1
            let budget = UInt64(seconds * 1e9)
            let start = AllocatorBenchmark.now()
            let cpuStart = threadCPUNs()
            var lookups = 0
            var sink: UInt64 = 0
            var position = 0
            var elapsed: UInt64 = 0
            repeat {
                for _ in 0 ..< 4096 {
                    if borrowing && !bodyInlined {
                        sink &+= cache.withDnode(order[position], sizeBytes(of:)) ?? 0
                    } else if borrowing {
                        sink &+= cache.withDnode(order[position]) { $0.sizeBytes } ?? 0
                    } else if case .present(let dnode) = cache.lookup(order[position]) {
                        sink &+= dnode.sizeBytes
                    }
                    position = (position + 1) & mask
                }
                lookups += 4096
                elapsed = AllocatorBenchmark.now() - start
            } while elapsed < budget
            let cpu = threadCPUNs() - cpuStart
            precondition(sink != 1)   // keeps the reads
            UnsafeMutablePointer<Rate>(bitPattern: ratesAddress)![thread] = Rate(wall: Double(lookups) / (Double(elapsed) / 1e9),
                                                                                 cpu: Double(lookups) / (Double(max(cpu, 1)) / 1e9))
        }
        return Array(rates)
    }

    /// Resident set size (from /proc/self/statm): mallinfo is not imported by Swift's Glibc
    /// module. Over a million dnodes the growth is hundreds of MiB, so page rounding is noise.
    static func heapInUseBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
