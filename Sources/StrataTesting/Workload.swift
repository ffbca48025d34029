// Workload — a named, seeded list of operations for a system under test.
//
// Theory. A workload is a pure function from a seed to a list of operations: the same seed
// gives the same list on every run, which is what makes "seed 42 step 7 image 113" a complete
// description of a failure. Two shapes cover the reference tools:
//
//   - random long workloads (ztest, Ceph's synthetic workload): any seed, a generator of
//     operations drawn with the seed;
//   - exhaustive short workloads in the ACE style: every sequence of at most `lengthMax` core
//     operations, each followed by a persistence point or none, the last always followed by
//     one; the seed is the index of the sequence (`caseCount` cases), after a fixed setup.
//
// Workloads hold no state and touch no device.

/// A named, seeded workload: `operations(seed)` is deterministic.
public struct Workload<Operation: Sendable>: Sendable {
    public let name: String
    /// One line for `--help` and reports.
    public let summary: String
    /// For enumerated workloads, the number of seeds (cases 0..<caseCount); `nil`: any seed.
    public let caseCount: UInt64?
    private let generate: @Sendable (UInt64) -> [Operation]

    public init(name: String, summary: String, caseCount: UInt64? = nil,
                operations: @escaping @Sendable (UInt64) -> [Operation]) {
        self.name = name
        self.summary = summary
        self.caseCount = caseCount
        self.generate = operations
    }

    /// The operations for `seed`; throws `seedOutOfRange` past `caseCount`.
    public func operations(seed: UInt64) throws(CrashTestError) -> [Operation] {
        if let count = caseCount, seed >= count {
            throw .seedOutOfRange(workload: name, seed: seed, caseCount: count)
        }
        return generate(seed)
    }

    /// An ACE-style exhaustive workload: `setup`, then every sequence of 1…`lengthMax` core
    /// operations, each followed by one of `persistence` or nothing, the last always followed
    /// by a persistence operation. Core and persistence operations are built from their
    /// position in the sequence so that every value written is distinct.
    public static func exhaustive(name: String, summary: String, setup: [Operation],
                                  core: [@Sendable (_ position: Int) -> Operation],
                                  persistence: [@Sendable (_ position: Int) -> Operation],
                                  lengthMax: Int) -> Workload {
        precondition(!core.isEmpty && !persistence.isEmpty && lengthMax >= 1, "empty exhaustive workload")
        // Sequences of length L: (core × (persistence + none))^(L-1) × core × persistence.
        var counts: [UInt64] = []
        for length in 1...lengthMax {
            let middle = UInt64(core.count * (persistence.count + 1))
            var count = UInt64(core.count * persistence.count)
            for _ in 1..<length { count *= middle }
            counts.append(count)
        }
        let total = counts.reduce(0, +)
        let caseCounts = counts
        return Workload(name: name, summary: summary, caseCount: total) { seed in
            var index = seed
            var length = 1
            for count in caseCounts {
                if index < count { break }
                index -= count
                length += 1
            }
            var operations = setup
            for position in 0..<length {
                let coreChoice = Int(index % UInt64(core.count))
                index /= UInt64(core.count)
                operations.append(core[coreChoice](position))
                if position == length - 1 {
                    operations.append(persistence[Int(index % UInt64(persistence.count))](position))
                } else {
                    let persistenceChoice = Int(index % UInt64(persistence.count + 1))
                    index /= UInt64(persistence.count + 1)
                    if persistenceChoice < persistence.count {
                        operations.append(persistence[persistenceChoice](position))
                    }
                }
            }
            return operations
        }
    }
}
