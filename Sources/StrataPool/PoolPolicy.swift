// PoolPolicy — the per-pool placement rules, stored in every label and changeable later
// (`strata pool set KEY=VALUE`).
//
// Each field is a named setting with a default and a reason (STYLE.md: limits live together):
//
//   copies.<role>         1     extents per allocation of that role's class, on distinct devices
//                               (metadata=2 mirrors metadata); 1...copiesMax
//   spill-threshold       90    percent fill of the data devices past which data allocations go to
//                               spill devices (when the pool has any); 1...100
//   small-block-cutoff    0     data blocks of at most this many bytes go to metadata devices
//                               (ZFS special_small_blocks; 0 = off); a multiple of 4 KiB, ≤ 1 MiB
//   metadata-reserve      25    percent of metadata devices kept for metadata: small data stops
//                               landing there once they are this close to full (ZFS keeps 25%)
//   cache-promote-reads   2     reads of an extent before it is copied to a cache device (stored
//                               now; used by the cache work)
//   migrate-high / -low   85/70 percent fill of a fast class above which cold extents move down,
//                               until the low mark (stored now; used by the migration work)

public struct PoolPolicy: Equatable, Sendable, Codable {
    public static let copiesMax = 4
    public static let smallBlockCutoffBytesMax: UInt64 = 1 << 20

    /// Copies per role, indexed by `DeviceRole.rawValue` (index 0 unused). Use `copies(for:)`.
    public var copiesByRole: [UInt8] = [1, 1, 1, 1, 1, 1]
    public var spillThresholdPercent: UInt8 = 90
    public var smallBlockCutoffBytes: UInt64 = 0
    public var metadataReservePercent: UInt8 = 25
    public var cachePromoteReads: UInt8 = 2
    public var migrateHighPercent: UInt8 = 85
    public var migrateLowPercent: UInt8 = 70

    public init() {}

    public func copies(for role: DeviceRole) -> Int { Int(copiesByRole[Int(role.rawValue)]) }
    public mutating func setCopies(_ copies: Int, for role: DeviceRole) {
        precondition((1...PoolPolicy.copiesMax).contains(copies), "copies \(copies) out of range")
        copiesByRole[Int(role.rawValue)] = UInt8(copies)
    }

    /// The role whose `copies` governs an allocation class.
    public static func governingRole(of allocationClass: AllocationClass) -> DeviceRole {
        switch allocationClass {
        case .metadata: return .metadata
        case .smallData, .data: return .data
        case .log: return .log
        }
    }

    /// Problems with the values, one line each; empty when the policy is valid.
    public func validationProblems() -> [String] {
        var problems: [String] = []
        if copiesByRole.count != DeviceRole.allCases.count + 1 { problems.append("copies table has \(copiesByRole.count) entries") }
        for role in DeviceRole.allCases where Int(role.rawValue) < copiesByRole.count {
            let copies = Int(copiesByRole[Int(role.rawValue)])
            if !(1...PoolPolicy.copiesMax).contains(copies) {
                problems.append("copies.\(role.name)=\(copies): must be 1...\(PoolPolicy.copiesMax)")
            }
        }
        if !(1...100).contains(spillThresholdPercent) { problems.append("spill-threshold=\(spillThresholdPercent): must be 1...100") }
        if smallBlockCutoffBytes % 4096 != 0 || smallBlockCutoffBytes > PoolPolicy.smallBlockCutoffBytesMax {
            problems.append("small-block-cutoff=\(smallBlockCutoffBytes): must be a multiple of 4096 and at most \(PoolPolicy.smallBlockCutoffBytesMax)")
        }
        if metadataReservePercent > 90 { problems.append("metadata-reserve=\(metadataReservePercent): must be 0...90") }
        if !(1...100).contains(migrateHighPercent) { problems.append("migrate-high=\(migrateHighPercent): must be 1...100") }
        if migrateLowPercent >= migrateHighPercent {
            problems.append("migrate-low=\(migrateLowPercent): must be below migrate-high=\(migrateHighPercent)")
        }
        return problems
    }
}
