// DnodeCache: hits, misses and counters; eviction under the memory bound; dirty dnodes and
// tombstones pinned until their checkpoint is durable; CLOCK keeps referenced entries; threads;
// the open-addressing table under growth and backward-shift deletion; a seeded model test.

import Foundation
import StrataTesting
import Testing
import StrataPool
@testable import StrataDMU

@Suite struct DnodeCacheTests {
    static func lustreDnode(_ object: UInt64) -> Dnode {
        var dnode = Dnode(objectNumber: object, type: .regular)
        try! dnode.setXattr("trusted.lma", LustreXattrs.lma, store: MemoryMetadataStore())
        try! dnode.setXattr("trusted.fid", LustreXattrs.fid, store: MemoryMetadataStore())
        return dnode
    }

    @Test func hitsMissesAndCounters() {
        let cache = DnodeCache()
        #expect(cache.lookup(1) == .absent)
        cache.insertClean(Self.lustreDnode(1))
        #expect(cache.lookup(1) == .present(Self.lustreDnode(1)))
        #expect(cache.dnode(1)?.objectNumber == 1)
        #expect(cache.withDnode(1) { $0.nlink } == 1)
        let statistics = cache.statistics
        #expect(statistics.misses == 1 && statistics.hits == 3 && statistics.insertions == 1)
        #expect(statistics.cachedCount == 1 && statistics.dirtyCount == 0 && statistics.residentBytes > 0)
    }

    /// A `withDnode` body the compiler does not inline: the cache moves the dnode out and back.
    @inline(never)
    static func xattrBytesAndExtents(_ dnode: borrowing Dnode) -> [UInt8] {
        var bytes = dnode.systemAttributes.inlineBytes
        if case .inline(let extents) = dnode.extentMap { bytes += extents }
        return bytes
    }

