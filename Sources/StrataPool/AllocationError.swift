// AllocationError — the operating errors of the allocator.
//
// Only conditions an operator or a caller can meet in correct code are thrown: a class without
// room (ENOSPC) and a space-map block that contradicts its device on import. Misuse (a double free,
// a free of unallocated or reserved space, an out-of-order checkpoint, an exhausted reservation)
// is a programmer error and traps instead (STYLE.md). Every message names the class, the device
// paths and the sizes, so that it can be acted on alone. `PoolError.noSpace(error.description)`
// carries one up to the pool layer unchanged.

/// What one device could offer when an allocation failed.
public struct DeviceSpaceSummary: Equatable, Sendable, Codable {
    public var deviceIndex: Int
    public var path: String
    public var role: DeviceRole
    public var freeBytes: UInt64
    public var largestFreeExtentBytes: UInt64
    /// Why it was passed over, when it was not simply too full ("metadata reserve: 80% full").
    public var note: String?

    public init(deviceIndex: Int, path: String, role: DeviceRole, freeBytes: UInt64, largestFreeExtentBytes: UInt64, note: String? = nil) {
        self.deviceIndex = deviceIndex
        self.path = path
        self.role = role
        self.freeBytes = freeBytes
        self.largestFreeExtentBytes = largestFreeExtentBytes
        self.note = note
    }
}

public enum AllocationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// ENOSPC: fewer than `copies` candidate devices of the class can take `lengthBytes` (nothing
    /// was allocated). `devices` lists every candidate looked at, in routing order.
    case noSpace(allocationClass: AllocationClass, lengthBytes: UInt64, copies: Int, devices: [DeviceSpaceSummary])
    /// A bitmap block read on import contradicts the device (reserved or past-the-end units free).
    case corruptSpaceMap(path: String, blockIndex: Int, detail: String)

    public var errno: Int32 {
        switch self {
        case .noSpace: return 28      // ENOSPC
        case .corruptSpaceMap: return 117  // EUCLEAN
        }
    }

    public var description: String {
        switch self {
        case .noSpace(let allocationClass, let length, let copies, let devices):
            let what = "no space for \(copies == 1 ? "" : "\(copies) copies of ")\(length) bytes in class \(allocationClass.name)"
            if devices.isEmpty { return what + ": the pool has no device for this class" }
            let parts = devices.map { device in
                "\(device.path) (\(device.role.name)): \(device.freeBytes) bytes free, largest free extent \(device.largestFreeExtentBytes)"
                    + (device.note.map { ", \($0)" } ?? "")
            }
            return what + " (ENOSPC; nothing allocated): " + parts.joined(separator: "; ")
        case .corruptSpaceMap(let path, let block, let detail):
            return "\(path): space map bitmap block \(block) is inconsistent: \(detail)"
        }
    }
}
