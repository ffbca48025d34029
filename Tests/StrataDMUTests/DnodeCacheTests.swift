// DnodeCache: hits, misses and counters; eviction under the memory bound; dirty dnodes and
// tombstones pinned until their checkpoint is durable; CLOCK keeps referenced entries; threads.

import Foundation
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
}
