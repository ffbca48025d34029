// PoolConfiguration — the pool's identity, members and policy, as every label stores it.
//
// Theory. The configuration is written into a configuration slot of both labels of every
// device. There are two slots per label; generation g is written into slot g % 2, so changing the
// configuration never overwrites the generation the newest durable uberblock names. A change is
// committed by the uberblock: write generation g+1 everywhere, flush, then commit an uberblock
// naming g+1. A crash in between leaves g (still in its slot, still named by the old uberblock)
// or g+1 (named by the new one) — never a mixture, because import reads the generation the
// winning uberblock names on every device.
//
// Block layout of a configuration slot (4096 bytes, little-endian; pinned by golden-bytes tests):
//
//   0    8   magic "STRATCFG"
//   8    4   format version (1)
//   12   4   block bytes (4096)
//   16   16  pool UUID
//   32   16  this device's UUID
//   48   8   configuration generation (1 at create, +1 per change)
//   56   8   creation time, ns since the Unix epoch
//   64   2   this device's index in the member table
//   66   2   member count (1...deviceCountMax)
//   68   1   pool name length in bytes (1...nameBytesMax)
//   69   3   zero
//   72   64  pool name, UTF-8, zero padded
//   136  32  policy: copies by role (6 bytes, index = role raw value, [0] unused), spill threshold,
//            metadata reserve, cache promote reads, migrate high, migrate low (1 byte each),
//            5 zero bytes, small-block cutoff (8), 8 zero bytes
//   168  32×n member table: device UUID (16), recorded size bytes (8), role (1),
//            flags (1; bit 0 = holds every role), 6 zero bytes
//   4092 4   crc32c of bytes [0, 4092)

import StrataIO

/// One device of the pool as the labels describe it.
public struct PoolMember: Equatable, Sendable, Codable {
    public var uuid: PoolUUID
    public var role: DeviceRole
    /// The only device of a one-device pool: it holds every role.
    public var holdsEveryRole: Bool
    /// The size recorded at create (whole MiB); the back label sits at its end.
    public var recordedSizeBytes: UInt64

    public init(uuid: PoolUUID, role: DeviceRole, holdsEveryRole: Bool, recordedSizeBytes: UInt64) {
        self.uuid = uuid
        self.role = role
        self.holdsEveryRole = holdsEveryRole
        self.recordedSizeBytes = recordedSizeBytes
    }

    public var layout: DeviceLayout { DeviceLayout(recordedSizeBytes: recordedSizeBytes) }
}

public struct PoolConfiguration: Equatable, Sendable, Codable {
    public static let formatVersion: UInt32 = 1
    public static let deviceCountMax = 64
    public static let nameBytesMax = 64
    /// Generations above this are refused as corrupt (see Uberblock.checkpointMax).
    public static let generationMax: UInt64 = 1 << 62
    static let magic: [UInt8] = Array("STRATCFG".utf8)
    static let memberTableOffset = 168
    static let memberEntryBytes = 32

    public var name: String
    public var uuid: PoolUUID
    public var generation: UInt64
    public var createdTimeNs: UInt64
    public var members: [PoolMember]
    public var policy: PoolPolicy

    public init(name: String, uuid: PoolUUID, generation: UInt64, createdTimeNs: UInt64, members: [PoolMember], policy: PoolPolicy) {
        self.name = name
        self.uuid = uuid
        self.generation = generation
        self.createdTimeNs = createdTimeNs
        self.members = members
        self.policy = policy
    }

    /// Problems that make this configuration unusable, one line each.
    public func validationProblems() -> [String] {
        var problems = PoolConfiguration.nameProblems(name)
        if generation < 1 || generation > PoolConfiguration.generationMax {
            problems.append("configuration generation \(generation) out of range 1...\(PoolConfiguration.generationMax)")
        }
        if members.isEmpty || members.count > PoolConfiguration.deviceCountMax {
            problems.append("a pool has 1...\(PoolConfiguration.deviceCountMax) devices, not \(members.count)")
        }
        if members.count > 1 && !members.contains(where: { $0.role == .data }) {
            problems.append("a pool needs at least one data device")
        }
        if members.count == 1 && !(members[0].holdsEveryRole && members[0].role == .data) {
            problems.append("the only device of a pool must be a data device holding every role")
        }
        if members.count > 1 && members.contains(where: { $0.holdsEveryRole }) {
            problems.append("only the device of a one-device pool holds every role")
        }
        if Set(members.map(\.uuid)).count != members.count { problems.append("two members share a device UUID") }
        for member in members where member.recordedSizeBytes < DeviceLayout.deviceBytesMin
            || member.recordedSizeBytes % DeviceLayout.alignmentBytes != 0 {
            problems.append("member \(member.uuid) has recorded size \(member.recordedSizeBytes)")
        }
        problems += policy.validationProblems()
        return problems
    }

    public static func nameProblems(_ name: String) -> [String] {
        let utf8 = Array(name.utf8)
        if utf8.isEmpty || utf8.count > nameBytesMax { return ["pool name '\(name)' must be 1...\(nameBytesMax) bytes"] }
        let allowed = name.unicodeScalars.allSatisfy { scalar in
            (scalar.value >= 0x30 && scalar.value <= 0x39) || (scalar.value >= 0x41 && scalar.value <= 0x5A)
                || (scalar.value >= 0x61 && scalar.value <= 0x7A) || scalar == "-" || scalar == "_" || scalar == "."
        }
        if !allowed || name.hasPrefix("-") || name.hasPrefix(".") {
            return ["pool name '\(name)' may hold only letters, digits, '-', '_' and '.', and starts with a letter, digit or '_'"]
        }
        return []
    }