    @Test func withDnodeLendsTheStoredDnodeAndLeavesItInPlace() {
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 64 << 20, shardCount: 4))
        var expected: [UInt64: Dnode] = [:]
        for object in 0 ..< UInt64(2000) {
            var dnode = Self.lustreDnode(object)
            dnode.sizeBytes = object &* 7
            dnode.extentMap = .inline([UInt8](repeating: UInt8(truncatingIfNeeded: object), count: 40))
            if object % 3 == 0 { cache.update(dnode, dirtyIn: 5) } else { cache.insertClean(dnode) }
            expected[object] = dnode
        }
        for object in stride(from: UInt64(1), to: 2000, by: 10) {
            cache.destroy(object, dirtyIn: 5)
            expected[object] = nil
        }
        // Every path reads the dnode's heap arrays, twice, inlined body and called body: the
        // moves out and back leave the slot as it was.
        for _ in 0 ..< 2 {
            for object in 0 ..< UInt64(2100) {
                let inlined = cache.withDnode(object) { dnode in (dnode.sizeBytes, dnode.systemAttributes.inlineBytes, dnode.extentMap) }
                let called = cache.withDnode(object, Self.xattrBytesAndExtents)
                if let dnode = expected[object] {
                    #expect(inlined?.0 == dnode.sizeBytes && inlined?.1 == dnode.systemAttributes.inlineBytes && inlined?.2 == dnode.extentMap)
                    #expect(called == Self.xattrBytesAndExtents(dnode))
                    #expect(cache.lookup(object) == .present(dnode))
                } else {
                    #expect(inlined == nil && called == nil, "object \(object): destroyed or never cached")
                }
            }
        }
        // Hits and misses: 2000 cached (200 of them tombstones, which count as hits), 100 never cached.
        let statistics = cache.statistics
        let dirtyCount = (0 ..< UInt64(2000)).filter { $0 % 3 == 0 || $0 % 10 == 1 }.count
        #expect(statistics.hits == 2 * 3 * 2000 - 2 * 200 && statistics.misses == 2 * 2 * 100, "\(statistics)")
        #expect(statistics.cachedCount == 2000 && statistics.dirtyCount == dirtyCount, "\(statistics)")
    }

    @Test func cleanEntriesAreEvictedUnderTheBound() {
        let settings = DnodeCacheSettings(memoryBytesMax: 1 << 20, shardCount: 4)
        let cache = DnodeCache(settings: settings)
        for object in 0 ..< UInt64(20_000) { cache.insertClean(Self.lustreDnode(object)) }
        let statistics = cache.statistics
        #expect(statistics.residentBytes <= settings.memoryBytesMax, "\(statistics.residentBytes) bytes resident")
        #expect(statistics.evictions > 0 && statistics.cachedCount + Int(statistics.evictions) == 20_000)
        #expect(statistics.cachedCount > 1000, "the bound holds thousands of dnodes: \(statistics.cachedCount)")
    }

    @Test func dirtyDnodesArePinnedUntilTheirCheckpointIsDurable() {
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 256 << 10, shardCount: 1))
        // 3000 dirty dnodes: more than the bound holds; none may go.
        for object in 0 ..< UInt64(3000) {
            var dnode = Self.lustreDnode(object)
            dnode.sizeBytes = object
            cache.update(dnode, dirtyIn: object < 2000 ? 5 : 6)
        }
        var statistics = cache.statistics
        #expect(statistics.evictions == 0 && statistics.cachedCount == 3000 && statistics.dirtyCount == 3000)
        #expect(statistics.residentBytes > 256 << 10 && statistics.overBudgetInserts > 0)
        cache.destroy(7, dirtyIn: 6)
        #expect(cache.lookup(7) == .destroyed)

        let forFive = cache.dirtyDnodes(for: 5)
        #expect(forFive.count == 1999 && forFive.map(\.objectNumber) == (0 ..< 2000).filter { $0 != 7 }.map { UInt64($0) })
        #expect(forFive.allSatisfy { $0.checkpoint == 5 && $0.dnode?.sizeBytes == $0.objectNumber })
        let forSix = cache.dirtyDnodes(for: 6)
        #expect(forSix.count == 3000 && forSix.first { $0.objectNumber == 7 }?.dnode == nil)

        cache.markClean(through: 5)
        statistics = cache.statistics
        #expect(statistics.dirtyCount == 1001, "checkpoint 6's entries (and the tombstone) stay")
        #expect(statistics.evictions > 0 && statistics.residentBytes >= statistics.dirtyBytes)
        #expect(cache.lookup(7) == .destroyed)
        for object in UInt64(2000) ..< 3000 { #expect(cache.dnode(object)?.sizeBytes == object) }

        cache.markClean(through: 6)
        #expect(cache.lookup(7) == .absent, "tombstone dropped once its checkpoint is durable")
        statistics = cache.statistics
        #expect(statistics.dirtyCount == 0 && statistics.dirtyBytes == 0 && statistics.residentBytes <= 256 << 10)
    }

    @Test func redirtiedDuringACheckpointStaysDirty() {
        let cache = DnodeCache()
        cache.update(Self.lustreDnode(1), dirtyIn: 3)
        let snapshot = cache.dirtyDnodes(for: 3)
        var changed = Self.lustreDnode(1)
        changed.sizeBytes = 100
        cache.update(changed, dirtyIn: 4)       // a transaction of the next checkpoint
        cache.markClean(through: 3)
        #expect(snapshot.count == 1 && snapshot[0].dnode?.sizeBytes == 0)
        #expect(cache.dirtyDnodes(for: 4).map(\.dnode?.sizeBytes) == [100])
        #expect(cache.insertClean(Self.lustreDnode(1)) == .present(changed), "a stale disk copy does not replace the cached one")
    }

    @Test func clockKeepsReferencedEntries() {
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 128 << 10, shardCount: 1))
        for object in 0 ..< UInt64(100) { cache.insertClean(Self.lustreDnode(object)) }
        // A scan of cold objects, while the first 100 stay hot.
        for object in UInt64(1000) ..< 5000 {
            cache.insertClean(Self.lustreDnode(object))
            if object % 4 == 0 { for hot in 0 ..< UInt64(100) where hot % 10 == object % 40 / 4 { _ = cache.lookup(hot) } }
            if object % 40 == 0 { for hot in 0 ..< UInt64(100) { _ = cache.lookup(hot) } }
        }
        let hotCached = (0 ..< UInt64(100)).filter { cache.dnode($0) != nil }.count
        #expect(hotCached >= 90, "hot dnodes survive a scan: \(hotCached) of 100")
    }

    @Test func concurrentLookupsAndUpdates() async {
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 4 << 20))
        for object in 0 ..< UInt64(1000) { cache.insertClean(Self.lustreDnode(object)) }
        await withTaskGroup(of: Void.self) { group in
            for worker in 0 ..< 4 {
                group.addTask {
                    for step in 0 ..< 20_000 {
                        let object = UInt64((step * 7 + worker * 13) % 1000)
                        if step % 10 == 0 {
                            var dnode = Self.lustreDnode(object)
                            dnode.sizeBytes = UInt64(step)
                            cache.update(dnode, dirtyIn: 2)
                        } else {
                            _ = cache.lookup(object)
                        }
                    }
                }
            }
        }
        let statistics = cache.statistics
        #expect(statistics.hits + statistics.misses == 4 * 18_000)
        #expect(statistics.misses == 0 && statistics.cachedCount == 1000)
    }

    @Test func tableGrowsAndFindsEveryObject() {
        // One shard, no eviction: 50,000 inserts take the bucket array from 64 buckets through
        // ten doublings and the entry array through twelve.
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 1 << 30, shardCount: 1))
        let objects = (0 ..< UInt64(50_000)).map { $0 &* 7919 &+ ($0 << 32) }   // sparse, 64-bit keys
        for object in objects {
            var dnode = Dnode(objectNumber: object, type: .regular)
            dnode.sizeBytes = object ^ 0x5A5A
            cache.insertClean(dnode)
        }
        #expect(cache.statistics.cachedCount == objects.count && cache.statistics.evictions == 0)
        var wrong = 0
        for object in objects where cache.withDnode(object, { $0.sizeBytes }) != object ^ 0x5A5A { wrong += 1 }
        #expect(wrong == 0, "\(wrong) objects not found after growth")
        for object in objects.prefix(1000) { #expect(cache.lookup(object &+ 1) == .absent) }
    }

    @Test func removalsKeepEveryProbeChainReachable() {
        // Backward-shift deletion: after removing any subset, every remaining key is still found
        // and every removed one misses; freed slots are reused.
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 1 << 30, shardCount: 1))
        let count = UInt64(20_000)
        for object in 0 ..< count { cache.insertClean(Dnode(objectNumber: object, type: .regular)) }
        let residentFull = cache.statistics.residentBytes
        for object in 0 ..< count where object % 3 != 1 { cache.invalidate(object) }
        for object in 0 ..< count {
            #expect((cache.dnode(object) != nil) == (object % 3 == 1), "object \(object)")
        }
        #expect(cache.statistics.cachedCount == Int((count + 1) / 3))
        for object in 0 ..< count where object % 3 != 1 { cache.insertClean(Dnode(objectNumber: object, type: .regular)) }
        for object in 0 ..< count { #expect(cache.dnode(object)?.objectNumber == object) }
        #expect(cache.statistics.cachedCount == Int(count) && cache.statistics.residentBytes == residentFull)
        for object in 0 ..< count { cache.invalidate(object) }
        #expect(cache.statistics.cachedCount == 0 && cache.statistics.residentBytes == 0)
        #expect(cache.lookup(0) == .absent)
    }

    @Test func evictionLeavesTheTableConsistent() {
        // Eviction removes through the same path as invalidate: whatever is still cached is
        // found with its own contents, and the count matches what lookups find.
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 512 << 10, shardCount: 2))
        for object in 0 ..< UInt64(30_000) {
            var dnode = Self.lustreDnode(object)
            dnode.sizeBytes = object
            cache.insertClean(dnode)
            if object % 7 == 0 { _ = cache.lookup(object / 2) }
        }
        let statistics = cache.statistics
        #expect(statistics.evictions > 0 && statistics.residentBytes <= 512 << 10)
        var found = 0
        for object in 0 ..< UInt64(30_000) {
            if let size = cache.withDnode(object, { $0.sizeBytes }) {
                found += 1
                #expect(size == object)
            }
        }
        #expect(found == statistics.cachedCount)
    }

    @Test func seededWorkloadMatchesAModel() {
        // Random inserts, updates, destroys, invalidations and checkpoints over 2,000 objects,
        // against a dictionary model; no eviction (the bound is large), so the cache must hold
        // exactly the model. Replays from the printed seed.
        let seed = UInt64.random(in: 1 ... UInt64.max)
        var generator = SeededRandom(seed: seed)
        let cache = DnodeCache(settings: DnodeCacheSettings(memoryBytesMax: 1 << 30, shardCount: 4))
        enum Model: Equatable { case present(UInt64, dirty: UInt64), destroyed }
        var model: [UInt64: Model] = [:]
        var checkpoint: UInt64 = 1
        for step in 0 ..< 40_000 {
            let object = generator.next() % 2000
            let size = generator.next() % 1_000_000
            var dnode = Dnode(objectNumber: object, type: .regular)
            dnode.sizeBytes = size
            switch generator.next() % 10 {
            case 0 ... 3:
                cache.insertClean(dnode)
                if model[object] == nil { model[object] = .present(size, dirty: 0) }
            case 4 ... 5:
                cache.update(dnode, dirtyIn: checkpoint)
                model[object] = .present(size, dirty: checkpoint)
            case 6:
                cache.destroy(object, dirtyIn: checkpoint)
                model[object] = .destroyed
            case 7:
                if case .present(_, dirty: 0) = model[object] {
                    cache.invalidate(object)
                    model[object] = nil
                } else if model[object] == nil {
                    cache.invalidate(object)
                }
            case 8:
                if step % 50 == 0 {
                    let dirty = cache.dirtyDnodes(for: checkpoint)
                    let expected = model.filter {
                        switch $0.value { case .present(_, let dirty): dirty != 0; case .destroyed: true }
                    }
                    #expect(dirty.map(\.objectNumber) == expected.keys.sorted(), "seed \(seed), step \(step)")
                    cache.markClean(through: checkpoint)
                    for (key, value) in model {
                        switch value {
                        case .present(let size, _): model[key] = .present(size, dirty: 0)
                        case .destroyed: model[key] = nil
                        }
                    }
                    checkpoint += 1
                }
            default:
                switch model[object] {
                case .present(let size, _)?:
                    #expect(cache.withDnode(object) { $0.sizeBytes } == size, "seed \(seed), step \(step), object \(object)")
                case .destroyed?: #expect(cache.lookup(object) == .destroyed, "seed \(seed), step \(step), object \(object)")
                case nil: #expect(cache.lookup(object) == .absent, "seed \(seed), step \(step), object \(object)")
                }
            }
        }
        for object in 0 ..< UInt64(2000) {
            let found = cache.lookup(object)
            switch model[object] {
            case .present(let size, _)?:
                #expect(cache.withDnode(object) { $0.sizeBytes } == size, "seed \(seed), object \(object)")
            case .destroyed?: #expect(found == .destroyed, "seed \(seed), object \(object)")
            case nil: #expect(found == .absent, "seed \(seed), object \(object)")
            }
        }
        #expect(cache.statistics.cachedCount == model.count && cache.statistics.evictions == 0, "seed \(seed)")
    }
}
