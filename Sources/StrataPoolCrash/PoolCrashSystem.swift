// PoolCrashSystem — the pool as a system under test of the crash harness (issue 5, part 7):
// crash images over pool create, policy changes and a sequence of uberblock commits; the pool
// always imports, to the last uberblock whose commit returned or a later one.
//
// Theory. The devices start blank and the first operation is `create`, so the format step is
// recorded and crashed like everything else: before create returns, an image may hold no
// importable pool (the oracle's initial state is "no pool"); from then on every image must
// import. Every operation is one or two synchronous commits, acknowledged when its call returns.
//
// What the oracle sees. One key, "pool", whose value is a `PoolSnapshot` of the imported pool:
// uberblock checkpoint and state, configuration generation in force and its policy, the tag of
// the root block the uberblock points to, and per device the used bytes and a crc32c of the
// encoded space-map bitmap. An operation's effect is the snapshot of the *live* pool right after
// its commit returned (`effects(of:performedOn:)`): what the pool said it committed. The oracle
// then demands, at every crash point, a snapshot equal to the one of the last commit that
// returned or of a commit issued after it — that is: the checkpoint is at least the last one
// that returned and at most the highest issued; the policy in force is the one of the generation
// the uberblock names, and the new one once setPolicy returned; every extent allocated and not
// freed by a returned commit is allocated after import, and nothing else is (bit-exact space
// maps; frees of checkpoint N show as free at N); the root block is readable with the checksum
// its pointer holds. An import failure after create returned is a violation ("pool absent").
//
// The opens (`OpenPurpose`): the workload gets a handle on the recording devices without
// importing (create or import are operations); checking an image imports read-only (checking
// must not write); recovering an image imports read-write, which commits one more checkpoint —
// `stateAfterRecovery` says so (same content, checkpoint + 1, state active), and the harness
// crashes that import for every 8th image. Multi-device commits run their per-device jobs in
// device order (`Pool.runsDeviceJobsInOrder`) so a run is deterministic and replays.
//
// Independent of the pool's own accounting, each commit checks its model: every allocation got
// `copies` extents on distinct devices, and the used bytes of all devices add up to the live
// allocations (length × copies) plus the root block. A mismatch fails the operation (exit 2),
// outside any crash.

import StrataIO
@_spi(CrashTesting) import StrataPool
import StrataTesting

/// What the oracle compares: the pool as imported (or, for an operation, as it was right after
/// its commit returned).
public struct PoolSnapshot: Equatable, Sendable, CustomStringConvertible {
    public var checkpoint: UInt64
    /// "active" or "exported".
    public var state: String
    public var configurationGeneration: UInt64
    /// The settings that differ from the defaults, "key=value" joined by ",", or "defaults".
    public var policy: String
    /// The tag of the root block the uberblock points to; nil when the roots are null.
    public var rootTag: UInt64?
    /// Per device (member order): used bytes.
    public var usedBytes: [UInt64]
    /// Per device: crc32c of every encoded space-map bitmap block.
    public var spaceMapDigests: [UInt32]

    public var description: String {
        let used = usedBytes.map { $0 % 1024 == 0 ? "\($0 / 1024)K" : "\($0)" }.joined(separator: ",")
        let maps = spaceMapDigests.map { String($0, radix: 16) }.joined(separator: ",")
        return "checkpoint \(checkpoint) \(state), generation \(configurationGeneration) (\(policy)), "
            + "root \(rootTag.map { "#\($0)" } ?? "none"), used [\(used)], maps [\(maps)]"
    }
}

/// An open pool under test, or the devices of one not (yet) importable.
public final class PoolHandle {
    /// The devices in member order (as given to create).
    public let devices: [any BlockStorage]
    public internal(set) var pool: Pool?
    /// Why the read-only import of a checked image failed.
    public internal(set) var importError: String?

    /// Live allocations in allocation order (the workload frees by selector into this list).
    var live: [(request: PoolAllocationRequest, copies: ExtentCopies)] = []
    /// The root block's extents (one per copy).
    var root: ExtentCopies?
    /// Snapshots of the commits the last operation made, in order.
    var snapshots: [PoolSnapshot] = []

    init(devices: [any BlockStorage], pool: Pool? = nil, importError: String? = nil) {
        self.devices = devices
        self.pool = pool
        self.importError = importError
    }
}

