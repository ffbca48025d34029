// IndexTreeModelTests — a seeded random workload against the index tree and a plain model (a
// dictionary, sorted when needed): inserts (must-not-exist and upsert), deletes of present and
// absent keys, lookups, cookie iterations interleaved with changes, flushes to a
// MemoryMetadataStore and reloads from the flushed root. After every flush the tree is verified
// and its referenced blocks must be exactly the store's live blocks (nothing leaked, nothing freed
// twice: the store traps on that). Every failure names the seed and step;
// STRATA_INDEX_SEED=<n> replays one seed.

import Foundation
import Testing
import StrataPool
import StrataTesting
@testable import StrataDMU

struct IndexModelFailure: Error, CustomStringConvertible {
    var description: String
}

struct IndexTreeModelRun {
    let seed: UInt64
    let steps: Int
    let budgetBytes: Int
    var random: SeededRandom
    let store = CountingMetadataStore()
    let cache: IndexNodeCache
    var tree: IndexTree
    var model: [[UInt8]: [UInt8]] = [:]
    var keys: [[UInt8]] = []                         // the model's keys, for picking present ones
    var keyIndex: [[UInt8]: Int] = [:]
    // An iteration in progress: its cookie, what it returned, the keys present throughout.
    var cookie: IndexCookie? = nil
    var iterationOpen = false
    var returned = Set<[UInt8]>()
    var stable = Set<[UInt8]>()
    var step = 0
    var depthMax = 0
    var flushCount = 0
    var modelCountMax = 0
    var batchCount = 0

    init(seed: UInt64, steps: Int, budgetBytes: Int) {
        self.seed = seed
        self.steps = steps
        self.budgetBytes = budgetBytes
        random = SeededRandom(seed: seed)
        cache = IndexNodeCache(budgetBytes: budgetBytes)
        tree = IndexTree(store: store, name: "model-\(seed)", cache: cache)
    }

    func fail(_ message: String) -> IndexModelFailure {
        IndexModelFailure(description: "seed \(seed) step \(step): \(message) (replay: STRATA_INDEX_SEED=\(seed))")
    }

    mutating func randomKey() -> [UInt8] {
        let shape = random.next() % 10
        switch shape {
        case 0..<3:                                   // short keys over a small alphabet: collisions
            let length = Int(random.next() % 4) + 1
            return (0..<length).map { _ in UInt8(97 + random.next() % 6) }
        case 3..<5:                                   // names
            let length = Int(random.next() % 12) + 4
            return (0..<length).map { _ in UInt8(97 + random.next() % 26) }
        case 5:                                       // shared prefixes, FID-like
            return Array("fid:0x2000004".utf8) + (0..<Int(random.next() % 5 + 1)).map { _ in UInt8(48 + random.next() % 10) }
        case 6..<9:                                   // long shared prefixes: big separators, deep trees
            return [UInt8](repeating: 0x2F, count: 200) + (0..<Int(random.next() % 40 + 1)).map { _ in UInt8(97 + random.next() % 26) }
        case 9 where random.next() % 3 == 0:          // long keys up to the limit
            let length = Int(random.next() % UInt64(IndexTree.keyBytesMax + 1))
            return (0..<length).map { _ in UInt8(random.next() % 4) }
        default:
            return random.next() % 50 == 0 ? [] : [UInt8(random.next() % 256)]
        }
    }

    mutating func randomValue() -> [UInt8] {
        let length = random.next() % 8 == 0 ? Int(random.next() % UInt64(IndexTree.valueBytesMax + 1)) : Int(random.next() % 40)
        let fillByte = UInt8(random.next() % 256)
        return [UInt8](repeating: fillByte, count: length)
    }

    mutating func modelInsert(_ key: [UInt8], _ value: [UInt8]) {
        if model.updateValue(value, forKey: key) == nil {
            keyIndex[key] = keys.count
            keys.append(key)
        }
    }

    mutating func modelDelete(_ key: [UInt8]) {
        guard model.removeValue(forKey: key) != nil, let index = keyIndex.removeValue(forKey: key) else { return }
        let last = keys.removeLast()
        if index < keys.count {
            keys[index] = last
            keyIndex[last] = index
        }
        stable.remove(key)
    }

    /// A present key with probability `present` (when there is one), else a random one.
    mutating func pickKey(present: Double) -> [UInt8] {
        if !keys.isEmpty && random.chance(present) { return keys[Int(random.next() % UInt64(keys.count))] }
        return randomKey()
    }

