// ReviewFindingsTests — tests written during a correctness review of StrataPool. Each test named
// after a finding fails on the code as reviewed; the fuzz tests pass when no decoder traps.
//
// Trap findings are exit tests (`#expect(processExitsWith: .success)`): the body runs in a child
// process, so a precondition or overflow trap fails that one test instead of the whole run.

import Foundation
import StrataIO
import Testing
@testable import StrataPool

/// A sparse in-memory device of 4 KiB blocks (the pool tests cannot use StrataTesting).
final class ReviewMemoryDevice: BlockStorage, @unchecked Sendable {
    let path: String
    let sizeBytes: UInt64
    let blockSizeBytes = 4096
    let isReadOnly: Bool
    private let lock = NSLock()
    private var blocks: [UInt64: [UInt8]]

    init(path: String, sizeBytes: UInt64, blocks: [UInt64: [UInt8]] = [:], readOnly: Bool = false) {
        self.path = path
        self.sizeBytes = sizeBytes
        self.blocks = blocks
        self.isReadOnly = readOnly
    }

    func clone(path: String? = nil) -> ReviewMemoryDevice {
        lock.lock(); defer { lock.unlock() }
        return ReviewMemoryDevice(path: path ?? self.path, sizeBytes: sizeBytes, blocks: blocks)
    }

