// Space maps on disk: allocations survive export and import, a crash loses only what was not
// committed, a torn newest uberblock falls back to the previous checkpoint's intact space-map
// copy, frees of checkpoint N are free on disk at N but reusable only after N+1, and a corrupt
// bitmap block is reported with its device.

import Foundation
import StrataIO
import Testing
@testable import StrataPool

@Suite struct PoolSpaceMapTests {
    typealias S = PoolTestSupport

    /// Allocates until the class is full and returns every extent; fails the test on overlap
    /// with `existing`.
    static func drain(_ pool: Pool, _ allocationClass: AllocationClass, lengthBytes: UInt64, avoiding existing: [Extent]) -> [Extent] {
        var taken: [Extent] = []
        while let copies = try? pool.allocator.allocate(allocationClass, lengthBytes: lengthBytes) {
            for extent in copies {
                for old in existing where old.deviceIndex == extent.deviceIndex
                    && old.offsetBytes < extent.endBytes && extent.offsetBytes < old.endBytes {
                    Issue.record("allocation \(extent) overlaps committed \(old)")
                }
                taken.append(extent)
            }
        }
        return taken
    }

    @Test func allocationsSurviveExportAndImport() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            var policy = PoolPolicy()
            policy.setCopies(2, for: .metadata)
            let pool = try Pool.create(name: "tank", members: members, policy: policy)
            var committed: [Extent] = []
            for _ in 0..<40 { committed += try pool.allocator.allocate(.data, lengthBytes: 1 << 20) }
            for _ in 0..<300 { committed += try pool.allocator.allocate(.metadata, lengthBytes: 4096) }
            for _ in 0..<50 { committed += try pool.allocator.allocate(.log, lengthBytes: 64 << 10) }
            let usedBefore = pool.status().devices.map(\.space.usedBytes)
            try pool.export()

            let imported = try Pool.importPool(paths: members.map(\.path))
            #expect(imported.status().devices.map(\.space.usedBytes) == usedBefore)
            let fresh = PoolSpaceMapTests.drain(imported, .metadata, lengthBytes: 4096, avoiding: committed)
            #expect(!fresh.isEmpty)
        }
    }

    @Test func aCrashKeepsOnlyCommittedAllocations() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            var committed: [Extent] = []
            do {
                let pool = try Pool.create(name: "tank", members: members)
                for _ in 0..<10 { committed += try pool.allocator.allocate(.data, lengthBytes: 1 << 20) }
                try pool.commitCheckpoint()
                for _ in 0..<10 { _ = try pool.allocator.allocate(.data, lengthBytes: 1 << 20) }
                // No commit, no export: the process "dies" here.
            }
            let imported = try Pool.importPool(paths: members.map(\.path), readOnly: true)
            let used = imported.status().devices[0].space.usedBytes
            #expect(used == 10 << 20, "used \(used): uncommitted allocations must not survive")
        }
    }

    @Test func tornNewestUberblockFallsBackToTheIntactPreviousCopy() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            let paths = members.map(\.path)
            let pool = try Pool.create(name: "tank", members: members)
            let first = try pool.allocator.allocate(.data, lengthBytes: 8 << 20)
            try pool.commitCheckpoint()                        // 2: first allocated
            _ = try pool.allocator.allocate(.data, lengthBytes: 16 << 20)
            try pool.commitCheckpoint()                        // 3: both allocated, the other copy
            #expect(pool.uberblock.checkpoint == 3)
            for (index, path) in paths.enumerated() {
                for labelOffset in pool.configuration.members[index].layout.labelOffsets {
                    S.scribble(path, offset: DeviceLayout.uberblockSlotOffset(labelOffset: labelOffset, slot: 3) + 100, count: 4)
                }
            }
            let imported = try Pool.importPool(paths: paths, readOnly: true)
            #expect(imported.uberblock.checkpoint == 2)
            #expect(imported.status().devices[0].space.usedBytes == first[0].lengthBytes)
        }
    }

    @Test func freesAreFreeOnDiskAtTheirCheckpointButReusableOnlyAfterTheNext() throws {
        try S.withDirectory { directory in
            let path = directory + "/d"
            let pool = try Pool.create(name: "solo", members: [.init(path: path, role: .data, createSizeBytes: 64 * S.mib)])
            // Fill the device so that freed space is the only space.
            var extents: [Extent] = []
            while let copies = try? pool.allocator.allocate(.data, lengthBytes: 1 << 20) { extents += copies }
            try pool.commitCheckpoint()                                  // 2
            let victim = extents.removeLast()
            pool.allocator.free(victim)                                   // freed in checkpoint 3
            #expect(throws: AllocationError.self) { try pool.allocator.allocate(.data, lengthBytes: 1 << 20) }
            try pool.commitCheckpoint()                                  // 3 durable: still deferred
            #expect(throws: AllocationError.self) { try pool.allocator.allocate(.data, lengthBytes: 1 << 20) }
            // On disk at checkpoint 3 the victim is already free (nothing durable references it).
            let snapshot = try Pool.importPool(paths: [path], readOnly: true)
            #expect(snapshot.status().devices[0].space.freeBytes >= victim.lengthBytes)
            try pool.commitCheckpoint()                                  // 4 durable: reusable
            let reused = try pool.allocator.allocate(.data, lengthBytes: 1 << 20)
            #expect(reused[0] == victim)
        }
    }

    @Test func aCorruptBitmapBlockIsNamed() throws {
        try S.withDirectory { directory in
            let members = S.members(directory)
            let pool = try Pool.create(name: "tank", members: members)
            _ = try pool.allocator.allocate(.data, lengthBytes: 1 << 20)
            try pool.commitCheckpoint()
            let root = pool.uberblock.spaceMaps[0]
            let layout = pool.configuration.members[0].layout
            try pool.export()
            // Export reuses the copy (nothing changed); corrupt block 0 of the copy in force.
            let exported = try Pool.importPool(paths: members.map(\.path), readOnly: true)
            let copy = Int(exported.uberblock.spaceMaps[0].copy)
            #expect(copy == Int(root.copy))
            S.scribble(members[0].path, offset: layout.bitmapBlockOffset(copy: copy, block: 0) + 2048, count: 16, byte: 0xFF)
            S.expectPoolError({ _ = try Pool.importPool(paths: members.map(\.path), readOnly: true) }) {
                if case .corruptMetadata(let path, let detail) = $0 { return path == members[0].path && detail.contains("block 0") } else { return false }
            }
        }
    }

    @Test func fullClassFailsWithNothingHalfAllocated() throws {
        try S.withDirectory { directory in
            let members = [Pool.MemberSpec(path: directory + "/d0", role: .data, createSizeBytes: 64 * S.mib),
                           Pool.MemberSpec(path: directory + "/d1", role: .data, createSizeBytes: 128 * S.mib)]
            var policy = PoolPolicy()
            policy.setCopies(2, for: .data)
            let pool = try Pool.create(name: "mirror", members: members, policy: policy)
            while (try? pool.allocator.allocate(.data, lengthBytes: 1 << 20)) != nil {}
            let before = pool.status().devices.map(\.space.usedBytes)
            #expect(before[0] == before[1], "copies land on both devices")
            do {
                _ = try pool.allocator.allocate(.data, lengthBytes: 1 << 20)
                Issue.record("a full mirror allocated")
            } catch {
                #expect("\(error)".contains(directory + "/d0") && "\(error)".contains("ENOSPC"))
            }
            #expect(pool.status().devices.map(\.space.usedBytes) == before, "a failed allocation changed the space maps")
        }
    }
}
