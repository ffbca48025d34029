// PoolStatus — what `strata pool status` shows: identity, state, policy, every device with its
// role, size, space and health, and per-role (allocation class) totals. Codable for --json.

import StrataIO

public struct PoolStatus: Sendable, Codable, Equatable {
    public struct Device: Sendable, Codable, Equatable {
        public var index: Int
        public var path: String
        /// The role name, or "all" for the device of a one-device pool.
        public var role: String
        public var uuid: PoolUUID
        public var sizeBytes: UInt64
        public var recordedSizeBytes: UInt64
        public var space: DeviceAllocationStatistics
        /// "online", or "degraded: …" naming damaged label copies (or "online (repaired: …)").
        public var health: String
    }

    public var name: String
    public var uuid: PoolUUID
    /// "active", "exported" (this object was exported) or "read-only".
    public var state: String
    /// Whether the pool had been exported cleanly when it was imported.
    public var wasExported: Bool
    public var checkpoint: UInt64
    public var configurationGeneration: UInt64
    public var policy: [String: String]
    public var devices: [Device]
    /// Totals per device role, and per allocation class (the devices each class routes to).
    public var roles: [SpaceAggregateStatistics]
    public var classes: [SpaceAggregateStatistics]
    /// RAM used by the allocator's in-memory index, all devices.
    public var allocatorStateBytes: Int
    /// Files in a scanned directory that were not devices of this pool.
    public var skipped: [String]
    /// "online" when every device is, else "degraded".
    public var health: String
}

extension Pool {
    public func status() -> PoolStatus {
        state.withLock { state in
            let configuration = state.configuration
            let statistics = allocator.statistics()
            let space = devices.indices.map { index in statistics.devices.first { $0.deviceIndex == index }! }
            let devices = self.devices.enumerated().map { index, device -> PoolStatus.Device in
                let member = configuration.members[index]
                let damage = state.labelDamage[index]
                let health: String
                if damage.notes.isEmpty { health = "online" }
                else if damage.repaired { health = "online (repaired at import: " + damage.notes.joined(separator: "; ") + ")" }
                else { health = "degraded: " + damage.notes.joined(separator: "; ") }
                return PoolStatus.Device(index: index, path: device.path, role: member.holdsEveryRole ? "all" : member.role.name,
                                         uuid: member.uuid, sizeBytes: device.sizeBytes, recordedSizeBytes: member.recordedSizeBytes,
                                         space: space[index], health: health)
            }
            let stateName = state.isClosed ? "exported" : (isReadOnly ? "read-only" : "active")
            return PoolStatus(name: configuration.name, uuid: configuration.uuid, state: stateName,
                              wasExported: state.importReport.wasExported, checkpoint: state.uberblock.checkpoint,
                              configurationGeneration: configuration.generation,
                              policy: Dictionary(uniqueKeysWithValues: configuration.policy.settings.map { ($0.key, $0.value) }),
                              devices: devices, roles: statistics.roles, classes: statistics.classes,
                              allocatorStateBytes: statistics.stateBytes, skipped: state.importReport.skipped,
                              health: devices.allSatisfy { $0.health.hasPrefix("online") } ? "online" : "degraded")
        }
    }
}