    private func check(_ offset: UInt64, _ count: Int) throws(IOError) {
        guard offset % 4096 == 0, count % 4096 == 0 else {
            throw .misaligned(path: path, what: "offset", value: offset, alignment: 4096)
        }
        guard offset <= sizeBytes, UInt64(count) <= sizeBytes - offset else {
            throw .outOfRange(path: path, offset: offset, length: UInt64(count), sizeBytes: sizeBytes)
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try check(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        for position in stride(from: 0, to: buffer.count, by: 4096) {
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[position..<(position + 4096)])
            if let bytes = blocks[(offset + UInt64(position)) / 4096] {
                bytes.withUnsafeBytes { target.copyMemory(from: $0) }
            } else {
                target.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) {
        if isReadOnly { throw .readOnly(path: path) }
        try check(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        for position in stride(from: 0, to: buffer.count, by: 4096) {
            blocks[(offset + UInt64(position)) / 4096] = Array(buffer[position..<(position + 4096)])
        }
    }

    func flush() throws(IOError) {}
    func discard(offset: UInt64, length: UInt64) throws(IOError) {}

    /// Reads one 4 KiB block, lets `body` change it, writes it back.
    func patch(at offset: UInt64, _ body: (UnsafeMutableRawBufferPointer) -> Void) {
        let block = allocateAlignedBuffer(byteCount: 4096)
        defer { block.deallocate() }
        try! read(into: block, at: offset)
        body(block)
        try! write(UnsafeRawBufferPointer(block), at: offset, fua: false)
    }
}

/// Deterministic generator for the fuzz tests (SplitMix64).
struct ReviewRandom: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum ReviewFindings {
    static let mib: UInt64 = 1 << 20

    /// A one-device pool on memory, `commits` checkpoints past create.
    static func soloPool(sizeBytes: UInt64 = 128 << 20, commits: Int = 0) throws -> (Pool, ReviewMemoryDevice) {
        let device = ReviewMemoryDevice(path: "mem0", sizeBytes: sizeBytes)
        let pool = try Pool.create(name: "solo", devices: [(device, .data)])
        for _ in 0..<commits { try pool.commitCheckpoint() }
        return (pool, device)
    }

    /// Writes `uberblock` (any checkpoint) into slot `checkpoint % 32` of both labels of `device`.
    static func writeUberblock(_ uberblock: Uberblock, layout: DeviceLayout, device: ReviewMemoryDevice,
                               mutate: (UnsafeMutableRawBufferPointer) -> Void = { _ in }) {
        let slot = Int(uberblock.checkpoint % UInt64(DeviceLayout.uberblockSlotCount))
        for labelOffset in layout.labelOffsets {
            device.patch(at: DeviceLayout.uberblockSlotOffset(labelOffset: labelOffset, slot: slot)) { block in
                uberblock.encode(into: block)
                mutate(block)
                ByteWriter(block).sealWithChecksum()
            }
        }
    }

    // MARK: Trap bodies (run in child processes)

    /// A checksum-valid uberblock with checkpoint UInt64.max (slot 31) on the device.
    static func importWithMaximalCheckpoint() {
        let (pool, device) = try! soloPool()
        // Checkpoint UInt64.max lives in slot 31: encode a valid checkpoint of that slot, then
        // write the hostile number over it (the encoder refuses to produce it itself).
        var hostile = pool.uberblock
        hostile.checkpoint = 31
        writeUberblock(hostile, layout: pool.configuration.members[0].layout, device: device) { block in
            ByteWriter(block).put(UInt64.max, at: 32)
        }
        // A read-only import (what `strata pool status` does) must report, not trap.
        _ = try? Pool.importPool(devices: [device.clone()], readOnly: true)
    }

    /// Configuration generation UInt64.max (checksum-valid), named by the root; then `set`.
    static func setPolicyAtMaximalGeneration() {
        let (pool, device) = try! soloPool()
        let configuration = pool.configuration      // generation 1, slot 1
        let layout = configuration.members[0].layout
        for labelOffset in layout.labelOffsets {
            device.patch(at: DeviceLayout.configSlotOffset(labelOffset: labelOffset, slot: 1)) { block in
                configuration.encode(deviceIndex: 0, into: block)
                ByteWriter(block).put(UInt64.max, at: 48)      // generation UInt64.max (odd: slot 1)
                ByteWriter(block).sealWithChecksum()
            }
        }
        writeUberblock(pool.uberblock, layout: layout, device: device) { block in
            ByteWriter(block).put(UInt64.max, at: 48)          // the root names it
        }
        guard let imported = try? Pool.importPool(devices: [device], readOnly: false) else { return }
        var policy = imported.configuration.policy
        policy.spillThresholdPercent = 50
        _ = try? imported.setPolicy(policy)
    }

    /// Decoders fed random, magic-prefixed and field-mutated (resealed) blocks.
    static func fuzzDecoders(iterations: Int, seed: UInt64) {
        var random = ReviewRandom(state: seed)
        let members = [PoolMember(uuid: .random(), role: .data, holdsEveryRole: false, recordedSizeBytes: 128 << 20),
                       PoolMember(uuid: .random(), role: .metadata, holdsEveryRole: false, recordedSizeBytes: 64 << 20),
                       PoolMember(uuid: .random(), role: .log, holdsEveryRole: false, recordedSizeBytes: 64 << 20)]
        let configuration = PoolConfiguration(name: "tank", uuid: .random(), generation: 7, createdTimeNs: 1,
                                              members: members, policy: PoolPolicy())
        let uberblock = Uberblock(poolUUID: configuration.uuid, checkpoint: 9, timeNs: 1, configurationGeneration: 7,
                                  state: .active, spaceMaps: Array(repeating: SpaceMapRoot(copy: 1, tableChecksum: 5, bitmapBlockCount: 1), count: 3))
        let boundary: [UInt64] = [0, 1, 2, 3, 31, 32, 63, 64, 65, 255, 256, 4092, 4096, 0xFFFF, 0x1_0000,
                                  UInt64(UInt32.max), 64 << 20, (64 << 20) - 1, UInt64.max, UInt64.max - 1, UInt64.max & ~((1 << 20) - 1)]
        let block = allocateAlignedBuffer(byteCount: 4096)
        defer { block.deallocate() }
        for iteration in 0..<iterations {
            let kind = iteration % 5
            switch kind {
            case 0, 1:
                for index in 0..<4096 { block[index] = UInt8.random(in: 0...255, using: &random) }
                if kind == 1 {
                    let magic = Bool.random(using: &random) ? PoolConfiguration.magic : Uberblock.magic
                    for (index, byte) in magic.enumerated() { block[index] = byte }
                    ByteWriter(block).put(UInt32(Int.random(in: 0...2, using: &random)), at: 8)
                    ByteWriter(block).put(UInt32(4096), at: 12)
                    ByteWriter(block).sealWithChecksum()
                }
            default:
                if kind == 2 { configuration.encode(deviceIndex: iteration % 3, into: block) } else { uberblock.encode(into: block) }
                let writer = ByteWriter(block)
                for _ in 0..<Int.random(in: 1...6, using: &random) {
                    let value = Bool.random(using: &random) ? boundary.randomElement(using: &random)! : random.next()
                    switch Int.random(in: 0..<4, using: &random) {
                    case 0: writer.put(UInt8(truncatingIfNeeded: value), at: Int.random(in: 0..<4092, using: &random))
                    case 1: writer.put(UInt16(truncatingIfNeeded: value), at: Int.random(in: 0..<4091, using: &random) & ~1)
                    case 2: writer.put(UInt32(truncatingIfNeeded: value), at: Int.random(in: 0..<4089, using: &random) & ~3)
                    default: writer.put(value, at: Int.random(in: 0..<4085, using: &random) & ~7)
                    }
                }
                if kind != 4 || Bool.random(using: &random) { writer.sealWithChecksum() }
            }
            let bytes = UnsafeRawBufferPointer(block)
            _ = PoolConfiguration.decode(bytes)
            _ = Uberblock.decode(bytes)
        }
    }

    /// Field-level mutations (checksums resealed) of a real pool's labels, then DeviceLabels.read
    /// and a read-only and read-write import. Checkpoint values near UInt64.max are left to
    /// `importWithMaximalCheckpoint`, so that this test isolates other traps.
    static func fuzzLabelsAndImport(iterations: Int, seed: UInt64) {
        var random = ReviewRandom(state: seed)
        let (pool, base) = try! soloPool(commits: 3)
        let layout = pool.configuration.members[0].layout
        let rootSlot = Int(pool.uberblock.checkpoint % 32)
        let boundary: [UInt64] = [0, 1, 2, 3, 31, 32, 63, 64, 65, 255, 256, 0xFFFF, UInt64(UInt32.max),
                                  32 << 20, 64 << 20, 128 << 20, 256 << 20, (128 << 20) - 4096, UInt64.max - 1,
                                  UInt64.max & ~((1 << 20) - 1)]
        // (offset, width) of the interesting fields.
        let configFields: [(Int, Int)] = [(16, 8), (32, 8), (48, 8), (64, 2), (66, 2), (68, 1), (72, 1), (136, 1), (137, 1), (138, 1),
                                          (142, 1), (143, 1), (145, 1), (146, 1), (152, 8), (168, 8), (184, 8), (192, 1), (193, 1)]
        let uberFields: [(Int, Int)] = [(16, 8), (48, 8), (56, 1), (58, 2), (64, 8), (72, 8), (88, 2), (320, 1), (324, 4), (328, 4), (336, 1)]
        for _ in 0..<iterations {
            let device = base.clone()
            let front = Bool.random(using: &random)
            let labelOffset = front ? layout.frontLabelOffset : layout.backLabelOffset
            let isConfig = Bool.random(using: &random)
            let offset = isConfig ? DeviceLayout.configSlotOffset(labelOffset: labelOffset, slot: 1)
                                  : DeviceLayout.uberblockSlotOffset(labelOffset: labelOffset, slot: rootSlot)
            let fields = isConfig ? configFields : uberFields
            device.patch(at: offset) { block in
                let writer = ByteWriter(block)
                for _ in 0..<Int.random(in: 1...3, using: &random) {
                    let (at, width) = fields.randomElement(using: &random)!
                    let value = Bool.random(using: &random) ? boundary.randomElement(using: &random)! : random.next()
                    switch width {
                    case 1: writer.put(UInt8(truncatingIfNeeded: value), at: at)
                    case 2: writer.put(UInt16(truncatingIfNeeded: value), at: at)
                    case 4: writer.put(UInt32(truncatingIfNeeded: value), at: at)
                    default: writer.put(value, at: at)
                    }
                }
                writer.sealWithChecksum()
            }
            _ = try? DeviceLabels.read(device)
            _ = try? Pool.importPool(devices: [device], readOnly: true)
            if let writable = try? Pool.importPool(devices: [device], readOnly: false) {
                _ = try? writable.commitCheckpoint()
                _ = writable.status()
            }
        }
    }
}

@Suite struct ReviewFindingsTests {
    typealias R = ReviewFindings

    // MARK: Traps reachable from checksum-valid on-disk bytes

    @Test func importOfUberblockWithMaximalCheckpointDoesNotTrap() async {
        await #expect(processExitsWith: .success) {
            ReviewFindings.importWithMaximalCheckpoint()
        }
    }

    @Test func setPolicyAtMaximalGenerationDoesNotTrap() async {
        await #expect(processExitsWith: .success) {
            ReviewFindings.setPolicyAtMaximalGeneration()
        }
    }

    // MARK: Fuzz (pass when nothing traps)

    @Test func fuzzDecodersNeverTrap() async {
        await #expect(processExitsWith: .success) {
            ReviewFindings.fuzzDecoders(iterations: 100_000, seed: 0x5EED)
        }
    }

    @Test func fuzzLabelsAndImportNeverTrap() async {
        await #expect(processExitsWith: .success) {
            ReviewFindings.fuzzLabelsAndImport(iterations: 600, seed: 0xF00D)
        }
    }

