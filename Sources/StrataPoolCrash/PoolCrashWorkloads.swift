// PoolCrashWorkloads — the pool's crash workloads, each paired with the pool it runs on.
//
// Theory. Workloads are pure functions of their seed (Workload.swift). All start with `create`
// on blank devices, so every run also crashes the format step.
//
//   pool-random         tiered pool (data, metadata, log), default policy: create then 11 seeded
//                       operations: commits (allocations of every class and length, frees, a new root
//                       block each), policy changes (spill threshold, metadata reserve,
//                       small-block cutoff, metadata copies), export + import, and imports
//                       without export (a restart);
//   pool-random-mirror  the same, 8 operations, on a tiered pool created with copies.metadata=2;
//   pool-random-single  the same on a one-device pool;
//   pool-ace            ACE-style: after create and one commit, every sequence of at most 3
//                       actions from {commit allocating, commit freeing, policy change,
//                       export + import, restart import} (155 cases); pool-ace-2: at most 2
//                       (30 cases).
//
// The random generator mirrors the live-allocation list the system keeps (frees are selectors
// resolved the same way, `selector % liveCount`), so it knows exactly what is allocated and keeps
// the pool well below full: a workload never fails for lack of space.

import StrataPool
import StrataTesting

/// A pool workload and the pool it runs on.
public struct PoolCrashWorkload: Sendable {
    public let system: PoolCrashSystem
    public let workload: Workload<PoolOperation>

    public var name: String { workload.name }
}

extension PoolCrashSystem {
    /// Live bytes (length, before copies) past which the random workload frees more than it allocates.
    static let liveBytesHigh: UInt64 = 32 << 20

    /// A seeded random pool workload of `length` operations (create first, a commit last).
    public static func randomWorkload(name: String, layout: Layout, length: Int = 12) -> Workload<PoolOperation> {
        precondition(length >= 2, "a pool workload needs create and one commit")
        return Workload(name: name, summary: "create, then \(length - 1) random commits (allocate, free, new root), policy changes, export + import, restart imports on the \(layout.rawValue) pool") { seed in
            var random = SeededRandom(seed: seed)
            var live: [UInt64] = []           // lengths, mirroring PoolHandle.live
            var operations: [PoolOperation] = [.create]
            var exported = false
            for step in 1..<length {
                let tag = UInt64(step)
                if step == length - 1 && !exported {
                    operations.append(randomCommit(tag: tag, random: &random, live: &live))
                    break
                }
                if exported {
                    operations.append(.importPool)
                    exported = false
                    continue
                }
                let roll = random.next() % 100
                switch roll {
                case 0..<55:
                    operations.append(randomCommit(tag: tag, random: &random, live: &live))
                case 55..<70:
                    switch random.next() % (layout == .tiered ? 4 : 3) {
                    case 0: operations.append(.setPolicy(key: "spill-threshold", value: "\(50 + step % 50)"))
                    case 1: operations.append(.setPolicy(key: "metadata-reserve", value: "\(step % 40)"))
                    case 2: operations.append(.setPolicy(key: "small-block-cutoff", value: "\((step % 5) * 16)K"))
                    default: operations.append(.setPolicy(key: "copies.metadata", value: "\(1 + step % 2)"))
                    }
                case 70..<78:
                    operations.append(.export)
                    exported = true
                case 78..<84:
                    operations.append(.importPool)
                default:
                    operations.append(.commit(tag: tag, allocations: [], frees: []))
                }
            }
            if exported { operations.append(.importPool) }
            return operations
        }
    }

    private static func randomCommit(tag: UInt64, random: inout SeededRandom, live: inout [UInt64]) -> PoolOperation {
        var allocations: [PoolAllocationRequest] = []
        var frees: [UInt64] = []
        let liveBytes = live.reduce(0, +)
        let allocationCount = liveBytes > liveBytesHigh ? 0 : Int(random.next() % 4)
        for _ in 0..<allocationCount {
            func units(_ maxUnits: UInt64) -> UInt64 { (1 + random.next() % maxUnits) * 4096 }
            let request: PoolAllocationRequest
            switch random.next() % 10 {
            case 0..<4: request = PoolAllocationRequest(.data, lengthBytes: units(256))
            case 4..<6: request = PoolAllocationRequest(.metadata, lengthBytes: units(16))
            case 6..<8: request = PoolAllocationRequest(.smallData, lengthBytes: units(32))
            default: request = PoolAllocationRequest(.log, lengthBytes: units(64))
            }
            allocations.append(request)
            live.append(request.lengthBytes)
        }
        let freeCount = liveBytes > liveBytesHigh ? 3 : Int(random.next() % 3)
        for _ in 0..<freeCount where !live.isEmpty {
            let selector = random.next() % 1_000_003
            live.remove(at: Int(selector % UInt64(live.count)))
            frees.append(selector)
        }
        return .commit(tag: tag, allocations: allocations, frees: frees)
    }