    mutating func run() throws {
        for current in 0..<steps {
            step = current
            // Phases of 1,500 steps alternate growth (mostly inserts) and shrinkage (mostly
            // deletes), so the tree grows several levels and collapses again.
            let growing = (current / 1500) % 2 == 0
            let choice = random.next() % 100
            switch choice {
            case 0..<(growing ? 50 : 12): try insert(mode: .mustNotExist)
            case ..<(growing ? 62 : 22): try insert(mode: .upsert)
            case ..<(growing ? 72 : 72): try delete()
            case ..<84: try lookup()
            case ..<96: try iterate()
            case ..<98: try flush(reload: false)
            default: try flush(reload: true)
            }
            if cache.cleanBytes > 0 && cache.residentBytes > budgetBytes {
                throw fail("cache holds \(cache.residentBytes) bytes over its \(budgetBytes)-byte budget: \(cache.statistics)")
            }
            if tree.count != model.count { throw fail("tree counts \(tree.count), model \(model.count)") }
            depthMax = max(depthMax, tree.depth)
            modelCountMax = max(modelCountMax, model.count)
        }
        try flush(reload: true)
        let all = try tree.entries()
        let expected = model.keys.sorted { $0.lexicographicallyPrecedes($1) }
        if all.entries.map(\.key) != expected { throw fail("final iteration differs from the model") }
        for entry in all.entries where model[entry.key] != entry.value { throw fail("final value of \(IndexTreeError.show(entry.key)) differs") }
    }

    mutating func insert(mode: IndexInsertMode) throws {
        let key = pickKey(present: mode == .upsert ? 0.5 : 0.1)
        let value = randomValue()
        let present = model[key] != nil
        do {
            try tree.insert(key, value, mode: mode)
            if present && mode == .mustNotExist { throw fail("insert of present key \(IndexTreeError.show(key)) succeeded") }
            modelInsert(key, value)
        } catch let error as IndexTreeError {
            guard case .keyExists = error, present, mode == .mustNotExist else { throw fail("insert \(IndexTreeError.show(key)): \(error)") }
        }
    }

    mutating func delete() throws {
        let key = pickKey(present: 0.9)
        let present = model[key] != nil
        do {
            try tree.delete(key)
            if !present { throw fail("delete of absent key \(IndexTreeError.show(key)) succeeded") }
            modelDelete(key)
        } catch let error as IndexTreeError {
            guard case .keyNotFound = error, !present else { throw fail("delete \(IndexTreeError.show(key)): \(error)") }
        }
    }

    mutating func lookup() throws {
        let key = pickKey(present: 0.7)
        let found = try tree.lookup(key)
        if found != model[key] { throw fail("lookup \(IndexTreeError.show(key)): tree \(found.map { "\($0.count) bytes" } ?? "nil"), model \(model[key].map { "\($0.count) bytes" } ?? "nil")") }
    }

    /// One batch of the open iteration (or a new one): must equal the model's next keys.
    mutating func iterate() throws {
        if !iterationOpen {
            iterationOpen = true
            cookie = nil
            returned = []
            stable = Set(model.keys)
        }
        let limit = Int(random.next() % 40) + 1
        let batch = try tree.entries(from: cookie.map { .after($0) } ?? .first, limit: limit)
        batchCount += 1
        var expected = model.keys.filter { key in cookie.map { $0.lastKey.lexicographicallyPrecedes(key) } ?? true }
        expected.sort { $0.lexicographicallyPrecedes($1) }
        let expectedBatch = Array(expected.prefix(limit))
        if batch.entries.map(\.key) != expectedBatch { throw fail("iteration batch of \(batch.entries.count) differs from the model's \(expectedBatch.count)") }
        for entry in batch.entries {
            if model[entry.key] != entry.value { throw fail("iteration value of \(IndexTreeError.show(entry.key)) differs") }
            if !returned.insert(entry.key).inserted { throw fail("iteration returned \(IndexTreeError.show(entry.key)) twice") }
        }
        if batch.reachedEnd != (expected.count <= limit) { throw fail("reachedEnd \(batch.reachedEnd) with \(expected.count) left and limit \(limit)") }
        if let next = batch.cookie { cookie = next }
        if batch.reachedEnd {
            if !stable.isSubset(of: returned) { throw fail("iteration skipped \(stable.subtracting(returned).count) keys present throughout") }
            iterationOpen = false
        }
    }

