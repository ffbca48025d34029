// Pool create / import / export / set, and every bad input the issue names: each error names the
// device path and what is wrong, and leaves the devices as they were.

import Foundation
import StrataIO
import Testing
@testable import StrataPool

@Suite struct PoolLifecycleTests {
    typealias S = PoolTestSupport

    @Test func createExportImportRoundTrip() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            var policy = PoolPolicy()
            policy.setCopies(2, for: .metadata)
            let pool = try Pool.create(name: "tank", members: members, policy: policy)
            #expect(pool.uberblock.checkpoint == 1)
            #expect(pool.configuration.members.map(\.role) == [.data, .metadata, .log])
            let created = pool.configuration
            try pool.export()
            #expect(throws: PoolError.self) { try pool.commitCheckpoint() }

            let imported = try Pool.importPool(paths: members.map(\.path))
            #expect(imported.configuration == created)
            #expect(imported.status().wasExported)
            #expect(imported.uberblock.checkpoint == 3, "create 1, export 2, import marks active at 3")
            let again = try Pool.importPool(paths: members.map(\.path).reversed(), name: "tank", readOnly: true)
            #expect(!again.status().wasExported, "the read-write import left it active")
            #expect(again.configuration == created)
            #expect(again.devices.map(\.path) == members.map(\.path), "devices are ordered by member index")
        }
    }

    @Test func oneDevicePoolHoldsEveryRole() throws {
        try S.withDirectory { directory in
            let pool = try Pool.create(name: "solo", members: [.init(path: directory + "/d", role: .data, createSizeBytes: 64 * S.mib)])
            #expect(pool.configuration.members[0].holdsEveryRole)
            for role in [DeviceRole.metadata, .data, .log] {
                #expect(pool.configuration.memberIndices(holding: role) == [0])
            }
        }
    }

    @Test func importByDirectoryScanSkipsOtherFiles() throws {
        try S.withDirectory { directory in
            _ = try Pool.create(name: "tank", members: S.members(directory))
            FileManager.default.createFile(atPath: directory + "/notes.txt", contents: Data("hello".utf8))
            let pool = try Pool.importPool(scanning: directory)
            #expect(pool.name == "tank")
            #expect(pool.status().skipped == [directory + "/notes.txt"])
        }
    }

    @Test func policyChangeSurvivesReimport() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            let pool = try Pool.create(name: "tank", members: members)
            var policy = pool.configuration.policy
            try policy.set("spill-threshold", to: "70")
            try pool.setPolicy(policy)
            #expect(pool.configuration.generation == 2)
            try pool.export()
            let imported = try Pool.importPool(paths: members.map(\.path), readOnly: true)
            #expect(imported.configuration.policy.spillThresholdPercent == 70)
            #expect(imported.configuration.generation == 2)
        }
    }

    // MARK: Bad input at create

    @Test func createRefusesBadInputAndCreatesNothing() throws {
        try S.withDirectory { directory in
            let a = directory + "/a", b = directory + "/b"
            S.expectPoolError({ _ = try Pool.create(name: "t", members: [.init(path: a, role: .data, createSizeBytes: 64 * S.mib),
                                                                         .init(path: a, role: .metadata, createSizeBytes: 64 * S.mib)]) }) {
                if case .duplicateDevice(let path, _) = $0 { return path == a } else { return false }
            }
            S.expectPoolError({ _ = try Pool.create(name: "t", members: [.init(path: a, role: .metadata, createSizeBytes: 64 * S.mib)]) }) {
                if case .invalidConfiguration(let message) = $0 { return message.contains("data device") } else { return false }
            }
            let tooSmall = S.expectPoolError({ _ = try Pool.create(name: "t", members: [.init(path: a, role: .data, createSizeBytes: 64 * S.mib),
                                                                                        .init(path: b, role: .log, createSizeBytes: 8 * S.mib)]) }) {
                if case .deviceTooSmall(let path, _, _) = $0 { return path == b } else { return false }
            }
            #expect(tooSmall.contains(b))
            S.expectPoolError({ _ = try Pool.create(name: "t", members: [.init(path: a, role: .data, createSizeBytes: 64 * S.mib)],
                                                    policy: { var p = PoolPolicy(); p.setCopies(2, for: .data); return p }()) }) {
                if case .invalidConfiguration(let message) = $0 { return message.contains("copies.data=2") } else { return false }
            }
            S.expectPoolError({ _ = try Pool.create(name: "bad name!", members: [.init(path: a, role: .data, createSizeBytes: 64 * S.mib)]) }) {
                if case .invalidConfiguration(let message) = $0 { return message.contains("pool name") } else { return false }
            }
            S.expectPoolError({ _ = try Pool.create(name: "t", members: [.init(path: a, role: .data)]) }) {
                if case .invalidConfiguration(let message) = $0 { return message.contains(a) } else { return false }
            }
            #expect(!FileManager.default.fileExists(atPath: a), "a failed create removes the files it made")
            #expect(!FileManager.default.fileExists(atPath: b))
        }
    }

    @Test func createRefusesTheSameFileUnderTwoNames() throws {
        try S.withDirectory { directory in
            let a = directory + "/a"
            FileManager.default.createFile(atPath: a, contents: nil)
            S.truncate(a, to: 64 * S.mib)
            try FileManager.default.createSymbolicLink(atPath: directory + "/alias", withDestinationPath: a)
            S.expectPoolError({ _ = try Pool.create(name: "t", members: [.init(path: a, role: .data), .init(path: directory + "/alias", role: .log)]) }) {
                if case .duplicateDevice(let path, let other) = $0 { return path == directory + "/alias" && other == a } else { return false }
            }
        }
    }

    @Test func createRefusesLabelledDevicesUnlessForced() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            _ = try Pool.create(name: "old", members: members)
            let before = S.fingerprint(members.map(\.path))
            let message = S.expectPoolError({ _ = try Pool.create(name: "new", members: members) }) {
                if case .alreadyLabelled(let path, let name, _) = $0 { return path == members[0].path && name == "old" } else { return false }
            }
            #expect(message.contains("--force"))
            #expect(S.fingerprint(members.map(\.path)) == before, "refused create changed a device")
            let forced = try Pool.create(name: "new", members: members, force: true)
            #expect(forced.name == "new")
            let imported = try Pool.importPool(paths: members.map(\.path), readOnly: true)
            #expect(imported.name == "new" && imported.uuid == forced.uuid)
        }
    }

    // MARK: Bad input at import

    @Test func importNamesForeignMissingDuplicateStaleAndTruncatedDevices() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            let pool = try Pool.create(name: "tank", members: members)
            let other = try Pool.create(name: "other", members: [.init(path: directory + "/x", role: .data, createSizeBytes: 64 * S.mib)])
            try pool.export()
            try other.export()
            let paths = members.map(\.path)
            let before = S.fingerprint(paths + [directory + "/x"])

            let foreign = S.expectPoolError({ _ = try Pool.importPool(paths: paths + [directory + "/x"], name: "tank") }) {
                if case .foreignDevice(let path, let name, _, let expected, _) = $0 {
                    return path == directory + "/x" && name == "other" && expected == "tank"
                } else { return false }
            }
            #expect(foreign.contains("'other'"))

            let missing = S.expectPoolError({ _ = try Pool.importPool(paths: [paths[0], paths[2]]) }) {
                if case .missingMembers(let name, let list) = $0 { return name == "tank" && list.count == 1 } else { return false }
            }
            #expect(missing.contains("device 1") && missing.contains("metadata"))

            try S.copyFile(paths[1], directory + "/meta-copy")
            S.expectPoolError({ _ = try Pool.importPool(paths: paths + [directory + "/meta-copy"]) }) {
                if case .duplicateMember(let path, let otherPath, let index) = $0 {
                    return path == directory + "/meta-copy" && otherPath == paths[1] && index == 1
                } else { return false }
            }
            #expect(S.fingerprint(paths + [directory + "/x"]) == before, "a refused import changed a device")

            // Stale: keep the metadata device's old image, change the policy, put the old image back.
            let reopened = try Pool.importPool(paths: paths)
            var policy = reopened.configuration.policy
            policy.spillThresholdPercent = 50
            try reopened.setPolicy(policy)
            try reopened.export()
            try S.copyFile(paths[1], directory + "/meta-new")
            try S.copyFile(directory + "/meta-copy", paths[1])
            let stale = S.expectPoolError({ _ = try Pool.importPool(paths: paths) }) {
                if case .staleDevice(let path, let device, let pool) = $0 { return path == paths[1] && device == 1 && pool == 2 } else { return false }
            }
            #expect(stale.contains("stale"))
            try S.copyFile(directory + "/meta-new", paths[1])

            // Truncated: the data device loses its last MiB.
            S.truncate(paths[0], to: 255 * S.mib)
            S.expectPoolError({ _ = try Pool.importPool(paths: paths) }) {
                if case .truncatedDevice(let path, let size, let recorded) = $0 {
                    return path == paths[0] && size == 255 * S.mib && recorded == 256 * S.mib
                } else { return false }
            }
        }
    }

    @Test func oneCorruptLabelCopyStillImportsAndIsRepaired() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            let pool = try Pool.create(name: "tank", members: members)
            try pool.export()
            let paths = members.map(\.path)
            // Wreck the front label of the data device: configuration slots and uberblock ring.
            S.scribble(paths[0], offset: 0, count: Int(DeviceLayout.labelBytes))
            let readOnly = try Pool.importPool(paths: paths, readOnly: true)
            #expect(readOnly.status().devices[0].health != "online")
            let writable = try Pool.importPool(paths: paths)
            #expect(writable.name == "tank")
            try writable.export()
            let labels = try DeviceLabels.read(BlockDevice.open(paths[0], options: .init(readOnly: true)))
            #expect(labels.labelCopies(holding: 1) == 2, "read-write import rewrote the damaged copy")

            // The back copy of another device, and then both copies: no label.
            S.scribble(paths[2], offset: 64 * S.mib - DeviceLayout.labelBytes, count: Int(DeviceLayout.labelBytes))
            _ = try Pool.importPool(paths: paths, readOnly: true)
            S.scribble(paths[2], offset: 0, count: Int(DeviceLayout.labelBytes))
            S.expectPoolError({ _ = try Pool.importPool(paths: paths, readOnly: true) }) {
                if case .noLabel(let path, _) = $0 { return path == paths[2] } else { return false }
            }
        }
    }

    @Test func newerFormatIsRefusedWithAClearMessage() throws {
        try S.withDirectory { directory in
            let path = directory + "/d"
            let pool = try Pool.create(name: "solo", members: [.init(path: path, role: .data, createSizeBytes: 64 * S.mib)])
            let configuration = pool.configuration
            try pool.export()
            let block = allocateAlignedBuffer(byteCount: 4096)
            defer { block.deallocate() }
            for labelOffset in configuration.members[0].layout.labelOffsets {
                configuration.encode(deviceIndex: 0, into: block)
                ByteWriter(block).put(UInt32(9), at: 8)
                ByteWriter(block).sealWithChecksum()
                let device = try BlockDevice.open(path)
                try device.write(UnsafeRawBufferPointer(block), at: DeviceLayout.configSlotOffset(labelOffset: labelOffset, slot: 1))
            }
            let message = S.expectPoolError({ _ = try Pool.importPool(paths: [path]) }) {
                if case .unsupportedVersion(let failing, _, let version, _) = $0 { return failing == path && version == 9 } else { return false }
            }
            #expect(message.contains("upgrade"))
        }
    }

    // MARK: Uberblocks

    @Test func newestValidUberblockWinsAndATornOneIsSkipped() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            let pool = try Pool.create(name: "tank", members: members)
            for _ in 0..<5 { try pool.commitCheckpoint() }
            #expect(pool.uberblock.checkpoint == 6)
            let paths = members.map(\.path)
            // Tear checkpoint 6 on every device and every label: 5 must win.
            let slot = 6 % UInt64(DeviceLayout.uberblockSlotCount)
            for (index, path) in paths.enumerated() {
                for labelOffset in pool.configuration.members[index].layout.labelOffsets {
                    S.scribble(path, offset: DeviceLayout.uberblockSlotOffset(labelOffset: labelOffset, slot: Int(slot)) + 1024, count: 512)
                }
            }
            let imported = try Pool.importPool(paths: paths, readOnly: true)
            #expect(imported.uberblock.checkpoint == 5)
            // One intact copy of a newer checkpoint is enough.
            let writable = try Pool.importPool(paths: paths)
            #expect(writable.uberblock.checkpoint == 6)
            try writable.commitCheckpoint()
            for labelOffset in writable.configuration.members[0].layout.labelOffsets {
                S.scribble(paths[0], offset: DeviceLayout.uberblockSlotOffset(labelOffset: labelOffset, slot: 7) + 8, count: 8)
            }
            #expect(try Pool.importPool(paths: paths, readOnly: true).uberblock.checkpoint == 7)
        }
    }

    @Test func uberblockRingWrapsAround() throws {
        try S.withDirectory { directory in
            let path = directory + "/d"
            let pool = try Pool.create(name: "solo", members: [.init(path: path, role: .data, createSizeBytes: 64 * S.mib)])
            for _ in 0..<(DeviceLayout.uberblockSlotCount + 5) { try pool.commitCheckpoint() }
            let imported = try Pool.importPool(paths: [path], readOnly: true)
            #expect(imported.uberblock.checkpoint == UInt64(DeviceLayout.uberblockSlotCount + 6))
        }
    }

    @Test func readOnlyImportWritesNothing() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            try Pool.create(name: "tank", members: members).export()
            let before = S.fingerprint(members.map(\.path))
            let pool = try Pool.importPool(paths: members.map(\.path), readOnly: true)
            #expect(throws: PoolError.self) { try pool.commitCheckpoint() }
            #expect(throws: PoolError.self) { try pool.setPolicy(PoolPolicy()) }
            #expect(S.fingerprint(members.map(\.path)) == before)
        }
    }
}