    // MARK: Newer format next to an older one

    /// A newer build's uberblock (a format past this build's) is the newest in the ring; the
    /// older uberblocks of the same pool are still in their slots. Import must refuse ("format version N is newer
    /// than this build reads"), not roll the pool back to the newest v1 checkpoint — and a
    /// read-write import must not overwrite the newer build's state.
    /// The refusal names the uberblock's own supported version, not the configuration's.
    static func expectNamesTheUberblocksVersion(_ text: String, newer: UInt32) {
        #expect(text.contains("uberblock format version \(newer)") && text.contains("reads (\(Uberblock.formatVersion))"), "\(text)")
    }

    @Test func importRefusesPoolWhoseNewestUberblockIsOfANewerFormat() throws {
        let (pool, device) = try R.soloPool(commits: 3)
        let layout = pool.configuration.members[0].layout
        let newest = pool.uberblock
        #expect(newest.checkpoint == 4)
        let newer = Uberblock.formatVersion + 1
        R.writeUberblock(newest, layout: layout, device: device) { block in ByteWriter(block).put(newer, at: 8) }

        do {
            let imported = try Pool.importPool(devices: [device.clone()], readOnly: true)
            Issue.record("read-only import succeeded at checkpoint \(imported.uberblock.checkpoint), ignoring a format-\(newer) uberblock 4")
        } catch let error as PoolError {
            guard case .unsupportedVersion = error else { Issue.record("unexpected error \(error)"); return }
            Self.expectNamesTheUberblocksVersion(error.description, newer: newer)
        }
        do {
            let imported = try Pool.importPool(devices: [device], readOnly: false)
            Issue.record("read-write import succeeded and committed checkpoint \(imported.uberblock.checkpoint) over the newer build's uberblock")
        } catch let error as PoolError {
            guard case .unsupportedVersion = error else { Issue.record("unexpected error \(error)"); return }
        }
    }

