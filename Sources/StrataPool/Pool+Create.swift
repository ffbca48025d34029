// Pool.create — validate everything, then lay down labels, space maps and the first uberblock.
//
// Nothing is written until every check has passed on every device: names and roles, duplicate
// devices (same path, same inode, same block device), sizes, copies the roles can satisfy, and
// existing Strata labels (refused unless forced). Files that `create` made for a PATH:SIZE member
// are removed again when a later check fails, so a failed create leaves the devices as they were.
// The write order is the commit protocol's: labels and space maps, flush, then uberblock 1, flush.

import StrataIO

#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// One device of a pool to create: its path, role, and the size to create it with when the
    /// path does not exist (a sparse file).
    public struct MemberSpec: Sendable, Equatable {
        public var path: String
        public var role: DeviceRole
        public var createSizeBytes: UInt64?

        public init(path: String, role: DeviceRole, createSizeBytes: UInt64? = nil) {
            self.path = path
            self.role = role
            self.createSizeBytes = createSizeBytes
        }
    }

    /// Creates a pool on device paths (files are created sparse when `createSizeBytes` is given
    /// and the path does not exist). Block devices must not be mounted or held.
    public static func create(name: String, members: [MemberSpec], policy: PoolPolicy = PoolPolicy(),
                              force: Bool = false) throws(PoolError) -> Pool {
        try validateShape(name: name, roles: members.map(\.role), paths: members.map(\.path), policy: policy)
        try rejectDuplicatePaths(members.map(\.path))
        var opened: [BlockDevice] = []
        var created: [String] = []
        func undo() {
            opened.removeAll()
            for path in created { _ = unlink(path) }
        }
        for member in members {
            let existed = access(member.path, F_OK) == 0
            if !existed && member.createSizeBytes == nil {
                undo()
                throw .invalidConfiguration("\(member.path): no such file; give PATH:SIZE to create it")
            }
            do {
                let device = try BlockDevice.open(member.path, options: .init(createSizeBytes: member.createSizeBytes,
                                                                              minimumSizeBytes: DeviceLayout.deviceBytesMin))
                opened.append(device)
                if !existed { created.append(member.path) }
            } catch {
                undo()
                if case .tooSmall(let path, let size, let required) = error {
                    throw .deviceTooSmall(path: path, sizeBytes: size, minimumBytes: required)
                }
                throw .io(error)
            }
        }
        do {
            return try create(name: name, devices: zip(opened, members).map { ($0, $1.role) }, policy: policy, force: force)
        } catch {
            undo()
            throw error
        }
    }

    /// Creates a pool on already-open devices (any `BlockStorage`: real devices, or the crash
    /// harness's recording and in-memory devices).
    public static func create(name: String, devices: [(storage: any BlockStorage, role: DeviceRole)],
                              policy: PoolPolicy = PoolPolicy(), force: Bool = false) throws(PoolError) -> Pool {
        try validateShape(name: name, roles: devices.map(\.role), paths: devices.map(\.storage.path), policy: policy)
        for (index, device) in devices.enumerated() {
            if let earlier = devices[..<index].first(where: { $0.storage === device.storage }) {
                throw .duplicateDevice(path: device.storage.path, otherPath: earlier.storage.path)
            }
            if device.storage.isReadOnly { throw .io(.readOnly(path: device.storage.path)) }
            if device.storage.sizeBytes < DeviceLayout.deviceBytesMin {
                throw .deviceTooSmall(path: device.storage.path, sizeBytes: device.storage.sizeBytes, minimumBytes: DeviceLayout.deviceBytesMin)
            }
            guard device.storage.blockSizeBytes <= 4096, 4096 % device.storage.blockSizeBytes == 0 else {
                throw .invalidConfiguration("\(device.storage.path): block size \(device.storage.blockSizeBytes) is not a divisor of 4096")
            }
        }
        if !force {
            for device in devices {
                let labels: DeviceLabels
                do { labels = try DeviceLabels.read(device.storage) } catch { throw .io(error) }
                if let (configuration, _) = labels.newestConfiguration {
                    throw .alreadyLabelled(path: device.storage.path, poolName: configuration.name, poolUUID: configuration.uuid)
                }
                if let newer = labels.newerVersion {
                    throw .unsupportedVersion(path: device.storage.path, what: newer.what, version: newer.version,
                                              supported: newer.supported)
                }
            }
        }

        let single = devices.count == 1
        let configuration = PoolConfiguration(
            name: name, uuid: .random(), generation: 1, createdTimeNs: nowNs(),
            members: devices.map {
                PoolMember(uuid: .random(), role: $0.role, holdsEveryRole: single,
                           recordedSizeBytes: DeviceLayout.recordedSize(forDeviceBytes: $0.storage.sizeBytes))
            },
            policy: policy)
        let problems = configuration.validationProblems()
        guard problems.isEmpty else { throw .invalidConfiguration(problems.joined(separator: "; ")) }

        let storages = devices.map(\.storage)
        let allocator = makeAllocator(configuration: configuration, devices: storages, openCheckpoint: 1)
        let firstUberblock = Uberblock(poolUUID: configuration.uuid, checkpoint: 1, timeNs: nowNs(),
                                       configurationGeneration: 1, state: .active,
                                       spaceMaps: configuration.members.map {
                                           SpaceMapRoot(copy: 0, tableChecksum: 0, bitmapBlockCount: UInt32($0.layout.bitmapBlockCount))
                                       })
        let pool = Pool(devices: storages, isReadOnly: false, allocator: allocator,
                        state: PoolState(configuration: configuration, uberblock: firstUberblock,
                                         spaceMaps: configuration.members.map { SpaceMapCopies(layout: $0.layout) },
                                         labelDamage: Array(repeating: .none, count: storages.count)))
        do {
            // Labels: configuration generation 1 in its slot, the rest of both label areas zeroed
            // (an old pool's uberblocks must not survive a forced create).
            let label = allocateAlignedBuffer(byteCount: Int(DeviceLayout.labelBytes))
            defer { label.deallocate() }
            for (index, device) in storages.enumerated() {
                label.initializeMemory(as: UInt8.self, repeating: 0)
                let slot = Int(DeviceLayout.configSlotOffset(labelOffset: 0, slot: 1))
                configuration.encode(deviceIndex: index,
                                     into: UnsafeMutableRawBufferPointer(rebasing: label[slot..<(slot + Int(DeviceLayout.configSlotBytes))]))
                for offset in configuration.members[index].layout.labelOffsets {
                    try device.write(UnsafeRawBufferPointer(label), at: offset, fua: false)
                }
            }
            // Space maps, then flush, then uberblock 1: the commit protocol.
            try pool.state.withLock { state throws(PoolError) in
                try pool.commitLocked(&state, newState: .active, checkpointOverride: 1)
            }
        } catch let error as PoolError {
            throw error
        } catch let error as IOError {
            throw .io(error)
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
        return pool
    }

    /// Checks that do not need the devices: name, roles, policy, copies.
    static func validateShape(name: String, roles: [DeviceRole], paths: [String], policy: PoolPolicy) throws(PoolError) {
        var problems = PoolConfiguration.nameProblems(name)
        if roles.isEmpty { problems.append("a pool needs at least one device") }
        if roles.count > PoolConfiguration.deviceCountMax {
            problems.append("a pool has at most \(PoolConfiguration.deviceCountMax) devices, not \(roles.count)")
        }
        if !roles.isEmpty && !roles.contains(.data) { problems.append("a pool needs at least one data device") }
        problems += policy.validationProblems()
        if problems.isEmpty {
            problems += copiesProblems(roles: roles, policy: policy)
        }
        guard problems.isEmpty else { throw .invalidConfiguration(problems.joined(separator: "; ")) }
    }

    /// `copies = N` needs N distinct devices that can serve the class (its role, then fallbacks).
    static func copiesProblems(roles: [DeviceRole], policy: PoolPolicy) -> [String] {
        let count = { (role: DeviceRole) in roles.filter { $0 == role }.count }
        let single = roles.count == 1
        let servers: [(DeviceRole, Int)] = [
            (.metadata, single ? 1 : count(.metadata) + count(.data)),
            (.data, single ? 1 : count(.data)),
            (.log, single ? 1 : count(.log) + count(.metadata) + count(.data)),
        ]
        return servers.compactMap { role, available in
            policy.copies(for: role) > available
                ? "copies.\(role.name)=\(policy.copies(for: role)) needs \(policy.copies(for: role)) distinct devices that can hold \(role.name), the pool has \(available)"
                : nil
        }
    }

    /// Refuses the same path twice and two paths naming the same file or block device.
    static func rejectDuplicatePaths(_ paths: [String]) throws(PoolError) {
        var seen: [(key: String, path: String)] = []
        for path in paths {
            var info = stat()
            let key: String
            if stat(path, &info) == 0 {
                key = (info.st_mode & S_IFMT) == S_IFBLK ? "blk:\(info.st_rdev)" : "ino:\(info.st_dev):\(info.st_ino)"
            } else {
                key = "path:\(path)"
            }
            if let earlier = seen.first(where: { $0.key == key || $0.path == path }) {
                throw .duplicateDevice(path: path, otherPath: earlier.path)
            }
            seen.append((key, path))
        }
    }
}