    /// Devices that hold `role` (a one-device pool's device holds every role).
    public func memberIndices(holding role: DeviceRole) -> [Int] {
        members.indices.filter { members[$0].holdsEveryRole || members[$0].role == role }
    }

    // MARK: Encoding

    /// Encodes this configuration as device `deviceIndex` stores it, into a 4096-byte slot.
    public func encode(deviceIndex: Int, into block: UnsafeMutableRawBufferPointer) {
        precondition(block.count == Int(DeviceLayout.configSlotBytes), "configuration slot is \(block.count) bytes")
        precondition(deviceIndex >= 0 && deviceIndex < members.count, "device index \(deviceIndex) of \(members.count)")
        precondition(validationProblems().isEmpty, "encoding an invalid configuration: \(validationProblems())")
        block.initializeMemory(as: UInt8.self, repeating: 0)
        let writer = ByteWriter(block)
        for (index, byte) in PoolConfiguration.magic.enumerated() { block[index] = byte }
        writer.put(PoolConfiguration.formatVersion, at: 8)
        writer.put(UInt32(DeviceLayout.configSlotBytes), at: 12)
        writer.put(uuid, at: 16)
        writer.put(members[deviceIndex].uuid, at: 32)
        writer.put(generation, at: 48)
        writer.put(createdTimeNs, at: 56)
        writer.put(UInt16(deviceIndex), at: 64)
        writer.put(UInt16(members.count), at: 66)
        writer.put(UInt8(name.utf8.count), at: 68)
        writer.put(ascii: name, at: 72, capacity: PoolConfiguration.nameBytesMax)
        for role in 0..<6 { writer.put(policy.copiesByRole[role], at: 136 + role) }
        writer.put(policy.spillThresholdPercent, at: 142)
        writer.put(policy.metadataReservePercent, at: 143)
        writer.put(policy.cachePromoteReads, at: 144)
        writer.put(policy.migrateHighPercent, at: 145)
        writer.put(policy.migrateLowPercent, at: 146)
        writer.put(policy.smallBlockCutoffBytes, at: 152)
        for (index, member) in members.enumerated() {
            let base = PoolConfiguration.memberTableOffset + index * PoolConfiguration.memberEntryBytes
            writer.put(member.uuid, at: base)
            writer.put(member.recordedSizeBytes, at: base + 16)
            writer.put(member.role.rawValue, at: base + 24)
            writer.put(UInt8(member.holdsEveryRole ? 1 : 0), at: base + 25)
        }
        writer.sealWithChecksum()
    }

    /// The outcome of reading one configuration slot.
    public enum SlotContent: Equatable, Sendable {
        /// All zero: never written.
        case empty
        /// Not a Strata configuration block, or its checksum fails (torn or corrupt).
        case invalid(String)
        /// A valid block of a newer format.
        case newerVersion(UInt32)
        case valid(PoolConfiguration, deviceIndex: Int)
    }

    /// Decodes a configuration slot. Never traps on bad bytes: every field is range-checked.
    public static func decode(_ block: UnsafeRawBufferPointer) -> SlotContent {
        precondition(block.count == Int(DeviceLayout.configSlotBytes))
        let reader = ByteReader(block)
        switch reader.checkHeader(magic: magic, version: formatVersion) {
        case .empty: return .empty
        case .invalid(let why): return .invalid(why)
        case .newerVersion(let version): return .newerVersion(version)
        case .current: break
        }
        let deviceIndex = Int(reader.get(UInt16.self, at: 64))
        let count = Int(reader.get(UInt16.self, at: 66))
        let nameLength = Int(reader.get(UInt8.self, at: 68))
        guard (1...deviceCountMax).contains(count), deviceIndex < count, (1...nameBytesMax).contains(nameLength),
              let name = reader.string(at: 72, length: nameLength) else {
            return .invalid("member count \(count), index \(deviceIndex) or name length \(nameLength) out of range")
        }
        var policy = PoolPolicy()
        for role in 0..<6 { policy.copiesByRole[role] = reader.get(UInt8.self, at: 136 + role) }
        policy.spillThresholdPercent = reader.get(UInt8.self, at: 142)
        policy.metadataReservePercent = reader.get(UInt8.self, at: 143)
        policy.cachePromoteReads = reader.get(UInt8.self, at: 144)
        policy.migrateHighPercent = reader.get(UInt8.self, at: 145)
        policy.migrateLowPercent = reader.get(UInt8.self, at: 146)
        policy.smallBlockCutoffBytes = reader.get(UInt64.self, at: 152)
        var members: [PoolMember] = []
        for index in 0..<count {
            let base = memberTableOffset + index * memberEntryBytes
            guard let role = DeviceRole(rawValue: reader.get(UInt8.self, at: base + 24)) else {
                return .invalid("member \(index) has unknown role \(reader.get(UInt8.self, at: base + 24))")
            }
            members.append(PoolMember(uuid: reader.uuid(at: base), role: role,
                                      holdsEveryRole: reader.get(UInt8.self, at: base + 25) & 1 != 0,
                                      recordedSizeBytes: reader.get(UInt64.self, at: base + 16)))
        }
        let configuration = PoolConfiguration(name: name, uuid: reader.uuid(at: 16), generation: reader.get(UInt64.self, at: 48),
                                              createdTimeNs: reader.get(UInt64.self, at: 56), members: members, policy: policy)
        guard configuration.members[deviceIndex].uuid == reader.uuid(at: 32) else {
            return .invalid("device UUID does not match member \(deviceIndex)")
        }
        let problems = configuration.validationProblems()
        guard problems.isEmpty else { return .invalid("inconsistent configuration: \(problems.joined(separator: "; "))") }
        return .valid(configuration, deviceIndex: deviceIndex)
    }
}
