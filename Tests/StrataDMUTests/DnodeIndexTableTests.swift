// The dnode cache's index table against a Dictionary: random inserts, updates and deletions
// (which shift clusters back), through growth, with the reachability invariant checked.

import Testing
@testable import StrataDMU

@Suite struct DnodeIndexTableTests {
    @Test(arguments: [UInt64(1), 2, 3])
    func matchesADictionaryThroughGrowthAndDeletion(seed: UInt64) {
        var table = DnodeIndexTable()
        var model: [UInt64: Int32] = [:]
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        for step in 0..<40_000 {
            // Keys from a small range (collisions, clusters) and dense object numbers.
            let key = step % 3 == 0 ? next() % 5_000 : next() % 200_000
            if next() % 3 == 0 {
                table[key] = nil
                model[key] = nil
            } else {
                let slot = Int32(truncatingIfNeeded: next() % 1_000_000)
                table[key] = slot
                model[key] = slot
            }
            if step % 5_000 == 0 { #expect(table.problems().isEmpty, "\(table.problems().prefix(3))") }
        }
        #expect(table.count == model.count)
        #expect(table.problems().isEmpty)
        for key in UInt64(0)..<200_000 where table[key] != model[key] {
            Issue.record("key \(key): table \(String(describing: table[key])), model \(String(describing: model[key]))")
            break
        }
    }
}
