// PoolOperation — what a pool crash workload does: create, commit, change the policy, export,
// import.
//
// Theory. Each operation is one or two pool commits that return only once durable, so each is
// acknowledged when its call returns (there are no commit callbacks at this layer). Operations
// are values a workload generator can build from a seed alone: a commit names the allocations
// it makes by class and length, and the earlier allocations it frees by *selector* (free the
// live allocation at `selector % liveCount`), resolved at run time against the live list, so a
// generator never has to predict where the allocator put anything and an exhaustive sequence
// can never free the same extent twice. Every commit also writes a fresh 4 KiB root block
// (tagged with `tag`) into a new metadata extent, points the uberblock's roots at it and frees
// the previous one: the copy-on-write pattern of the layers above, and a check that what the
// uberblock points to is durable before it.

import StrataPool

/// One allocation a commit makes: a class and a length (a positive multiple of 4 KiB).
public struct PoolAllocationRequest: Sendable, Hashable, CustomStringConvertible {
    public let allocationClass: AllocationClass
    public let lengthBytes: UInt64

    public init(_ allocationClass: AllocationClass, lengthBytes: UInt64) {
        precondition(lengthBytes > 0 && lengthBytes % 4096 == 0, "allocation of \(lengthBytes) bytes")
        self.allocationClass = allocationClass
        self.lengthBytes = lengthBytes
    }

    public var description: String { "\(allocationClass.name) \(lengthBytes / 1024)K" }
}

/// One operation of a pool crash workload.
public enum PoolOperation: Sendable, CustomStringConvertible {
    /// `Pool.create` on the blank devices (checkpoint 1).
    case create
    /// Allocate, free (by selector), write a new root block tagged `tag`, free the old one,
    /// `commitCheckpoint(roots:)`.
    case commit(tag: UInt64, allocations: [PoolAllocationRequest], frees: [UInt64])
    /// Apply `key=value` to the policy in force and `setPolicy` (a configuration generation,
    /// then a checkpoint).
    case setPolicy(key: String, value: String)
    /// `export()`: a checkpoint whose uberblock says "exported"; the pool object closes.
    case export
    /// A read-write `importPool` of the devices (one more checkpoint). After an export, the
    /// normal reopen; without one, a process restart that did not export.
    case importPool

    public var description: String {
        switch self {
        case .create: return "create"
        case .commit(let tag, let allocations, let frees):
            var parts = ["commit root#\(tag)"]
            if !allocations.isEmpty { parts.append("alloc " + allocations.map(\.description).joined(separator: ", ")) }
            if !frees.isEmpty { parts.append("free \(frees.count)") }
            return parts.joined(separator: " ")
        case .setPolicy(let key, let value): return "set \(key)=\(value)"
        case .export: return "export"
        case .importPool: return "import"
        }
    }
}
