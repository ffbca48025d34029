// IndexTreeTests — the index tree's format, copy-on-write, cookies, bad input, corruption and
// memory budget. The seeded model-based workload is in IndexTreeModelTests.swift.

import Foundation
import Synchronization
import Testing
import StrataPool
import StrataTesting
@testable import StrataDMU

/// A MemoryMetadataStore that counts writes and frees (and can be told to fail writes).
final class CountingMetadataStore: MetadataStore {
    let inner = MemoryMetadataStore()
    private let counters = Mutex((writes: 0, frees: 0, failWrites: false))

    var writeCount: Int { counters.withLock { $0.writes } }
    var freeCount: Int { counters.withLock { $0.frees } }
    func failWrites(_ fail: Bool) { counters.withLock { $0.failWrites = fail } }

    func writeNew(_ bytes: UnsafeRawBufferPointer) throws(MetadataStoreError) -> BlockPointer {
        let fail = counters.withLock { counters in
            if !counters.failWrites { counters.writes += 1 }
            return counters.failWrites
        }
        if fail { throw .noSpace("test store: writes disabled") }
        return try inner.writeNew(bytes)
    }

    func read(_ pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError) {
        try inner.read(pointer, into: buffer)
    }

    func free(_ pointer: BlockPointer) {
        counters.withLock { $0.frees += 1 }
        inner.free(pointer)
    }

    /// Offsets of blocks written and not freed.
    var liveOffsets: Set<UInt64> {
        inner.state.withLock { state in Set(state.blocks.keys).subtracting(state.freed) }
    }
    var freedOffsets: Set<UInt64> { inner.state.withLock { $0.freed } }
    func block(_ pointer: BlockPointer) -> [UInt8] { inner.state.withLock { $0.blocks[pointer.offsetBytes] ?? [] } }
}

