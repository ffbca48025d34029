// Uberblock — the root of the pool: the one block that is written in place, in a ring.
//
// Theory. Every checkpoint ends with an uberblock: checkpoint number, time, the configuration
// generation in force, the pool state (active or cleanly exported), the space-map copy and its
// checksum for every device, and the root pointers of the layers above (dnode table, object
// index, intent log start — fixed slots, null until those layers exist). It is written into slot
// `checkpoint % uberblockSlotCount` of the ring in both labels of every device, only after
// everything it points to is durable (DESIGN.md, "On disk"): the writer flushes every device
// first and then writes the uberblock and flushes again. A crash can therefore tear only the newest
// uberblock; a torn or corrupt one fails its checksum and is skipped, and the previous one —
// whose space-map copy the new checkpoint did not overwrite — wins. The pool's root is the
// valid uberblock with the highest checkpoint number across all slots of all labels of all
// devices. With 32 slots, the 31 older checkpoints stay visible for diagnosis.
//
// Block layout (4096 bytes, little-endian; pinned by golden-bytes tests):
//
//   0    8   magic "STRATUBR"
//   8    4   format version (2; 1 still read). 2: block pointers anywhere in the pool may
//            carry two addresses (BlockPointer flags bit 0), which a version-1 reader would
//            take for a corrupt pointer; so a build that reads only 1 refuses the pool as
//            newer instead. A pool is written at 2 from its first checkpoint by this build.
//   12   4   block bytes (4096)
//   16   16  pool UUID
//   32   8   checkpoint number (≥ 1)
//   40   8   time, ns since the Unix epoch
//   48   8   configuration generation in force
//   56   1   state: 1 active, 2 exported
//   57   1   zero
//   58   2   member count (= the configuration's)
//   60   4   zero
//   64   32×8 root pointers in BlockPointer's 32-byte form (BlockPointer.swift: one address, or
//            two packed when flags bit 0 is set); all zero = null
//   320  16×n space maps, one per member: copy in use (1), zero (3), crc32c of the copy's
//            checksum table (4), bitmap block count (4), zero (4)
//   4092 4   crc32c of bytes [0, 4092)

import StrataIO

/// Where a device's space map is, as of one checkpoint.
public struct SpaceMapRoot: Equatable, Sendable, Codable {
    /// Which of the two copies (0 or 1) this checkpoint wrote.
    public var copy: UInt8
    /// crc32c of that copy's checksum table (which holds a crc32c per bitmap block).
    public var tableChecksum: UInt32
    public var bitmapBlockCount: UInt32

    public init(copy: UInt8, tableChecksum: UInt32, bitmapBlockCount: UInt32) {
        self.copy = copy
        self.tableChecksum = tableChecksum
        self.bitmapBlockCount = bitmapBlockCount
    }
}

public struct Uberblock: Equatable, Sendable, Codable {
    /// The version written. 2: two-address block pointers may exist (see the layout above).
    public static let formatVersion: UInt32 = 2
    /// The oldest version read: 1 has one-address pointers only, a subset of 2.
    public static let oldestFormatVersionRead: UInt32 = 1
    public static let rootSlotCount = 8
    /// Checkpoint numbers above this are refused as corrupt: at a million checkpoints a second
    /// it is 146,000 years away, and the bound keeps every +1 on a checkpoint number safe.
    public static let checkpointMax: UInt64 = 1 << 62
    static let magic: [UInt8] = Array("STRATUBR".utf8)

    public enum State: UInt8, Sendable, Codable {
        case active = 1
        case exported = 2
    }

    /// Named root slots for the layers above the pool.
    public enum RootSlot: Int, CaseIterable, Sendable {
        case intentLog = 0
        case dnodeTable = 1
        case objectIndex = 2
    }

    public var poolUUID: PoolUUID
    public var checkpoint: UInt64
    public var timeNs: UInt64
    public var configurationGeneration: UInt64
    public var state: State
    public var roots: [BlockPointer]
    public var spaceMaps: [SpaceMapRoot]

