// DeviceRole, AllocationClass, Extent — the vocabulary of the pool.
//
// Every device in a pool has exactly one role (DESIGN.md, "Device roles and policy"). A
// one-device pool gives its single device every role; otherwise a role with no device falls
// back per the table below, and the allocator routes each allocation class to devices of a
// role, with fallbacks, per the `PoolPolicy`.
//
//   role      holds                                           when absent
//   metadata  dnodes, index/extent-map blocks, space maps,    the data devices
//             small data blocks
//   data      file data in records up to 1 MiB                required
//   log       the intent log                                  the metadata devices
//   spill     data past the data class's fill threshold       none
//   cache     copies of hot data                              none

/// The role of one device. Raw values are the on-disk encoding (labels): never renumber.
public enum DeviceRole: UInt8, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case metadata = 1
    case data = 2
    case log = 3
    case spill = 4
    case cache = 5

    public var name: String {
        switch self {
        case .metadata: return "metadata"
        case .data: return "data"
        case .log: return "log"
        case .spill: return "spill"
        case .cache: return "cache"
        }
    }

    public var description: String { name }

    /// Parses a role name ("metadata", "data", "log", "spill", "cache"); nil when unknown.
    public init?(name: String) {
        guard let role = DeviceRole.allCases.first(where: { $0.name == name }) else { return nil }
        self = role
    }
}

/// What an allocation is for; decides which devices serve it (see `PoolAllocator`).
public enum AllocationClass: UInt8, CaseIterable, Sendable, Codable, CustomStringConvertible {
    /// Metadata blocks: metadata devices, then data devices when absent or full.
    case metadata = 1
    /// Data blocks at or below the policy's small-block cutoff: metadata devices, then data devices.
    case smallData = 2
    /// Data records: data devices, then spill devices once data is past the spill threshold.
    case data = 3
    /// Intent-log blocks: log devices, then metadata devices, then data devices.
    case log = 4

    public var name: String {
        switch self {
        case .metadata: return "metadata"
        case .smallData: return "small-data"
        case .data: return "data"
        case .log: return "log"
        }
    }

    public var description: String { name }
}

/// A run of bytes on one device of the pool. `deviceIndex` is the device's position in the
/// pool's device list (stable for the life of the pool; stored on disk).
public struct Extent: Hashable, Sendable, Codable, CustomStringConvertible {
    public var deviceIndex: Int
    public var offsetBytes: UInt64
    public var lengthBytes: UInt64

    public init(deviceIndex: Int, offsetBytes: UInt64, lengthBytes: UInt64) {
        self.deviceIndex = deviceIndex
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
    }

    public var endBytes: UInt64 { offsetBytes + lengthBytes }

    public var description: String { "dev\(deviceIndex):\(offsetBytes)+\(lengthBytes)" }
}