/// A failure of the pool or of its accounting model during a workload (not a crash).
public struct PoolCrashError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// The pool under test: a layout of devices, a policy to create with, optionally a flush fault.
public struct PoolCrashSystem: SystemUnderTest, Sendable {
    /// Which devices the pool has.
    public enum Layout: String, Sendable, CaseIterable {
        /// Data 128 MiB, metadata 64 MiB, log 64 MiB.
        case tiered
        /// One 128 MiB device holding every role.
        case single
    }

    public static let poolName = "crashpool"
    public static let rootBlockBytes: UInt64 = 4096
    static let rootMagic: UInt64 = 0x5452_4352_4154_5253   // "SRTARCRT" little-endian: root-block magic

    public let layout: Layout
    /// The policy the pool is created with.
    public let policy: PoolPolicy
    /// A planted device fault (the harness must then find violations).
    public let fault: FlushFaultDevice.Fault?

    public init(layout: Layout, policy: PoolPolicy = PoolPolicy(), fault: FlushFaultDevice.Fault? = nil) {
        self.layout = layout
        self.policy = policy
        self.fault = fault
    }

    public var name: String {
        "pool (\(layout.rawValue)" + (policy == PoolPolicy() ? "" : ", \(PoolCrashSystem.describe(policy))") + ")"
            + (fault.map { " with fault \($0.rawValue)" } ?? "")
    }

    public var devices: [DeviceSpec] {
        switch layout {
        case .tiered:
            return [DeviceSpec(name: "data", sizeBytes: 128 << 20), DeviceSpec(name: "metadata", sizeBytes: 64 << 20),
                    DeviceSpec(name: "log", sizeBytes: 64 << 20)]
        case .single:
            return [DeviceSpec(name: "pool", sizeBytes: 128 << 20)]
        }
    }

    /// Nothing: the devices stay blank and `create` is the workload's first (recorded) operation.
    public func format(_ devices: [any BlockStorage]) throws {}

    /// Opens for checking (read-only import).
    public func open(_ devices: [any BlockStorage]) throws -> PoolHandle {
        try open(devices, for: .check)
    }

    public func open(_ devices: [any BlockStorage], for purpose: OpenPurpose) throws -> PoolHandle {
        switch purpose {
        case .workload:
            Pool.runsDeviceJobsInOrder = true
            let wrapped: [any BlockStorage] = fault.map { fault in devices.map { FlushFaultDevice($0, fault: fault) } } ?? devices
            return PoolHandle(devices: wrapped)
        case .check:
            do {
                return PoolHandle(devices: devices, pool: try Pool.importPool(devices: devices, name: PoolCrashSystem.poolName, readOnly: true))
            } catch {
                return PoolHandle(devices: devices, importError: "\(error)")
            }
        case .recovery:
            Pool.runsDeviceJobsInOrder = true
            return PoolHandle(devices: devices, pool: try Pool.importPool(devices: devices, name: PoolCrashSystem.poolName, readOnly: false))
        }
    }

    public func perform(_ operation: PoolOperation, on handle: PoolHandle, context: OperationContext) throws {
        handle.snapshots = []
        switch operation {
        case .create:
            let roles = layout.roles
            let pool = try Pool.create(name: PoolCrashSystem.poolName, devices: zip(handle.devices, roles).map { (storage: $0, role: $1) },
                                       policy: policy)
            handle.pool = pool
            try record(pool, into: handle)
        case .commit(let tag, let allocations, let frees):
            let pool = try openPool(handle)
            try commit(pool, handle: handle, tag: tag, allocations: allocations, frees: frees)
        case .setPolicy(let key, let value):
            let pool = try openPool(handle)
            var next = pool.configuration.policy
            try next.set(key, to: value)
            try pool.setPolicy(next)
            try record(pool, into: handle)
        case .export:
            let pool = try openPool(handle)
            try pool.export()
            try record(pool, into: handle)
        case .importPool:
            let pool = try Pool.importPool(devices: handle.devices, name: PoolCrashSystem.poolName, readOnly: false)
            handle.pool = pool
            try record(pool, into: handle)
        }
        context.acknowledge()
    }

    public func check(_ handle: PoolHandle) throws -> [String] {
        guard let pool = handle.pool else { return [] }
        return PoolCrashSystem.snapshot(of: pool).problems
    }

    public func observe(_ handle: PoolHandle) throws -> [String: PoolSnapshot] {
        guard let pool = handle.pool else { return [:] }
        return ["pool": PoolCrashSystem.snapshot(of: pool).snapshot]
    }

    public func effects(of operation: PoolOperation) -> [Effect<String, PoolSnapshot>] {
        preconditionFailure("pool effects are taken from the live pool: effects(of:performedOn:)")
    }

