// Errors of the pool layer.
//
// Every operating error names the device path (when there is one) and what is wrong with it, so
// that an operator can act on the message alone ("/dev/nvme1n1: belongs to pool 'scratch'
// (uuid …), not 'tank'"). Errors are raised before anything is written whenever the problem can be
// known in advance: create and import validate every device first, then write.

import StrataIO

public enum PoolError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A configuration value is unusable (pool name, role name, policy key or value, copies).
    case invalidConfiguration(String)
    /// A device is listed twice (same path, or the same underlying device).
    case duplicateDevice(path: String, otherPath: String)
    /// A device is smaller than a pool member may be.
    case deviceTooSmall(path: String, sizeBytes: UInt64, minimumBytes: UInt64)
    /// `create` found a Strata label on a device and was not forced.
    case alreadyLabelled(path: String, poolName: String, poolUUID: PoolUUID)
    /// A device carries no valid Strata label (neither copy).
    case noLabel(path: String, detail: String)
    /// A label written by a newer format version than this build reads.
    case unsupportedVersion(path: String, what: String, version: UInt32, supported: UInt32)
    /// A device belongs to another pool.
    case foreignDevice(path: String, poolName: String, poolUUID: PoolUUID, expectedName: String, expected: PoolUUID)
    /// Two paths carry the same device of the pool.
    case duplicateMember(path: String, otherPath: String, deviceIndex: Int)
    /// Members of the pool not found among the given paths.
    case missingMembers(poolName: String, missing: [String])
    /// A device whose label is older than the pool's configuration.
    case staleDevice(path: String, deviceGeneration: UInt64, poolGeneration: UInt64)
    /// A device whose space map does not match the root and whose newest uberblock is older than
    /// the pool's previous checkpoint: an old image of the device (a restored backup).
    case staleDeviceCheckpoint(path: String, deviceCheckpoint: UInt64, poolCheckpoint: UInt64)
    /// A device is smaller than the size its label records.
    case truncatedDevice(path: String, sizeBytes: UInt64, labelSizeBytes: UInt64)
    /// No valid uberblock on any device.
    case noUberblock(poolName: String)
    /// Several pools found while scanning, and no name to choose one.
    case ambiguousPools(names: [String])
    /// The pool is open read-only.
    case readOnly(poolName: String)
    /// A checksummed pool structure (space map, table) failed verification.
    case corruptMetadata(path: String, detail: String)
    /// No space in a class (with copies): nothing was allocated.
    case noSpace(String)
    /// An I/O error from a device.
    case io(IOError)

    public var description: String {
        switch self {
        case .invalidConfiguration(let message): return message
        case .duplicateDevice(let path, let other):
            return other == path ? "\(path): device listed twice" : "\(path): same device as \(other) (listed twice)"
        case .deviceTooSmall(let path, let size, let minimum):
            return "\(path): size \(size) bytes is below the pool member minimum of \(minimum) bytes"
        case .alreadyLabelled(let path, let name, let uuid):
            return "\(path): already carries a Strata label of pool '\(name)' (uuid \(uuid)); use --force to overwrite"
        case .noLabel(let path, let detail): return "\(path): no valid Strata label (\(detail))"
        case .unsupportedVersion(let path, let what, let version, let supported):
            return "\(path): \(what) format version \(version) is newer than this build reads (\(supported)); upgrade Strata"
        case .foreignDevice(let path, let name, let uuid, let expectedName, let expected):
            return "\(path): belongs to pool '\(name)' (uuid \(uuid)), not '\(expectedName)' (uuid \(expected))"
        case .duplicateMember(let path, let other, let index):
            return "\(path): carries the same pool device (index \(index)) as \(other)"
        case .missingMembers(let name, let missing):
            return "pool '\(name)': missing \(missing.count) device(s): " + missing.joined(separator: "; ")
        case .staleDevice(let path, let deviceGeneration, let poolGeneration):
            return "\(path): stale label (configuration generation \(deviceGeneration), pool is at \(poolGeneration))"
        case .staleDeviceCheckpoint(let path, let device, let pool):
            return "\(path): stale device image (newest uberblock is checkpoint \(device), the pool is at \(pool))"
        case .truncatedDevice(let path, let size, let labelSize):
            return "\(path): truncated: size \(size) bytes is smaller than the \(labelSize) bytes its label records"
        case .noUberblock(let name): return "pool '\(name)': no valid uberblock on any device"
        case .ambiguousPools(let names):
            return "several pools found (\(names.joined(separator: ", "))): name the one to import"
        case .readOnly(let name): return "pool '\(name)' is imported read-only"
        case .corruptMetadata(let path, let detail): return "\(path): corrupt pool metadata: \(detail)"
        case .noSpace(let message): return message
        case .io(let error): return error.description
        }
    }
}

/// A 128-bit identifier for a pool or a device, random at creation. Printed as 32 hex digits in
/// 8-4-4-4-12 groups.
public struct PoolUUID: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public static func random() -> PoolUUID {
        var generator = SystemRandomNumberGenerator()
        var uuid = PoolUUID(high: generator.next(), low: generator.next())
        if uuid == .zero { uuid.low = 1 }
        return uuid
    }

    public static let zero = PoolUUID(high: 0, low: 0)

    public static func < (a: PoolUUID, b: PoolUUID) -> Bool { (a.high, a.low) < (b.high, b.low) }

    public var description: String {
        func hex(_ value: UInt64, _ digits: Int) -> String {
            let text = String(value, radix: 16)
            return String(repeating: "0", count: max(0, digits - text.count)) + text
        }
        let h = hex(high, 16), l = hex(low, 16)
        let all = h + l
        let parts = [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { range -> String in
            let start = all.index(all.startIndex, offsetBy: range.lowerBound)
            let end = all.index(all.startIndex, offsetBy: range.upperBound)
            return String(all[start..<end])
        }
        return parts.joined(separator: "-")
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self).filter { $0 != "-" }
        guard text.count == 32, let high = UInt64(text.prefix(16), radix: 16), let low = UInt64(text.suffix(16), radix: 16) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad uuid \(text)"))
        }
        self.init(high: high, low: low)
    }
}