    // MARK: Import classification

    /// An old image of a member (same configuration generation, older checkpoint) is a stale
    /// device; import reports "corrupt pool metadata: … checksum table does not match" instead.
    @Test func oldImageOfAMemberIsReportedStaleNotCorrupt() throws {
        let data = ReviewMemoryDevice(path: "data0", sizeBytes: 128 << 20)
        let meta = ReviewMemoryDevice(path: "meta0", sizeBytes: 64 << 20)
        let pool = try Pool.create(name: "tank", devices: [(data, .data), (meta, .metadata)])
        let oldMeta = meta.clone(path: "meta0-old-image")
        let extent = try pool.allocator.allocate(.metadata, lengthBytes: 4096)
        #expect(extent[0].deviceIndex == 1)
        try pool.commitCheckpoint()
        try pool.export()
        do {
            _ = try Pool.importPool(devices: [data, oldMeta], readOnly: true)
            Issue.record("an old image of the metadata device was accepted")
        } catch let error as PoolError {
            if case .staleDeviceCheckpoint(let path, _, _) = error {
                #expect(path == "meta0-old-image")
            } else {
                Issue.record("old image classified as: \(error)")
            }
        }
    }

    // MARK: Label repair

    /// docs/pool.md: a damaged label copy is "rewritten by a read-write import". A damaged slot
    /// that does not hold the generation in force (here: configuration slot 0, e.g. a torn
    /// uncommitted policy change) is reported, "repaired" in status, and still there afterwards.
    @Test func labelDamageRepairedByReadWriteImportStaysRepaired() throws {
        let (pool, device) = try R.soloPool()
        try pool.export()
        device.patch(at: DeviceLayout.configSlotOffset(labelOffset: 0, slot: 0)) { block in
            block.initializeMemory(as: UInt8.self, repeating: 0x77)
            for (index, byte) in PoolConfiguration.magic.enumerated() { block[index] = byte }
        }
        let before = try Pool.importPool(devices: [device], readOnly: true).status().devices[0].health
        #expect(before.hasPrefix("degraded"))
        let writable = try Pool.importPool(devices: [device], readOnly: false)
        #expect(writable.status().devices[0].health.hasPrefix("online (repaired"))
        try writable.export()
        let after = try Pool.importPool(devices: [device], readOnly: true).status()
        #expect(after.devices[0].health == "online", "after the repair: \(after.devices[0].health)")
    }
}
