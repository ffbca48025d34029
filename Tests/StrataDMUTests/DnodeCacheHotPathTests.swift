// The dnode cache's hot path allocates nothing: a cached lookup (hit) of a Lustre-shaped dnode,
// counted by the AllocCounter malloc interposer. Runs in optimized builds only (a debug build
// boxes closure contexts); `scripts/test.sh` runs the HotPath suites in a release build.

import AllocCounter
import Testing
import StrataPool
@testable import StrataDMU

@Suite struct DnodeCacheHotPathTests {
    @Test(.enabled(if: optimizedBuild, "measured in the release run of scripts/test.sh (debug builds box closures)"))
    func cachedLookupAllocatesNothing() throws {
        let cache = DnodeCache()
        let store = MemoryMetadataStore()
        for object in 0 ..< UInt64(4096) {
            var dnode = Dnode(objectNumber: object, type: .regular)
            try dnode.setXattr("trusted.lma", LustreXattrs.lma, store: store)
            try dnode.setXattr("trusted.fid", LustreXattrs.fid, store: store)
            dnode.extentMap = .inline([UInt8](repeating: 0, count: 40))
            cache.insertClean(dnode)
        }
        var checksum: UInt64 = 0
        for object in 0 ..< UInt64(4096) { checksum &+= cache.dnode(object)?.sizeBytes ?? 1 }   // warm-up
        let before = AllocCounter_thread()
        for round in 0 ..< 10 {
            for object in 0 ..< UInt64(4096) {
                if case .present(let dnode) = cache.lookup(object &* 2_654_435_761 % 4096) { checksum &+= dnode.generation &+ UInt64(round) }
            }
        }
        let allocations = AllocCounter_thread() - before
        #expect(allocations == 0, "\(allocations) heap allocations in 40960 cached lookups")
        #expect(checksum > 0 && cache.statistics.hits == 4096 * 11)

        // The borrowing path (what callers use) allocates nothing either.
        let beforeBorrowing = AllocCounter_thread()
        for round in 0 ..< 10 {
            for object in 0 ..< UInt64(4096) {
                checksum &+= cache.withDnode(object &* 2_654_435_761 % 4096) { $0.generation &+ UInt64(round) } ?? 1
            }
        }
        let borrowingAllocations = AllocCounter_thread() - beforeBorrowing
        #expect(borrowingAllocations == 0, "\(borrowingAllocations) heap allocations in 40960 borrowed lookups")
        #expect(cache.statistics.hits == 4096 * 21)

        // The counter counts (otherwise the check above means nothing).
        let counted = AllocCounter_thread()
        let array = [Int](repeating: 1, count: Int.random(in: 100 ... 200))
        #expect(AllocCounter_thread() > counted && array.count >= 100)
    }
}
