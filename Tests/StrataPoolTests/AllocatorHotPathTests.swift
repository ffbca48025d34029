// The allocator's hot path allocates nothing once warm: allocate + free of 1 MiB records and
// 4 KiB blocks, in a pool with mirrored metadata, counted by the AllocCounter malloc interposer.
// Checkpoint cuts are outside the measured spans (they build the encoded blocks: a control-plane
// cost), but they run between them, so the deferred-free lists cycle as in a running pool.
//
// It runs in optimized builds only: a debug build checks every free against the pending lists
// with an assert (which allocates as it iterates) and boxes closure contexts. `scripts/test.sh`
// runs the hot-path suites a second time in a release build with testing enabled, so CI runs it.

import AllocCounter
import Testing
@testable import StrataPool

#if DEBUG
private let optimizedBuild = false
#else
private let optimizedBuild = true
#endif

@Suite struct AllocatorHotPathTests {
    @Test(.enabled(if: optimizedBuild, "measured in the release run of scripts/test.sh (debug asserts allocate)"))
    func allocateAndFreeAllocateNothingAfterWarmUp() throws {
        let gib: UInt64 = 1 << 30
        var policy = PoolPolicy()
        policy.setCopies(2, for: .metadata)
        let allocator = PoolAllocator(devices: [
            AllocatorDevice(index: 0, path: "data0", role: .data, sizeBytes: 4 * gib, reservedRanges: [0..<(1 << 20)]),
            AllocatorDevice(index: 1, path: "meta0", role: .metadata, sizeBytes: gib),
            AllocatorDevice(index: 2, path: "meta1", role: .metadata, sizeBytes: gib),
        ], policy: policy)

        var measured: UInt64 = 0
        var operations = 0
        func round(pairs: Int, measure: Bool) throws {
            for _ in 0..<pairs {
                let before = AllocCounter_thread()
                let record = try allocator.allocate(.data, lengthBytes: 1 << 20)
                let block = try allocator.allocate(.metadata, lengthBytes: 4096)
                allocator.free(record)
                allocator.free(block)
                if measure {
                    measured += AllocCounter_thread() - before
                    operations += 4
                }
            }
            let cut = allocator.beginCheckpoint()
            allocator.checkpointDurable(cut.checkpoint)
        }
        for _ in 0..<6 { try round(pairs: 500, measure: false) }      // warm-up: lists reach their size
        for _ in 0..<10 { try round(pairs: 500, measure: true) }
        #expect(operations == 20_000)
        #expect(measured == 0, "\(measured) heap allocations in \(operations) allocator operations")

        // The counter counts (otherwise the check above means nothing).
        let before = AllocCounter_thread()
        let array = [Int](repeating: 1, count: Int.random(in: 100...200))
        #expect(AllocCounter_thread() > before && array.count >= 100)
    }
}
