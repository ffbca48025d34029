// PoolAllocator+Statistics — per-device, per-role and per-class space figures, Codable for
// `strata pool status --json`.
//
// Definitions (all in bytes; a device's capacity excludes its reserved ranges):
//   used        allocated and consumed
//   free        allocatable now
//   reserved    held for outstanding reservations (allocated at declare time, not consumed)
//   deferred    freed in a checkpoint whose successor is not durable yet
//   capacity    used + free + reserved + deferred
//   fillPercent 100 · (capacity − free) / capacity: what routing compares with the spill
//               threshold and the metadata reserve
//   largestFreeExtentBytes  the longest extent an allocation can get now
//   fragmentation           share of free space outside fully free 1 MiB regions: 0 when every
//               free byte can take a 1 MiB record, 1 when none can (aggregates weight by free)
// A role aggregates its devices; a class aggregates the devices it can land on now, in routing
// order (so `data` includes spill devices, `metadata` the data devices it falls back to).
// Statistics are a snapshot under the allocator's lock: O(regions) per device (the largest free
// extent scans them), meant for status commands and tests, not the I/O path.

/// One device's figures.
public struct DeviceAllocationStatistics: Equatable, Sendable, Codable {
    public var deviceIndex: Int
    public var path: String
    public var role: DeviceRole
    public var capacityBytes: UInt64
    public var usedBytes: UInt64
    public var freeBytes: UInt64
    public var reservedBytes: UInt64
    public var deferredBytes: UInt64
    /// Label and space-map areas: never allocatable, not in capacity.
    public var excludedBytes: UInt64
    public var largestFreeExtentBytes: UInt64
    public var fullyFreeRegionCount: Int
    public var fragmentation: Double
    public var fillPercent: Double
    /// RAM held by this device's index (proportional to its size).
    public var indexBytes: Int
    /// RAM held by its pending-free and held run lists (proportional to outstanding frees).
    public var listBytes: Int
}

/// Figures summed over a set of devices (a role or a class).
public struct SpaceAggregateStatistics: Equatable, Sendable, Codable {
    /// The role or class name.
    public var name: String
    public var deviceIndices: [Int]
    public var capacityBytes: UInt64 = 0
    public var usedBytes: UInt64 = 0
    public var freeBytes: UInt64 = 0
    public var reservedBytes: UInt64 = 0
    public var deferredBytes: UInt64 = 0
    /// The largest over the devices.
    public var largestFreeExtentBytes: UInt64 = 0
    public var fragmentation: Double = 0
    public var fillPercent: Double = 0

    init(name: String, devices: [DeviceAllocationStatistics]) {
        self.name = name
        deviceIndices = devices.map(\.deviceIndex)
        var fragmentedBytes = 0.0
        for device in devices {
            capacityBytes += device.capacityBytes
            usedBytes += device.usedBytes
            freeBytes += device.freeBytes
            reservedBytes += device.reservedBytes
            deferredBytes += device.deferredBytes
            largestFreeExtentBytes = max(largestFreeExtentBytes, device.largestFreeExtentBytes)
            fragmentedBytes += device.fragmentation * Double(device.freeBytes)
        }
        fragmentation = freeBytes == 0 ? 0 : fragmentedBytes / Double(freeBytes)
        fillPercent = capacityBytes == 0 ? 0 : 100 * Double(capacityBytes - freeBytes) / Double(capacityBytes)
    }
}

public struct AllocatorStatistics: Equatable, Sendable, Codable {
    public var openCheckpoint: UInt64
    public var lastDurableCheckpoint: UInt64
    public var outstandingReservations: Int
    public var devices: [DeviceAllocationStatistics]
    /// Roles that have at least one device.
    public var roles: [SpaceAggregateStatistics]
    public var classes: [SpaceAggregateStatistics]
    /// RAM of every device's index and lists.
    public var stateBytes: Int
}

extension PoolAllocator {
    /// Whether any device holds frees deferred to a coming checkpoint (space that comes back):
    /// the cheap question an ENOSPC retry asks, without building the full statistics.
    public var hasDeferredFrees: Bool {
        state.withLock { state in state.maps.contains { $0.deferredUnits > 0 } }
    }

    public func statistics() -> AllocatorStatistics {
        state.withLock { state in
            var devices: [DeviceAllocationStatistics] = []
            for (slot, map) in state.maps.enumerated() {
                let space = map.statistics()
                let device = state.devices[slot]
                devices.append(DeviceAllocationStatistics(
                    deviceIndex: device.index, path: device.path, role: device.role,
                    capacityBytes: space.capacityBytes, usedBytes: space.usedBytes, freeBytes: space.freeBytes,
                    reservedBytes: space.reservedBytes, deferredBytes: space.deferredBytes, excludedBytes: space.excludedBytes,
                    largestFreeExtentBytes: space.largestFreeExtentBytes, fullyFreeRegionCount: space.fullyFreeRegionCount,
                    fragmentation: space.fragmentation,
                    fillPercent: space.capacityBytes == 0 ? 0 : 100 * Double(space.capacityBytes - space.freeBytes) / Double(space.capacityBytes),
                    indexBytes: map.indexBytes, listBytes: map.listBytes))
            }
            let roles = DeviceRole.allCases.compactMap { role -> SpaceAggregateStatistics? in
                let members = devices.filter { $0.role == role }
                return members.isEmpty ? nil : SpaceAggregateStatistics(name: role.name, devices: members)
            }
            var classes: [SpaceAggregateStatistics] = []
            for allocationClass in AllocationClass.allCases {
                // A request above any small-block cutoff, so `data` reports the data routing.
                _ = state.route(allocationClass, lengthBytes: UInt64.max)
                classes.append(SpaceAggregateStatistics(name: allocationClass.name, devices: state.candidates.map { devices[$0] }))
            }
            state.candidates.removeAll(keepingCapacity: true)
            return AllocatorStatistics(openCheckpoint: state.openCheckpoint, lastDurableCheckpoint: state.lastDurableCheckpoint,
                                       outstandingReservations: state.reservations.count, devices: devices,
                                       roles: roles, classes: classes, stateBytes: devices.reduce(0) { $0 + $1.indexBytes + $1.listBytes })
        }
    }
}