    /// `pool-ace` (≤ `lengthMax` actions): after create and a commit, every sequence of actions
    /// from {commit allocating, commit freeing, policy change, export + import, restart import}.
    public static func aceWorkload(lengthMax: Int = 3) -> Workload<PoolOperation> {
        precondition(lengthMax >= 1, "empty ACE workload")
        let setup: [PoolOperation] = [
            .create,
            .commit(tag: 1, allocations: [PoolAllocationRequest(.data, lengthBytes: 256 << 10),
                                          PoolAllocationRequest(.metadata, lengthBytes: 8 << 10),
                                          PoolAllocationRequest(.log, lengthBytes: 16 << 10)], frees: []),
        ]
        let settings = [("spill-threshold", "61"), ("copies.metadata", "2"), ("small-block-cutoff", "64K")]
        let actions: [@Sendable (Int) -> [PoolOperation]] = [
            { [.commit(tag: UInt64(10 + $0), allocations: [PoolAllocationRequest(.data, lengthBytes: UInt64($0 + 1) << 16),
                                                           PoolAllocationRequest(.smallData, lengthBytes: 12 << 10)], frees: [])] },
            { [.commit(tag: UInt64(20 + $0), allocations: [], frees: [0])] },
            { [.setPolicy(key: settings[$0 % settings.count].0, value: settings[$0 % settings.count].1)] },
            { _ in [.export, .importPool] },
            { _ in [.importPool] },
        ]
        var caseCount: UInt64 = 0
        var power: UInt64 = 1
        for _ in 1...lengthMax {
            power *= UInt64(actions.count)
            caseCount += power
        }
        return Workload(name: lengthMax == 3 ? "pool-ace" : "pool-ace-\(lengthMax)",
                        summary: "after create and a commit, every sequence of ≤ \(lengthMax) of {commit allocating, commit freeing, policy change, export + import, restart import} on the tiered pool",
                        caseCount: caseCount) { seed in
            var index = seed
            var length = 1
            var count = UInt64(actions.count)
            while index >= count {
                index -= count
                length += 1
                count *= UInt64(actions.count)
            }
            var operations = setup
            for position in 0..<length {
                operations += actions[Int(index % UInt64(actions.count))](position)
                index /= UInt64(actions.count)
            }
            return operations
        }
    }

    /// Every pool workload by name, with its pool.
    public static let workloads: [PoolCrashWorkload] = {
        var mirrored = PoolPolicy()
        mirrored.setCopies(2, for: .metadata)
        return [
            PoolCrashWorkload(system: PoolCrashSystem(layout: .tiered), workload: randomWorkload(name: "pool-random", layout: .tiered)),
            PoolCrashWorkload(system: PoolCrashSystem(layout: .tiered, policy: mirrored),
                              workload: randomWorkload(name: "pool-random-mirror", layout: .tiered, length: 8)),
            PoolCrashWorkload(system: PoolCrashSystem(layout: .single), workload: randomWorkload(name: "pool-random-single", layout: .single)),
            PoolCrashWorkload(system: PoolCrashSystem(layout: .tiered), workload: aceWorkload(lengthMax: 3)),
            PoolCrashWorkload(system: PoolCrashSystem(layout: .tiered), workload: aceWorkload(lengthMax: 2)),
        ]
    }()

    /// The pool workload called `name`.
    public static func workload(named name: String) throws(CrashTestError) -> PoolCrashWorkload {
        guard let match = workloads.first(where: { $0.name == name }) else {
            throw .unknownWorkload(name: name, known: workloads.map(\.name))
        }
        return match
    }
}