    mutating func flush(reload: Bool) throws {
        let root = try tree.flush()
        flushCount += 1
        if !tree.checkPinnedAccounting() { throw fail("pinned-node accounting is off after flush") }
        let check = tree.verify()
        if !check.isClean { throw fail("verify: \(check.problems.prefix(3).map(\.description))") }
        let referenced = Set(check.blockPointers.map(\.offsetBytes))
        if referenced.count != check.blockPointers.count { throw fail("a block referenced twice") }
        if referenced != store.liveOffsets { throw fail("tree references \(referenced.count) blocks, store holds \(store.liveOffsets.count) live") }
        if check.entryCount != model.count { throw fail("verify counts \(check.entryCount), model \(model.count)") }
        // A second flush with no change writes nothing.
        let writes = store.writeCount
        if try tree.flush() != root || store.writeCount != writes { throw fail("flush of an unchanged tree wrote") }
        if reload {
            tree = try IndexTree(root: root, store: store, name: "model-\(seed)", cache: cache)
            if tree.count != model.count { throw fail("reloaded tree counts \(tree.count), model \(model.count)") }
        }
    }
}

@Suite struct IndexTreeModelTests {
    static var seeds: [UInt64] {
        if let text = ProcessInfo.processInfo.environment["STRATA_INDEX_SEED"], let seed = UInt64(text) { return [seed] }
        return [1, 2, 3, 0xDEAD_BEEF]
    }

    @Test(arguments: IndexTreeModelTests.seeds)
    func randomWorkloadMatchesTheModel(seed: UInt64) throws {
        // Odd seeds run with a tiny cache (constant eviction and re-reads), even ones with a big one.
        var run = IndexTreeModelRun(seed: seed, steps: 9000, budgetBytes: seed % 2 == 1 ? 12 * 4096 : 64 << 20)
        do {
            try run.run()
        } catch {
            Issue.record("\(error)")
        }
        // The workload must reach a few levels and real cache pressure to mean something.
        #expect(run.depthMax >= 3 && run.flushCount > 100 && run.batchCount > 300,
                "seed \(seed): depth \(run.depthMax), \(run.flushCount) flushes, \(run.batchCount) batches, up to \(run.modelCountMax) entries, \(run.cache.statistics)")
        if seed % 2 == 1 { #expect(run.cache.evictions > 0 && run.cache.misses > 0, "seed \(seed): \(run.cache.statistics)") }
        print("index model seed \(seed): depth \(run.depthMax), \(run.flushCount) flushes, \(run.batchCount) batches, up to \(run.modelCountMax) entries, \(run.cache.statistics)")
    }

    /// Sequential keys (FIDs in creation order), then deletes of every other key and of a prefix
    /// range: appends split near the end, deletes merge and redistribute up to the root.
    @Test func sequentialFillAndDrain() throws {
        let store = CountingMetadataStore()
        var tree = IndexTree(store: store, name: "seq")
        func fidKey(_ index: Int) -> [UInt8] { withUnsafeBytes(of: UInt64(index).bigEndian) { Array($0) } + [0, 0, 0, 1] }
        for index in 0..<20_000 { try tree.insert(fidKey(index), [UInt8](repeating: 1, count: 16)) }
        var root = try tree.flush()
        var check = tree.verify()
        #expect(check.isClean && check.entryCount == 20_000, "\(check.problems.prefix(3))")
        #expect(check.fillRatio > 0.6, "sequential inserts fill nodes to \(check.fillRatio)")
        tree = try IndexTree(root: root, store: store, name: "seq")
        for index in stride(from: 0, to: 20_000, by: 2) { try tree.delete(fidKey(index)) }
        for index in stride(from: 1, to: 15_000, by: 2) { try tree.delete(fidKey(index)) }
        root = try tree.flush()
        check = tree.verify()
        #expect(check.isClean && check.entryCount == 2_500, "\(check.problems.prefix(3))")
        #expect(Set(check.blockPointers.map(\.offsetBytes)) == store.liveOffsets)
        for index in stride(from: 15_001, to: 20_000, by: 2) { try tree.delete(fidKey(index)) }
        root = try tree.flush()
        #expect(tree.count == 0 && tree.depth == 1 && store.liveOffsets == [root.offsetBytes])
    }
}