    public func effects(of operation: PoolOperation, performedOn handle: PoolHandle) -> [Effect<String, PoolSnapshot>] {
        handle.snapshots.map { Effect(key: "pool", value: $0) }
    }

    /// A completed read-write import: the same pool one checkpoint later, active.
    public func stateAfterRecovery(_ observed: [String: PoolSnapshot]) -> [String: PoolSnapshot] {
        guard var snapshot = observed["pool"] else { return observed }
        snapshot.checkpoint += 1
        snapshot.state = "active"
        return ["pool": snapshot]
    }

    // MARK: Operations

    private func openPool(_ handle: PoolHandle) throws -> Pool {
        guard let pool = handle.pool else { throw PoolCrashError("no pool: the workload must create or import it first") }
        return pool
    }

    /// Takes the live snapshot after a commit returned; fails on the pool's own problems.
    private func record(_ pool: Pool, into handle: PoolHandle) throws {
        let (snapshot, problems) = PoolCrashSystem.snapshot(of: pool)
        guard problems.isEmpty else { throw PoolCrashError("live pool after checkpoint \(snapshot.checkpoint): " + problems.joined(separator: "; ")) }
        handle.snapshots.append(snapshot)
    }

    private func commit(_ pool: Pool, handle: PoolHandle, tag: UInt64, allocations: [PoolAllocationRequest],
                        frees: [UInt64]) throws {
        let policy = pool.configuration.policy
        for request in allocations {
            let copies = try pool.allocator.allocate(request.allocationClass, lengthBytes: request.lengthBytes)
            try checkCopies(copies, of: request, policy: policy)
            handle.live.append((request, copies))
        }
        for selector in frees where !handle.live.isEmpty {
            let freed = handle.live.remove(at: Int(selector % UInt64(handle.live.count)))
            pool.allocator.free(freed.copies)
        }
        // The new root block, written to every copy before the commit that names it.
        let rootRequest = PoolAllocationRequest(.metadata, lengthBytes: PoolCrashSystem.rootBlockBytes)
        let root = try pool.allocator.allocate(.metadata, lengthBytes: PoolCrashSystem.rootBlockBytes)
        try checkCopies(root, of: rootRequest, policy: policy)
        let checkpoint = pool.uberblock.checkpoint + 1
        let block = PoolCrashSystem.rootBlock(tag: tag, checkpoint: checkpoint)
        let checksum = CRC32C.checksum(block)
        var roots = Array(repeating: BlockPointer.null, count: Uberblock.rootSlotCount)
        for (index, extent) in root.enumerated() {
            try block.withUnsafeBytes { try pool.devices[extent.deviceIndex].write($0, at: extent.offsetBytes, fua: false) }
            roots[index] = BlockPointer(deviceIndex: extent.deviceIndex, offsetBytes: extent.offsetBytes,
                                        lengthBytes: PoolCrashSystem.rootBlockBytes, birthCheckpoint: checkpoint, checksum: checksum)
        }
        if let old = handle.root { pool.allocator.free(old) }
        handle.root = root
        let committed = try pool.commitCheckpoint(roots: roots)
        guard committed == checkpoint else { throw PoolCrashError("commit returned checkpoint \(committed), expected \(checkpoint)") }
        // The model: used space is the live allocations (length × copies) plus the root block.
        let expected = handle.live.reduce(UInt64(root.count) * PoolCrashSystem.rootBlockBytes) {
            $0 + $1.request.lengthBytes * UInt64($1.copies.count)
        }
        let used = pool.status().devices.reduce(UInt64(0)) { $0 + $1.space.usedBytes }
        guard used == expected else {
            throw PoolCrashError("checkpoint \(checkpoint): devices report \(used) bytes used, the live allocations hold \(expected)")
        }
        try record(pool, into: handle)
    }

    private func checkCopies(_ copies: ExtentCopies, of request: PoolAllocationRequest, policy: PoolPolicy) throws {
        let wanted = policy.copies(for: PoolPolicy.governingRole(of: request.allocationClass))
        let devices = Set(copies.map(\.deviceIndex))
        guard copies.count == wanted, devices.count == wanted,
              copies.allSatisfy({ $0.lengthBytes == request.lengthBytes && $0.offsetBytes % 4096 == 0 }) else {
            throw PoolCrashError("allocation of \(request) returned \(copies), wanted \(wanted) copies on distinct devices")
        }
    }

    // MARK: Snapshots

