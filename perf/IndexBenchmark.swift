// strata-perf index — the index tree (B+tree, the ZAP analogue) on one core, in memory.
//
//   strata-perf index [--keys 1000000] [--seed N] [--cache-budget 512M] [--json PATH] [--smoke]
//
// --keys random keys of 16–64 bytes (uniform length, random bytes) with 16-byte values (a FID's
// size) are generated up front, untimed. Then, each phase timed with clock_gettime:
//   - insert every key in random order into a new tree (all nodes dirty, in memory);
//   - flush: every node written copy-on-write to a MemoryMetadataStore (crc32c and a copy per
//     4 KiB node; a pool-backed store adds the device writes);
//   - lookups of every key in a new random order on the flushed, reloaded tree, after one warming
//     pass, so every node is in the node cache (--cache-budget must hold the tree: the default
//     512 MiB does for 1 M keys);
//   - a full iteration in key order;
//   - an update of 1 % of the keys (upserts of new values) and the flush after it, to show the
//     copy-on-write cost of scattered updates (nodes and bytes written per updated key);
//   - sequential keys (8-byte big-endian counters, FID creation order) inserted and flushed, for
//     the node fill the append split gives.
// Reported: rates per second, flush time and bytes, tree depth, nodes and fill, cache counters.

import ArgumentParser
import Foundation
import StrataDMU
import StrataPool
import StrataTesting
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct IndexBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "index",
        abstract: "Index tree inserts, cached lookups, iteration and copy-on-write flushes (1 M keys of 16–64 bytes)."
    )

    @Option(help: "Keys to insert (default 1000000; --smoke 20000).")
    var keys: Int?

    @Option(help: "Seed of the keys and their order.")
    var seed: UInt64 = 0x1DE7

    @Option(help: "Node cache budget: bytes or 512M, 1G (default 512M).")
    var cacheBudget: String?

    @Option(help: "Write the results as JSON to this path.")
    var json: String?

    @Flag(help: "Tiny run for tests: 20,000 keys.")
    var smoke = false

    struct Result: Codable {
        var keys: Int
        var insertsPerSecond: Double
        var flushMilliseconds: Double
        var flushBytes: Int
        var flushNodes: Int
        var lookupsPerSecond: Double
        var iterationKeysPerSecond: Double
        var depth: Int
        var fillRatio: Double
        var updateKeys: Int
        var updateFlushNodes: Int
        var updateFlushBytes: Int
        var updateFlushMilliseconds: Double
        var sequentialFillRatio: Double
        var cacheHits: Int
        var cacheMisses: Int
    }

    func validate() throws {
        if let keys, keys < 1000 { throw ValidationError("--keys must be at least 1000") }
    }

    func run() throws {
        let keyCount = keys ?? (smoke ? 20_000 : 1_000_000)
        let budget = try cacheBudget.map { Int(try parseSize($0)) } ?? (512 << 20)
        let result = try IndexBenchmark.measure(keyCount: keyCount, seed: seed, cacheBudgetBytes: budget)
        let mib = 1024.0 * 1024.0
        print("index tree, \(result.keys) keys of 16–64 bytes, 16-byte values, one core, MemoryMetadataStore")
        print("  insert (random order):   \(fixed(result.insertsPerSecond / 1e6, 2)) M inserts/s")
        print("  flush:                   \(fixed(result.flushMilliseconds, 1)) ms, \(result.flushNodes) nodes, \(fixed(Double(result.flushBytes) / mib, 1)) MiB")
        print("  lookup (cached):         \(fixed(result.lookupsPerSecond / 1e6, 2)) M lookups/s")
        print("  iteration:               \(fixed(result.iterationKeysPerSecond / 1e6, 2)) M keys/s")
        print("  tree:                    depth \(result.depth), fill \(fixed(result.fillRatio * 100, 1)) % (sequential keys: \(fixed(result.sequentialFillRatio * 100, 1)) %)")
        print("  update 1 % then flush:   \(result.updateKeys) keys, \(result.updateFlushNodes) nodes, \(fixed(Double(result.updateFlushBytes) / mib, 1)) MiB, \(fixed(result.updateFlushMilliseconds, 1)) ms")
        print("  cache:                   \(result.cacheHits) hits, \(result.cacheMisses) misses")
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

    static func measure(keyCount: Int, seed: UInt64, cacheBudgetBytes: Int) throws -> Result {
        var random = SeededRandom(seed: seed)
        var keySet = Set<[UInt8]>()
        keySet.reserveCapacity(keyCount)
        while keySet.count < keyCount {
            let length = 16 + Int(random.next() % 49)
            keySet.insert((0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) })
        }
        var keys = Array(keySet)
        keys.shuffle(using: &random)
        let values = (0..<keyCount).map { index in withUnsafeBytes(of: UInt64(index)) { Array($0) } + [UInt8](repeating: 0x5A, count: 8) }

        let store = CountingStore()
        let cache = IndexNodeCache(budgetBytes: cacheBudgetBytes)
        var tree = IndexTree(store: store, name: "bench", cache: cache)
        var start = now()
        for index in 0..<keyCount { try tree.insert(keys[index], values[index]) }
        let insertSeconds = Double(now() - start) / 1e9

        start = now()
        let root = try tree.flush()
        let flushMilliseconds = Double(now() - start) / 1e6
        let flushNodes = store.writes.load(ordering: .relaxed)
        let check = tree.verify()
        guard check.isClean, check.entryCount == keyCount else { throw PerfError.usage("index verify failed: \(check.problems.prefix(3))") }

        tree = try IndexTree(root: root, store: store, name: "bench", cache: cache)
        keys.shuffle(using: &random)
        var found = 0
        for key in keys { found += try tree.withValue(forKey: key) { $0 == nil ? 0 : 1 } }   // warm the cache
        keys.shuffle(using: &random)
        start = now()
        for key in keys { found += try tree.withValue(forKey: key) { $0 == nil ? 0 : 1 } }
        let lookupSeconds = Double(now() - start) / 1e9
        guard found == 2 * keyCount else { throw PerfError.usage("lookups found \(found) of \(2 * keyCount)") }

        start = now()
        var iterated = 0
        try tree.iterate(from: .first) { _, _ in iterated += 1; return true }
        let iterationSeconds = Double(now() - start) / 1e9
        guard iterated == keyCount else { throw PerfError.usage("iteration found \(iterated) of \(keyCount)") }

        let updateKeys = keyCount / 100
        for index in 0..<updateKeys { try tree.insert(keys[index], [UInt8](repeating: 0xA5, count: 16), mode: .upsert) }
        let writesBefore = store.writes.load(ordering: .relaxed)
        start = now()
        try tree.flush()
        let updateMilliseconds = Double(now() - start) / 1e6
        let updateNodes = store.writes.load(ordering: .relaxed) - writesBefore

        let sequentialStore = MemoryMetadataStore()
        let sequential = IndexTree(store: sequentialStore, name: "bench-seq", cache: cache)
        for index in 0..<keyCount {
            try sequential.insert(withUnsafeBytes(of: UInt64(index).bigEndian) { Array($0) }, values[index])
        }
        try sequential.flush()
        let sequentialCheck = sequential.verify()

        return Result(keys: keyCount, insertsPerSecond: Double(keyCount) / insertSeconds, flushMilliseconds: flushMilliseconds,
                      flushBytes: flushNodes * IndexTree.nodeBytes, flushNodes: flushNodes,
                      lookupsPerSecond: Double(keyCount) / lookupSeconds, iterationKeysPerSecond: Double(keyCount) / iterationSeconds,
                      depth: check.depth, fillRatio: check.fillRatio, updateKeys: updateKeys,
                      updateFlushNodes: updateNodes, updateFlushBytes: updateNodes * IndexTree.nodeBytes,
                      updateFlushMilliseconds: updateMilliseconds, sequentialFillRatio: sequentialCheck.fillRatio,
                      cacheHits: cache.hits, cacheMisses: cache.misses)
    }
}

/// A MemoryMetadataStore that counts the blocks written.
final class CountingStore: MetadataStore {
    let inner = MemoryMetadataStore()
    let writes = Atomic<Int>(0)

    func writeNew(_ bytes: UnsafeRawBufferPointer) throws(MetadataStoreError) -> BlockPointer {
        writes.add(1, ordering: .relaxed)
        return try inner.writeNew(bytes)
    }

    func read(_ pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError) {
        try inner.read(pointer, into: buffer)
    }

    func free(_ pointer: BlockPointer) { inner.free(pointer) }
}