    public init(poolUUID: PoolUUID, checkpoint: UInt64, timeNs: UInt64, configurationGeneration: UInt64, state: State,
                roots: [BlockPointer] = Array(repeating: .null, count: Uberblock.rootSlotCount), spaceMaps: [SpaceMapRoot]) {
        self.poolUUID = poolUUID
        self.checkpoint = checkpoint
        self.timeNs = timeNs
        self.configurationGeneration = configurationGeneration
        self.state = state
        self.roots = roots
        self.spaceMaps = spaceMaps
    }

    public func encode(into block: UnsafeMutableRawBufferPointer) {
        precondition(block.count == Int(DeviceLayout.uberblockSlotBytes), "uberblock slot is \(block.count) bytes")
        precondition(checkpoint >= 1 && checkpoint <= Uberblock.checkpointMax, "checkpoint \(checkpoint) out of range")
        precondition(roots.count == Uberblock.rootSlotCount, "\(roots.count) root pointers")
        precondition((1...PoolConfiguration.deviceCountMax).contains(spaceMaps.count), "\(spaceMaps.count) space maps")
        block.initializeMemory(as: UInt8.self, repeating: 0)
        let writer = ByteWriter(block)
        for (index, byte) in Uberblock.magic.enumerated() { block[index] = byte }
        writer.put(Uberblock.formatVersion, at: 8)
        writer.put(UInt32(DeviceLayout.uberblockSlotBytes), at: 12)
        writer.put(poolUUID, at: 16)
        writer.put(checkpoint, at: 32)
        writer.put(timeNs, at: 40)
        writer.put(configurationGeneration, at: 48)
        writer.put(state.rawValue, at: 56)
        writer.put(UInt16(spaceMaps.count), at: 58)
        for (index, root) in roots.enumerated() {
            root.encode(into: block, at: 64 + index * BlockPointer.encodedByteCount)
        }
        for (index, map) in spaceMaps.enumerated() {
            let base = 320 + index * 16
            precondition(map.copy <= 1, "space map copy \(map.copy)")
            writer.put(map.copy, at: base)
            writer.put(map.tableChecksum, at: base + 4)
            writer.put(map.bitmapBlockCount, at: base + 8)
        }
        writer.sealWithChecksum()
    }

    public enum SlotContent: Equatable, Sendable {
        case empty
        case invalid(String)
        case newerVersion(UInt32)
        case valid(Uberblock)
    }

    public static func decode(_ block: UnsafeRawBufferPointer) -> SlotContent {
        precondition(block.count == Int(DeviceLayout.uberblockSlotBytes))
        let reader = ByteReader(block)
        switch reader.checkHeader(magic: magic, version: formatVersion, oldest: oldestFormatVersionRead) {
        case .empty: return .empty
        case .invalid(let why): return .invalid(why)
        case .newerVersion(let version): return .newerVersion(version)
        case .current: break
        }
        let checkpoint = reader.get(UInt64.self, at: 32)
        let count = Int(reader.get(UInt16.self, at: 58))
        guard checkpoint >= 1, checkpoint <= checkpointMax, (1...PoolConfiguration.deviceCountMax).contains(count),
              let state = State(rawValue: reader.get(UInt8.self, at: 56)) else {
            return .invalid("checkpoint \(checkpoint), member count \(count) or state out of range")
        }
        let roots = (0..<rootSlotCount).map { BlockPointer.decode(from: block, at: 64 + $0 * BlockPointer.encodedByteCount) }
        var maps: [SpaceMapRoot] = []
        for index in 0..<count {
            let base = 320 + index * 16
            let copy = reader.get(UInt8.self, at: base)
            guard copy <= 1 else { return .invalid("space map \(index) names copy \(copy)") }
            maps.append(SpaceMapRoot(copy: copy, tableChecksum: reader.get(UInt32.self, at: base + 4),
                                     bitmapBlockCount: reader.get(UInt32.self, at: base + 8)))
        }
        return .valid(Uberblock(poolUUID: reader.uuid(at: 16), checkpoint: checkpoint, timeNs: reader.get(UInt64.self, at: 40),
                                configurationGeneration: reader.get(UInt64.self, at: 48), state: state,
                                roots: roots, spaceMaps: maps))
    }
}