    /// The root block for `tag`: magic, tag, checkpoint, then bytes seeded by the tag.
    static func rootBlock(tag: UInt64, checkpoint: UInt64) -> [UInt8] {
        var random = SeededRandom(seed: tag, stream: checkpoint)
        var block = [UInt8](repeating: 0, count: Int(rootBlockBytes))
        for (index, word) in [rootMagic, tag, checkpoint].enumerated() {
            for byte in 0..<8 { block[index * 8 + byte] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(byte))) }
        }
        for index in 24..<block.count { block[index] = UInt8(truncatingIfNeeded: random.next()) }
        return block
    }

    static func word(_ block: [UInt8], at index: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(block[index * 8 + $1]) << (8 * UInt64($1)) }
    }

    /// The snapshot of `pool` and the problems its own consistency checks find.
    public static func snapshot(of pool: Pool) -> (snapshot: PoolSnapshot, problems: [String]) {
        let uberblock = pool.uberblock
        let configuration = pool.configuration
        var problems: [String] = []
        if configuration.generation != uberblock.configurationGeneration {
            problems.append("configuration generation \(configuration.generation) in force, uberblock \(uberblock.checkpoint) names \(uberblock.configurationGeneration)")
        }
        if pool.allocator.policy != configuration.policy {
            problems.append("allocator policy (\(describe(pool.allocator.policy))) is not the configuration's (\(describe(configuration.policy)))")
        }
        let status = pool.status()
        var digests: [UInt32] = []
        for device in status.devices {
            let space = device.space
            if space.usedBytes + space.freeBytes + space.reservedBytes + space.deferredBytes != space.capacityBytes {
                problems.append("\(device.path): used \(space.usedBytes) + free \(space.freeBytes) + reserved \(space.reservedBytes) + deferred \(space.deferredBytes) ≠ capacity \(space.capacityBytes)")
            }
            var digest: UInt32 = 0
            var block = [UInt8](repeating: 0, count: Int(DeviceLayout.metadataBlockBytes))
            for index in 0..<pool.allocator.spaceMapBlockCount(deviceIndex: device.index) {
                block.withUnsafeMutableBytes { pool.allocator.encodeSpaceMapBlock(deviceIndex: device.index, blockIndex: index, into: $0) }
                digest = CRC32C.checksum(block, continuing: digest)
            }
            digests.append(digest)
        }
        // The root block, every copy: readable, its checksum the pointer's, one tag.
        var tags: Set<UInt64> = []
        for (slot, pointer) in uberblock.roots.enumerated() where !pointer.isNull {
            guard pointer.deviceIndex < pool.devices.count, pointer.lengthBytes == rootBlockBytes else {
                problems.append("root \(slot): pointer \(pointer) outside the pool")
                continue
            }
            var block = [UInt8](repeating: 0, count: Int(rootBlockBytes))
            do {
                try block.withUnsafeMutableBytes { try pool.devices[pointer.deviceIndex].read(into: $0, at: pointer.offsetBytes) }
            } catch {
                problems.append("root \(slot): unreadable: \(error)")
                continue
            }
            guard CRC32C.checksum(block) == pointer.checksum, word(block, at: 0) == rootMagic else {
                problems.append("root \(slot) (dev\(pointer.deviceIndex):\(pointer.offsetBytes), checkpoint \(pointer.birthCheckpoint)): checksum mismatch, the block is not what the uberblock points to")
                continue
            }
            tags.insert(word(block, at: 1))
        }
        if tags.count > 1 { problems.append("root copies disagree: tags \(tags.sorted())") }
        let snapshot = PoolSnapshot(checkpoint: uberblock.checkpoint, state: uberblock.state == .exported ? "exported" : "active",
                                    configurationGeneration: configuration.generation, policy: describe(configuration.policy),
                                    rootTag: tags.count == 1 ? tags.first : nil,
                                    usedBytes: status.devices.map(\.space.usedBytes), spaceMapDigests: digests)
        return (snapshot, problems)
    }

    /// The settings of `policy` that differ from the defaults.
    public static func describe(_ policy: PoolPolicy) -> String {
        let defaults = Dictionary(uniqueKeysWithValues: PoolPolicy().settings.map { ($0.key, $0.value) })
        let changed = policy.settings.filter { defaults[$0.key] != $0.value }.map { "\($0.key)=\($0.value)" }
        return changed.isEmpty ? "defaults" : changed.joined(separator: ",")
    }
}

extension PoolCrashSystem.Layout {
    /// The role of each device, in `devices` order.
    public var roles: [DeviceRole] {
        switch self {
        case .tiered: return [.data, .metadata, .log]
        case .single: return [.data]
        }
    }
}
