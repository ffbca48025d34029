// Pool.importPool — find the pool's devices, check that the set is complete and consistent,
// and open it at its newest valid uberblock.
//
// Theory. Import trusts nothing it has not checked. Each device's two labels are read
// (DeviceLabels); the target pool is the one named (or, unnamed, the one most devices belong
// to). The root is the valid uberblock of that pool with the highest checkpoint number on any
// device; it names the configuration generation in force, and that configuration's member table
// is the truth about which devices belong. Then every member must be present exactly once and
// hold that generation, and no device of another pool may be among the paths given. Each
// problem is reported with the device path (or, for a missing member, its index, role, UUID and
// size), all missing members at once. Devices are opened read-only for a read-only import, and
// nothing is written; a read-write import rewrites a damaged label copy and commits one
// uberblock marking the pool active (so a later import can tell it was not exported cleanly).

import StrataIO

#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// What import found besides the pool itself (reported by `status`).
    public struct ImportReport: Sendable, Codable, Equatable {
        /// The uberblock state at import: false when the pool was not exported cleanly.
        public var wasExported: Bool
        /// Devices in the scanned directory that were skipped (no label, another pool).
        public var skipped: [String]
    }

    /// Imports a pool from its device paths.
    public static func importPool(paths: [String], name: String? = nil, readOnly: Bool = false) throws(PoolError) -> Pool {
        guard !paths.isEmpty else { throw .invalidConfiguration("import needs at least one device path") }
        try rejectDuplicatePaths(paths)
        var devices: [any BlockStorage] = []
        for path in paths {
            do {
                devices.append(try BlockDevice.open(path, options: .init(readOnly: readOnly)))
            } catch {
                throw .io(error)
            }
        }
        return try importPool(devices: devices, name: name, readOnly: readOnly)
    }

    /// Imports a pool from the regular files and block devices in `directory`; devices without
    /// a Strata label, or of another pool than the one named, are skipped.
    public static func importPool(scanning directory: String, name: String? = nil, readOnly: Bool = false) throws(PoolError) -> Pool {
        guard let entries = listDirectory(directory) else {
            throw .invalidConfiguration("\(directory): cannot list directory (\(IOError.errnoName(errno)))")
        }
        var devices: [any BlockStorage] = []
        var skipped: [String] = []
        for entry in entries.sorted() {
            let path = directory.hasSuffix("/") ? directory + entry : directory + "/" + entry
            var info = stat()
            guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG || (info.st_mode & S_IFMT) == S_IFBLK else { continue }
            guard let device = try? BlockDevice.open(path, options: .init(readOnly: readOnly)),
                  let labels = try? DeviceLabels.read(device), let newest = labels.newestConfiguration else {
                skipped.append(path)
                continue
            }
            if let name, newest.configuration.name != name && newest.configuration.uuid.description != name {
                skipped.append(path)
                continue
            }
            devices.append(device)
        }
        guard !devices.isEmpty else {
            throw .invalidConfiguration("\(directory): no Strata pool devices found" + (name.map { " for pool '\($0)'" } ?? ""))
        }
        let pool = try importPool(devices: devices, name: name, readOnly: readOnly)
        pool.state.withLock { $0.importReport.skipped = skipped }
        return pool
    }

    /// Imports a pool from open devices (any `BlockStorage`). Every device given must belong to
    /// the pool.
    public static func importPool(devices: [any BlockStorage], name: String? = nil, readOnly: Bool = false) throws(PoolError) -> Pool {
        // 1. Labels of every device.
        var labels: [DeviceLabels] = []
        for device in devices {
            let read: DeviceLabels
            do { read = try DeviceLabels.read(device) } catch { throw .io(error) }
            if read.newestConfiguration == nil {
                if let newer = read.newerVersion {
                    throw .unsupportedVersion(path: device.path, what: newer.what, version: newer.version,
                                              supported: newer.supported)
                }
                throw .noLabel(path: device.path, detail: read.damage.isEmpty ? "no Strata label found" : read.damage.joined(separator: "; "))
            }
            labels.append(read)
        }

        // 2. The target pool.
        let newest = labels.map { $0.newestConfiguration!.configuration }
        let target: PoolConfiguration
        if let name {
            guard let match = newest.first(where: { $0.name == name || $0.uuid.description == name }) else {
                let found = Set(newest.map { "'\($0.name)'" }).sorted().joined(separator: ", ")
                throw .invalidConfiguration("no device of pool '\(name)' among the devices given (found \(found))")
            }
            target = match
        } else {
            var counts: [PoolUUID: Int] = [:]
            for configuration in newest { counts[configuration.uuid, default: 0] += 1 }
            let best = counts.values.max()!
            let winners = counts.filter { $0.value == best }.map(\.key)
            guard winners.count == 1 else {
                throw .ambiguousPools(names: newest.filter { winners.contains($0.uuid) }.map { "'\($0.name)' (\($0.uuid))" }
                    .reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } })
            }
            target = newest.first { $0.uuid == winners[0] }!
        }
        for (index, configuration) in newest.enumerated() where configuration.uuid != target.uuid {
            throw .foreignDevice(path: devices[index].path, poolName: configuration.name, poolUUID: configuration.uuid,
                                 expectedName: target.name, expected: target.uuid)
        }

        // A slot of a newer format means a newer build has written this pool: reading the older
        // slots would roll the pool back, and a read-write import would overwrite the newer root.
        for (index, deviceLabels) in labels.enumerated() {
            if let newer = deviceLabels.newerVersion {
                throw .unsupportedVersion(path: devices[index].path, what: newer.what, version: newer.version,
                                          supported: newer.supported)
            }
        }

        // 3. The root: the newest valid uberblock of this pool on any device.
        let candidates = labels.flatMap(\.uberblocks).filter { $0.poolUUID == target.uuid }
        guard let root = candidates.max(by: { $0.checkpoint < $1.checkpoint }) else { throw .noUberblock(poolName: target.name) }
        let generation = root.configurationGeneration
        guard let configuration = labels.lazy.compactMap({ $0.configuration(generation: generation)?.configuration }).first else {
            throw .invalidConfiguration("pool '\(target.name)': no device holds configuration generation \(generation), which uberblock \(root.checkpoint) names")
        }
        guard root.spaceMaps.count == configuration.members.count else {
            throw .invalidConfiguration("pool '\(target.name)': uberblock \(root.checkpoint) has \(root.spaceMaps.count) space maps for \(configuration.members.count) members")
        }

        // 4. Every member exactly once, at the generation in force, at its full size.
        var slots: [Int?] = Array(repeating: nil, count: configuration.members.count)
        for (index, device) in devices.enumerated() {
            let own = labels[index].newestConfiguration!
            let uuid = own.configuration.members[own.deviceIndex].uuid
            guard let member = configuration.members.firstIndex(where: { $0.uuid == uuid }) else {
                throw .staleDevice(path: device.path, deviceGeneration: own.configuration.generation, poolGeneration: generation)
            }
            guard labels[index].configuration(generation: generation) != nil else {
                throw .staleDevice(path: device.path, deviceGeneration: own.configuration.generation, poolGeneration: generation)
            }
            if let earlier = slots[member] {
                throw .duplicateMember(path: device.path, otherPath: devices[earlier].path, deviceIndex: member)
            }
            let recorded = configuration.members[member].recordedSizeBytes
            if device.sizeBytes < recorded {
                throw .truncatedDevice(path: device.path, sizeBytes: device.sizeBytes, labelSizeBytes: recorded)
            }
            slots[member] = index
        }
        let missing = slots.indices.filter { slots[$0] == nil }.map { index -> String in
            let member = configuration.members[index]
            return "device \(index) (role \(member.holdsEveryRole ? "all" : member.role.name), uuid \(member.uuid), \(member.recordedSizeBytes) bytes)"
        }
        guard missing.isEmpty else { throw .missingMembers(poolName: configuration.name, missing: missing) }
        let ordered = slots.map { devices[$0!] }
        let orderedLabels = slots.map { labels[$0!] }

        // 5. Space maps, then the pool object.
        let allocator = makeAllocator(configuration: configuration, devices: ordered, openCheckpoint: root.checkpoint + 1)
        // Each device's map is read, verified and loaded on its own thread (a 1 TiB device has
        // 32 MiB of bitmap); the allocator's lock is taken per block, briefly.
        let members = configuration.members
        let loaded = DeviceFanOut.run(count: ordered.count) { (index: Int) throws(PoolError) -> SpaceMapCopies in
            try loadSpaceMap(device: ordered[index], index: index, layout: members[index].layout,
                             root: root.spaceMaps[index], allocator: allocator)
        }
        var spaceMaps: [SpaceMapCopies] = []
        for (index, result) in loaded.enumerated() {
            switch result {
            case .success(let copies): spaceMaps.append(copies)
            case .failure(let error):
                // A device whose own newest uberblock is well behind the root, and whose space map
                // does not match what the root names, is an old image of the device (a restored
                // backup), not a corrupted one. A device that merely lags (its uberblock writes
                // were lost in a crash) still has the space map the root names, and is fine.
                let newestOwn = orderedLabels[index].uberblocks.filter { $0.poolUUID == target.uuid }.map(\.checkpoint).max() ?? 0
                if case .corruptMetadata = error, newestOwn + 1 < root.checkpoint {
                    throw .staleDeviceCheckpoint(path: ordered[index].path, deviceCheckpoint: newestOwn, poolCheckpoint: root.checkpoint)
                }
                throw error
            }
        }
        let damage = orderedLabels.map { deviceLabels -> LabelDamage in
            var notes = deviceLabels.damage
            if deviceLabels.labelCopies(holding: generation) < 2 {
                notes.append("one label copy lacks configuration generation \(generation)")
            }
            return LabelDamage(notes: notes, slots: deviceLabels.damagedSlots, repaired: false)
        }
        let pool = Pool(devices: ordered, isReadOnly: readOnly, allocator: allocator,
                        state: PoolState(configuration: configuration, uberblock: root, spaceMaps: spaceMaps,
                                         labelDamage: damage,
                                         importReport: ImportReport(wasExported: root.state == .exported, skipped: [])))
        if !readOnly {
            try pool.repairLabels()
            try pool.commitCheckpoint()
        }
        return pool
    }

    /// Repairs what import found damaged: the configuration in force is rewritten into both
    /// label copies of a device that lacks it, and every other damaged slot (a torn uberblock,
    /// a torn configuration of an uncommitted change) is zeroed. Invalid slots carry no state,
    /// so rewriting them is safe at any moment; the notes stay for `status`, marked repaired.
    func repairLabels() throws(PoolError) {
        try state.withLock { state throws(PoolError) in
            let configuration = state.configuration
            let inForce = Int(configuration.generation % UInt64(DeviceLayout.configSlotCount))
            let zero = allocateAlignedBuffer(byteCount: Int(DeviceLayout.uberblockSlotBytes))
            defer { zero.deallocate() }
            for index in state.labelDamage.indices where !state.labelDamage[index].notes.isEmpty {
                try writeConfiguration(configuration, deviceIndex: index)
                for slot in state.labelDamage[index].slots where !(slot.isConfiguration && slot.slot == inForce) {
                    let offset = slot.isConfiguration
                        ? DeviceLayout.configSlotOffset(labelOffset: slot.labelOffset, slot: slot.slot)
                        : DeviceLayout.uberblockSlotOffset(labelOffset: slot.labelOffset, slot: slot.slot)
                    do throws(IOError) {
                        try devices[index].write(UnsafeRawBufferPointer(zero), at: offset, fua: false)
                    } catch {
                        throw .io(error)
                    }
                }
                state.labelDamage[index].repaired = true
            }
        }
    }

    static func listDirectory(_ path: String) -> [String]? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