func key(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Keys "key-000000" ... in order, with values that name them.
func fill(_ tree: IndexTree, count: Int, valueBytes: Int = 24, offset: Int = 0) throws {
    for index in offset..<(offset + count) {
        let name = "key-" + String(repeating: "0", count: 6 - String(index).count) + String(index)
        var value = Array(name.utf8)
        value += [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: max(0, valueBytes - value.count))
        try tree.insert(Array(name.utf8), Array(value.prefix(valueBytes)))
    }
}

@Suite struct IndexTreeTests {
    // MARK: Format

    @Test func formatConstants() {
        #expect(IndexNodeFormat.headerBytes == 24)
        #expect(IndexNodeFormat.pointerBytes == 32)
        #expect(IndexNodeFormat.payloadBytes == 4072)
        #expect(IndexNodeFormat.leafEntryBytesMax == 1284)
        #expect(IndexNodeFormat.branchEntryBytesMax == 290)
        #expect(IndexNodeFormat.fillBytesMin == 1394)
        // Three maximal leaf entries fit one node: the split/merge argument needs it.
        #expect(3 * IndexNodeFormat.leafEntryBytesMax <= IndexNodeFormat.payloadBytes)
        #expect(IndexTree.keyBytesMax == 255 && IndexTree.valueBytesMax == 1024 && IndexTree.nodeBytes == 4096)
    }

    @Test func leafGoldenBytes() throws {
        let store = CountingMetadataStore()
        let tree = IndexTree(store: store, name: "golden")
        try tree.insert(key("bc"), [])
        try tree.insert(key("a"), [1, 2])
        let root = try tree.flush()
        let bytes = store.block(root)
        #expect(bytes.count == 4096)
        let header: [UInt8] = [0x53, 0x54, 0x49, 0x58,   // "STIX"
                               0x01, 0x00,               // version 1
                               0x00, 0x00,               // level 0, reserved
                               0x02, 0x00,               // 2 entries
                               0xF5, 0x0F,               // heap start 4085
                               0x00, 0x00, 0x00, 0x00,   // garbage, reserved
                               0x02, 0, 0, 0, 0, 0, 0, 0, // tree entry count 2 (root)
                               0xF5, 0x0F, 0xFB, 0x0F]   // slots: 4085 ("a"), 4091 ("bc")
        #expect(Array(bytes[0..<28]) == header)
        #expect(bytes[28..<4085].allSatisfy { $0 == 0 })
        #expect(Array(bytes[4085...]) == [0x01, 0x02, 0x00, 0x61, 0x01, 0x02,   // "a" → [1, 2]
                                          0x02, 0x00, 0x00, 0x62, 0x63])        // "bc" → []
    }

    @Test func branchGoldenBytes() throws {
        let pointer = BlockPointer(deviceIndex: 3, offsetBytes: 0x1122_3344_5566_7788, lengthBytes: 4096,
                                   birthCheckpoint: 9, checksum: 0xA1B2_C3D4)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        let entry = [UInt8](key("k").withUnsafeBytes { IndexNodePage.encodeBranchEntry(key: $0, pointer: pointer, into: buffer) })
        #expect(entry == [0x01, 0x6B,
                          0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,   // offset
                          0x00, 0x10, 0, 0, 0, 0, 0, 0,                     // length 4096
                          0x09, 0, 0, 0, 0, 0, 0, 0,                        // birth checkpoint
                          0x03, 0x00, 0x00, 0x00,                           // device 3, reserved
                          0xD4, 0xC3, 0xB2, 0xA1])                          // crc32c
        entry.withUnsafeBytes { #expect(IndexNodePage.decodePointer($0, at: 2) == pointer) }

        // A two-level tree: the root branch's first separator is the empty key (its lower bound).
        let store = CountingMetadataStore()
        let tree = IndexTree(store: store, name: "branch")
        try fill(tree, count: 200)
        #expect(tree.depth == 2)
        let root = try tree.flush()
        let bytes = store.block(root)
        #expect(bytes[6] == 1)                                             // level 1
        let firstSlot = Int(bytes[24]) | Int(bytes[25]) << 8
        #expect(bytes[firstSlot] == 0)                                     // empty first separator
        #expect(tree.verify().isClean)
    }

    // MARK: Operations and bad input

    @Test func insertLookupDeleteModes() throws {
        let tree = IndexTree(store: CountingMetadataStore(), name: "ops")
        try tree.insert(key("alpha"), key("1"))
        #expect(try tree.lookup(key("alpha")) == key("1"))
        #expect(try tree.lookup(key("beta")) == nil)                        // a missing key is nil, not an error
        #expect(throws: IndexTreeError.keyExists(tree: "ops", key: key("alpha"))) { try tree.insert(key("alpha"), key("2")) }
        try tree.insert(key("alpha"), key("2"), mode: .upsert)
        #expect(try tree.lookup(key("alpha")) == key("2"))
        try tree.insert(key(""), key("empty key"))                         // the empty key is a key
        #expect(try tree.lookup([]) == key("empty key"))
        #expect(tree.count == 2)
        try tree.delete(key("alpha"))
        #expect(throws: IndexTreeError.keyNotFound(tree: "ops", key: key("alpha"))) { try tree.delete(key("alpha")) }
        let containsEmpty = try tree.contains([])
        #expect(tree.count == 1 && containsEmpty)
    }

    @Test func oversizedKeyAndValueAreNamed() throws {
        let tree = IndexTree(store: CountingMetadataStore(), name: "limits")
        try tree.insert([UInt8](repeating: 7, count: 255), [UInt8](repeating: 1, count: 1024))   // at the limits: fine
        do {
            try tree.insert([UInt8](repeating: 7, count: 256), [])
            Issue.record("256-byte key accepted")
        } catch {
            #expect(error == .keyTooLong(tree: "limits", keyBytes: 256, keyBytesMax: 255))
            #expect(error.description.contains("256") && error.description.contains("255") && error.description.contains("limits"))
        }
        do {
            try tree.insert(key("k"), [UInt8](repeating: 0, count: 1025))
            Issue.record("1025-byte value accepted")
        } catch {
            #expect(error == .valueTooLong(tree: "limits", key: key("k"), valueBytes: 1025, valueBytesMax: 1024))
            #expect(error.description.contains("1025") && error.description.contains("1024") && error.description.contains("\"k\""))
        }
        #expect(throws: IndexTreeError.keyTooLong(tree: "limits", keyBytes: 300, keyBytesMax: 255)) { try tree.lookup([UInt8](repeating: 0, count: 300)) }
        #expect(throws: IndexTreeError.keyTooLong(tree: "limits", keyBytes: 300, keyBytesMax: 255)) { try tree.delete([UInt8](repeating: 0, count: 300)) }
        #expect(throws: IndexTreeError.self) { try IndexCookie(encoded: [2, 1], tree: "limits") }
        #expect(throws: IndexTreeError.self) { try IndexCookie(encoded: [], tree: "limits") }
        #expect(tree.count == 1 && tree.verify().isClean)
    }

    @Test func maximalEntriesSplitAndMerge() throws {
        let store = CountingMetadataStore()
        let tree = IndexTree(store: store, name: "big")
        for index in 0..<60 {
            try tree.insert([UInt8](repeating: UInt8(index), count: 255), [UInt8](repeating: UInt8(index), count: 1024))
        }
        #expect(tree.depth >= 2)
        var check = tree.verify()
        #expect(check.isClean, "\(check.problems)")
        for index in stride(from: 0, to: 60, by: 2) { try tree.delete([UInt8](repeating: UInt8(index), count: 255)) }
        try tree.flush()
        check = tree.verify()
        #expect(check.isClean && check.entryCount == 30, "\(check.problems)")
        #expect(check.blockPointers.count == store.liveOffsets.count)
    }

    // MARK: Copy-on-write

    @Test func flushIsCopyOnWriteAndFreesOldBlocksOnce() throws {
        let store = CountingMetadataStore()
        let tree = IndexTree(store: store, name: "cow")
        try fill(tree, count: 2000)
        let firstRoot = try tree.flush()
        let firstBlocks = Set(tree.verify().blockPointers.map(\.offsetBytes))
        #expect(firstBlocks == store.liveOffsets && store.freeCount == 0)

        // An unchanged tree writes nothing; an upsert of the same value changes nothing.
        let writes = store.writeCount
        try tree.insert(key("key-000005"), try #require(try tree.lookup(key("key-000005"))), mode: .upsert)
        let sameRoot = try tree.flush()
        #expect(sameRoot == firstRoot && store.writeCount == writes && !tree.isDirty)

        // Change one leaf: exactly the path from it to the root is rewritten and freed.
        try tree.insert(key("key-001000x"), key("new"))
        let secondRoot = try tree.flush()
        #expect(secondRoot != firstRoot && store.writeCount == writes + tree.depth)
        #expect(store.freeCount == tree.depth)
        let secondBlocks = Set(tree.verify().blockPointers.map(\.offsetBytes))
        #expect(secondBlocks == store.liveOffsets)
        #expect(firstBlocks.subtracting(secondBlocks) == store.freedOffsets)

        // Many deletes (merges, a lower root): every old block freed exactly once (the store traps
        // on a double free), nothing leaked, and the new root reloads to the same content.
        for index in stride(from: 0, to: 2000, by: 3) { try tree.delete(key("key-" + String(repeating: "0", count: 6 - String(index).count) + String(index))) }
        let thirdRoot = try tree.flush()
        let check = tree.verify()
        #expect(check.isClean, "\(check.problems)")
        #expect(Set(check.blockPointers.map(\.offsetBytes)) == store.liveOffsets)
        let reloaded = try IndexTree(root: thirdRoot, store: store, name: "cow")
        #expect(reloaded.count == tree.count)
        #expect(try reloaded.entries() == tree.entries())
        // The first checkpoint's root is still readable until its blocks are reused: COW never
        // wrote over it. (Its frees are deferred by the pool; the memory store keeps the bytes.)
        let old = try IndexTree(root: firstRoot, store: store, name: "cow-old")
        let oldValue = try old.lookup(key("key-000000"))
        #expect(old.count == 2000 && oldValue != nil)
    }

    @Test func failedFlushLeavesTheTreeWholeAndRetryable() throws {
        let store = CountingMetadataStore()
        let tree = IndexTree(store: store, name: "retry")
        try fill(tree, count: 500)
        try tree.flush()
        try fill(tree, count: 500, offset: 500)
        store.failWrites(true)
        #expect(throws: IndexTreeError.self) { try tree.flush() }
        #expect(tree.isDirty && tree.checkPinnedAccounting())
        store.failWrites(false)
        let root = try tree.flush()
        let check = tree.verify()
        #expect(check.isClean && check.entryCount == 1000, "\(check.problems)")
        #expect(Set(check.blockPointers.map(\.offsetBytes)) == store.liveOffsets)
        #expect(try IndexTree(root: root, store: store, name: "retry").entries().entries.count == 1000)
    }

    // MARK: Corruption

    @Test func corruptedNodeIsDetectedAndNamed() throws {
        let store = CountingMetadataStore()
        let tree = IndexTree(store: store, name: "oi.7")
        try fill(tree, count: 1000)
        let root = try tree.flush()
        let leaf = try #require(tree.verify().blockPointers.last)
        store.inner.corrupt(leaf, byteOffset: 2000)
        let reloaded = try IndexTree(root: root, store: store, name: "oi.7")
        var caught: IndexTreeError?
        do { _ = try reloaded.entries() } catch { caught = error }
        #expect(caught == .checksumMismatch(tree: "oi.7", pointer: leaf, found: caught.flatMap {
            if case .checksumMismatch(_, _, let found) = $0 { return found } else { return nil }
        } ?? 0))
        #expect(caught?.description.contains("oi.7") == true && caught?.description.contains("offset \(leaf.offsetBytes)") == true)
        let check = reloaded.verify()
        #expect(check.problems.contains { if case .checksumMismatch(_, let pointer, _) = $0 { pointer == leaf } else { false } })
        // A corrupt root is refused at load.
        store.inner.corrupt(root, byteOffset: 10)
        #expect(throws: IndexTreeError.self) { try IndexTree(root: root, store: store, name: "oi.7") }
    }

    @Test func wellChecksummedButMalformedNodeIsRefused() throws {
        let store = MemoryMetadataStore()
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
        defer { page.deallocate() }
        let node = IndexNodePage(page)
        node.initialize(level: 0)
        page[0] = 0x00                                                     // bad magic
        let badMagic = try store.writeNew(UnsafeRawBufferPointer(page))
        #expect(throws: IndexTreeError.self) { try IndexTree(root: badMagic, store: store, name: "m") }
        node.initialize(level: 0)
        node.heapStart = 12                                               // heap inside the header
        let badHeap = try store.writeNew(UnsafeRawBufferPointer(page))
        do {
            _ = try IndexTree(root: badHeap, store: store, name: "m")
            Issue.record("malformed node accepted")
        } catch {
            guard case .malformedNode(let tree, let pointer, let reason) = error else { Issue.record("\(error)"); return }
            #expect(tree == "m" && pointer == badHeap && reason.contains("heap start"))
        }
    }

    // MARK: Iteration

    @Test func iterationFromKeysAndCookies() throws {
        let tree = IndexTree(store: CountingMetadataStore(), name: "iter")
        try fill(tree, count: 1000)
        let all = try tree.entries()
        #expect(all.entries.count == 1000 && all.reachedEnd)
        #expect(all.entries.map(\.key) == all.entries.map(\.key).sorted { $0.lexicographicallyPrecedes($1) })
        let from = try tree.entries(from: .atOrAfter(key("key-000500x")), limit: 2)
        #expect(from.entries.map(\.key) == [key("key-000501"), key("key-000502")] && !from.reachedEnd)
        let cookie = try #require(from.cookie)
        #expect(cookie.lastKey == key("key-000502"))
        let decoded = try IndexCookie(encoded: cookie.encoded)
        #expect(decoded == cookie)
        #expect(try tree.entries(from: .after(decoded), limit: 1).entries.map(\.key) == [key("key-000503")])
        // Stopping without consuming: that entry comes first on resume.
        var seen = 0
        let scan = try tree.iterate(from: .first) { _, _ in seen += 1; return seen <= 3 }
        #expect(scan.consumedCount == 3 && scan.cookie?.lastKey == key("key-000002") && !scan.reachedEnd)
        let resumed = try tree.entries(from: .after(try #require(scan.cookie)), limit: 1)
        #expect(resumed.entries.first?.key == key("key-000003"))
    }

    @Test func cookiesSurviveChangesFlushesAndReloads() throws {
        let store = CountingMetadataStore()
        var tree = IndexTree(store: store, name: "readdir")
        try fill(tree, count: 3000)
        var returned: [[UInt8]] = []
        var cookie: IndexCookie? = nil
        var round = 0
        var stable = Set((0..<3000).map { index in key("key-" + String(repeating: "0", count: 6 - String(index).count) + String(index)) })
        while true {
            let batch = try tree.entries(from: cookie.map { .after($0) } ?? .first, limit: 97)
            returned += batch.entries.map(\.key)
            cookie = batch.cookie ?? cookie
            if batch.reachedEnd { break }
            // Between batches: delete keys ahead and behind, insert keys ahead and behind.
            round += 1
            for step in 0..<20 {
                let index = (round * 131 + step * 17) % 3000
                let name = key("key-" + String(repeating: "0", count: 6 - String(index).count) + String(index))
                if (try? tree.delete(name)) != nil { stable.remove(name) }
                try tree.insert(key("key-\(index)-new-\(round)"), key("v"), mode: .upsert)
            }
            if round % 5 == 0 {
                let root = try tree.flush()
                tree = try IndexTree(root: root, store: store, name: "readdir")
            }
        }
        #expect(returned == returned.sorted { $0.lexicographicallyPrecedes($1) }, "keys out of order across batches")
        #expect(Set(returned).count == returned.count, "a key returned twice")
        #expect(stable.isSubset(of: Set(returned)), "a key present throughout was skipped")
        #expect(tree.verify().isClean)
    }

    // MARK: Memory budget

    @Test func cacheStaysWithinItsBudget() throws {
        let store = CountingMetadataStore()
        let budget = 16 * 4096
        let cache = IndexNodeCache(budgetBytes: budget)
        let builder = IndexTree(store: store, name: "budget", cache: cache)
        try fill(builder, count: 5000)
        let root = try builder.flush()
        #expect(cache.residentBytes <= budget)
        let tree = try IndexTree(root: root, store: store, name: "budget", cache: cache)
        var random = SeededRandom(seed: 42)
        for _ in 0..<3000 {
            let index = Int(random.next() % 5000)
            let name = key("key-" + String(repeating: "0", count: 6 - String(index).count) + String(index))
            #expect(try tree.lookup(name) != nil)
            #expect(cache.residentBytes <= budget, "\(cache.statistics)")
        }
        let stats = cache.statistics
        #expect(stats.hits > 0 && stats.misses > 0 && stats.evictions > 0, "\(stats)")
        // Dirty nodes are pinned: the budget gives way only when no clean node is left.
        for index in 0..<400 { try tree.delete(key("key-" + String(repeating: "0", count: 6 - String(index * 7).count) + String(index * 7))) }
        #expect(cache.cleanBytes == 0 || cache.residentBytes <= budget, "\(cache.statistics)")
        #expect(tree.checkPinnedAccounting())
        try tree.flush()
        #expect(cache.residentBytes <= budget, "\(cache.statistics)")
        // A warm cache: a second lookup of the same key is a hit.
        let hits = cache.hits
        _ = try tree.lookup(key("key-000001"))
        _ = try tree.lookup(key("key-000001"))
        #expect(cache.hits > hits)
    }
}
