// SpaceMap and PoolAllocator focused tests: placement shape, serialisation round trip, the durable
// view, deferred-free timing, reservations under pressure, ENOSPC atomicity, routing rules, and
// the allocator benchmark at its smallest size (so it cannot rot).

import Foundation
import Testing
@testable import StrataPool

@Suite struct SpaceMapTests {
    static let mebibyte: UInt64 = 1 << 20

    func encodeAll(_ map: SpaceMap) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: map.bitmapBlockCount * 4096)
        bytes.withUnsafeMutableBytes { buffer in
            for block in 0 ..< map.bitmapBlockCount {
                map.encodeBlock(block, into: UnsafeMutableRawBufferPointer(rebasing: buffer[block * 4096 ..< block * 4096 + 4096]))
            }
        }
        return bytes
    }

    func load(_ bytes: [UInt8], into map: SpaceMap) throws {
        try bytes.withUnsafeBytes { buffer in
            for block in 0 ..< map.bitmapBlockCount {
                try map.loadBlock(block, from: UnsafeRawBufferPointer(rebasing: buffer[block * 4096 ..< block * 4096 + 4096]))
            }
        }
    }

    @Test func freshMapExcludesReservedRangesAndEncodesThemAllocated() {
        let size: UInt64 = 200 * SpaceMapTests.mebibyte + 12288     // a partial region and two blocks
        let map = SpaceMap(sizeBytes: size, reservedRanges: [0 ..< 256 << 10, (5 << 20) + 100 ..< (6 << 20)])
        let statistics = map.statistics()
        #expect(map.bitmapBlockCount == 2)
        #expect(statistics.excludedBytes == (256 << 10) + (1 << 20))   // 100 rounds down to the unit start
        #expect(statistics.capacityBytes == size - statistics.excludedBytes)
        #expect(statistics.freeBytes == statistics.capacityBytes)
        #expect(statistics.fragmentation > 0)    // the first region and the 3-unit tail are not whole
        let bytes = encodeAll(map)
        #expect(bytes[0 ..< 8].allSatisfy { $0 == 0xFF })                   // 64 units of label
        #expect(bytes[8] == 0)
        let tailUnit = Int(size / 4096)                                      // first unit past the end
        #expect(bytes[tailUnit / 8] & (1 << UInt8(tailUnit % 8)) != 0)
        #expect(bytes[(tailUnit - 1) / 8] & (1 << UInt8((tailUnit - 1) % 8)) == 0)
        #expect(bytes.last == 0xFF)
        #expect(map.takeDirtyBlockIndices() == [0, 1])
        #expect(map.takeDirtyBlockIndices() == [])
        map.checkConsistency()
    }

    @Test func recordsAreAlignedAndSmallBlocksFillPartlyUsedRegions() throws {
        let map = SpaceMap(sizeBytes: 64 * SpaceMapTests.mebibyte)
        let small = try #require(map.allocate(lengthBytes: 4096))
        let record = try #require(map.allocate(lengthBytes: 1 << 20))
        #expect(record % (1 << 20) == 0)
        #expect(record / (1 << 20) != small / (1 << 20))
        // Further small blocks go next to the first one, not into a whole region.
        for _ in 0 ..< 100 {
            let next = try #require(map.allocate(lengthBytes: 4096 * UInt64(1 + Int.random(in: 0 ..< 2))))
            #expect(next / (1 << 20) == small / (1 << 20))
        }
        let big = try #require(map.allocate(lengthBytes: 3 << 20))
        #expect(big % (1 << 20) == 0)
        #expect(map.statistics().fullyFreeRegionCount == 64 - 1 - 1 - 3)
        map.checkConsistency()
    }

    @Test func fillsExactlyAndFailsOnlyWhenNothingFits() {
        let map = SpaceMap(sizeBytes: 8 * SpaceMapTests.mebibyte, reservedRanges: [0 ..< 4096])
        var count = 0
        while map.allocate(lengthBytes: 12288) != nil { count += 1 }
        // 8 regions: the first has 255 free units (85 runs of 3), the others 256 (85 each, 1 left).
        #expect(count == 8 * 85)
        #expect(map.statistics().freeBytes == 7 * 4096)
        #expect(map.allocate(lengthBytes: 8192) == nil)
        #expect(map.allocate(lengthBytes: 4096) != nil)
        map.checkConsistency()
    }

    @Test func roundTripPreservesStateAndStatistics() throws {
        let reserved: [Range<UInt64>] = [0 ..< 256 << 10, (100 << 20) ..< (101 << 20)]
        let map = SpaceMap(sizeBytes: 300 * SpaceMapTests.mebibyte, reservedRanges: reserved)
        var random = SeededRandom(seed: 42)
        var extents: [(UInt64, UInt64)] = []
        for _ in 0 ..< 3000 {
            let length = [4096, 8192, 65536, 1 << 20, 2 << 20][random.next(below: 5)]
            if let offset = map.allocate(lengthBytes: UInt64(length)) { extents.append((offset, UInt64(length))) }
            if random.next(below: 3) == 0, !extents.isEmpty {
                let (offset, length) = extents.remove(at: random.next(below: extents.count))
                map.deferFree(offsetBytes: offset, lengthBytes: length, checkpoint: 1)
            }
        }
        map.releaseDeferred(throughCheckpoint: 1)
        let bytes = encodeAll(map)
        let loaded = SpaceMap(sizeBytes: 300 * SpaceMapTests.mebibyte, reservedRanges: reserved)
        try load(bytes, into: loaded)
        loaded.checkConsistency()
        #expect(loaded.statistics() == map.statistics())
        #expect((0 ..< map.liveWordCount).allSatisfy { map.liveWord($0) == loaded.liveWord($0) })
        #expect(encodeAll(loaded) == bytes)
        #expect(loaded.takeDirtyBlockIndices() == [])     // loaded blocks are clean
    }

    @Test func deferredFreesAndHeldSpaceAreFreeInTheDurableView() throws {
        let map = SpaceMap(sizeBytes: 256 * SpaceMapTests.mebibyte)
        let first = try #require(map.allocate(lengthBytes: 1 << 20))
        let second = try #require(map.allocate(lengthBytes: 4096))
        let held = try #require(map.hold(lengthBytes: 1 << 20))
        _ = map.takeDirtyBlockIndices()
        map.deferFree(offsetBytes: first, lengthBytes: 1 << 20, checkpoint: 7)
        #expect(map.takeDirtyBlockIndices() == [Int(first / (128 << 20))])
        let bytes = encodeAll(map)
        func bit(_ offset: UInt64) -> Bool { let unit = Int(offset / 4096); return bytes[unit / 8] & (1 << UInt8(unit % 8)) != 0 }
        #expect(!bit(first) && !bit(first + (1 << 20) - 4096))    // deferred: free on disk
        #expect(bit(second))                                      // allocated
        #expect(!bit(held.offsetBytes))                           // held: free on disk
        #expect(map.isSet(unit: Int(first / 4096)))               // but not allocatable
        #expect(map.statistics().deferredBytes == 1 << 20)
        #expect(map.statistics().reservedBytes == 1 << 20)
        // A crash now: the loaded map has both free, nothing leaks.
        let loaded = SpaceMap(sizeBytes: 256 * SpaceMapTests.mebibyte)
        try load(bytes, into: loaded)
        #expect(loaded.statistics().usedBytes == 4096)
        // Consuming held space dirties its block and shows it allocated.
        _ = map.consumeHeld(slot: held.slot, keepBytes: 8192)
        #expect(map.takeDirtyBlockIndices() == [Int(held.offsetBytes / (128 << 20))])
        #expect(map.statistics().freeBytes == (256 << 20) - (1 << 20) - 4096 - 8192 )
        map.checkConsistency()
    }

    @Test func loadRejectsFreeReservedUnits() throws {
        let map = SpaceMap(sizeBytes: 64 * SpaceMapTests.mebibyte, reservedRanges: [0 ..< 8192], path: "/dev/x")
        let zeros = [UInt8](repeating: 0, count: 4096)
        #expect(throws: AllocationError.self) {
            try zeros.withUnsafeBytes { try map.loadBlock(0, from: $0) }
        }
        #expect(map.statistics().freeBytes == (64 << 20) - 8192)    // unchanged
        map.checkConsistency()
    }
}

@Suite struct PoolAllocatorTests {
    static let mebibyte: UInt64 = 1 << 20

    @Test func deferredFreeBecomesAllocatableOnlyAfterTheNextCheckpointIsDurable() throws {
        let allocator = PoolAllocator(devices: [AllocatorDevice(index: 0, path: "/dev/a", role: .data, sizeBytes: 4 << 20)],
                                      policy: PoolPolicy(), openCheckpoint: 10)
        var extents: [ExtentCopies] = []
        while let copies = try? allocator.allocate(.data, lengthBytes: 1 << 20) { extents.append(copies) }
        #expect(extents.count == 4)
        allocator.free(extents[0])                             // freed in checkpoint 10
        #expect(throws: AllocationError.self) { try allocator.allocate(.data, lengthBytes: 1 << 20) }
        #expect(allocator.beginCheckpoint().checkpoint == 10)
        allocator.checkpointDurable(10)                        // 10 durable: frees of 9 only
        #expect(throws: AllocationError.self) { try allocator.allocate(.data, lengthBytes: 1 << 20) }
        #expect(allocator.beginCheckpoint().checkpoint == 11)
        #expect(throws: AllocationError.self) { try allocator.allocate(.data, lengthBytes: 1 << 20) }
        allocator.checkpointDurable(11)                        // 11 durable: frees of 10 return
        let again = try allocator.allocate(.data, lengthBytes: 1 << 20)
        #expect(again == extents[0])
    }

    @Test func reservationSurvivesUnreservedPressure() throws {
        var policy = PoolPolicy()
        policy.setCopies(2, for: .metadata)
        let devices = [Pools.device(0, .metadata, mebibytes: 8), Pools.device(1, .metadata, mebibytes: 8)]
        let allocator = PoolAllocator(devices: devices, policy: policy)
        let reservation = try allocator.reserve(.metadata, extentCount: 3, lengthBytes: 1 << 20)
        var taken = 0
        while (try? allocator.allocate(.metadata, lengthBytes: 4096)) != nil { taken += 1 }
        #expect(taken > 0)
        let statistics = allocator.statistics()
        #expect(statistics.devices.allSatisfy { $0.freeBytes == 0 && $0.reservedBytes == 3 << 20 })
        for _ in 0 ..< 3 {
            let copies = allocator.allocate(from: reservation, lengthBytes: 1 << 20)
            #expect(Set(copies.map(\.deviceIndex)) == [0, 1])
        }
        #expect(allocator.remainingExtents(in: reservation) == 0)
        allocator.release(reservation)
        #expect(allocator.statistics().devices.allSatisfy { $0.reservedBytes == 0 })
    }

    @Test func noSpaceAllocatesNothingAndNamesDevices() throws {
        var policy = PoolPolicy()
        policy.setCopies(2, for: .data)
        let devices = [AllocatorDevice(index: 0, path: "/dev/big", role: .data, sizeBytes: 64 << 20),
                       AllocatorDevice(index: 1, path: "/dev/small", role: .data, sizeBytes: 2 << 20)]
        let allocator = PoolAllocator(devices: devices, policy: policy)
        _ = try allocator.allocate(.data, lengthBytes: 2 << 20)          // fills /dev/small
        let before = allocator.statistics()
        do {
            _ = try allocator.allocate(.data, lengthBytes: 1 << 20)
            Issue.record("expected ENOSPC")
        } catch {
            #expect(error.errno == 28)
            #expect(error.description.contains("/dev/big") && error.description.contains("/dev/small"))
            #expect(error.description.contains("class data") && error.description.contains("1048576"))
        }
        #expect(allocator.statistics() == before)
        #expect(throws: AllocationError.self) { try allocator.reserve(.data, extentCount: 1, lengthBytes: 4096) }
        #expect(allocator.statistics() == before)
    }

    @Test func routingFollowsThePolicy() throws {
        var policy = PoolPolicy()
        policy.smallBlockCutoffBytes = 64 << 10
        policy.metadataReservePercent = 50
        policy.spillThresholdPercent = 50
        let devices = [AllocatorDevice(index: 0, path: "/dev/meta", role: .metadata, sizeBytes: 8 << 20),
                       AllocatorDevice(index: 1, path: "/dev/data", role: .data, sizeBytes: 8 << 20),
                       AllocatorDevice(index: 2, path: "/dev/spill", role: .spill, sizeBytes: 64 << 20),
                       AllocatorDevice(index: 3, path: "/dev/cache", role: .cache, sizeBytes: 64 << 20)]
        let allocator = PoolAllocator(devices: devices, policy: policy)
        #expect(try allocator.allocate(.log, lengthBytes: 4096)[0].deviceIndex == 0)      // no log device: metadata
        #expect(try allocator.allocate(.data, lengthBytes: 64 << 10)[0].deviceIndex == 0) // ≤ cutoff: small data
        #expect(try allocator.allocate(.data, lengthBytes: 1 << 20)[0].deviceIndex == 1)
        // Metadata past its reserve: small data goes to the data device, metadata still lands there.
        for _ in 0 ..< 4 { _ = try allocator.allocate(.metadata, lengthBytes: 1 << 20) }
        #expect(try allocator.allocate(.smallData, lengthBytes: 4096)[0].deviceIndex == 1)
        #expect(try allocator.allocate(.metadata, lengthBytes: 4096)[0].deviceIndex == 0)
        // Data past the spill threshold: spill first.
        for _ in 0 ..< 3 { _ = try allocator.allocate(.data, lengthBytes: 1 << 20) }
        #expect(try allocator.allocate(.data, lengthBytes: 1 << 20)[0].deviceIndex == 2)
        // Nothing ever lands on the cache device.
        let statistics = allocator.statistics()
        #expect(statistics.devices[3].usedBytes == 0)
        #expect(statistics.classes.first { $0.name == "data" }?.deviceIndices == [2, 1])
        let json = try JSONEncoder().encode(statistics)
        #expect(try JSONDecoder().decode(AllocatorStatistics.self, from: json) == statistics)
    }

    @Test func oneDevicePoolServesEveryClass() throws {
        let allocator = PoolAllocator(devices: [AllocatorDevice(index: 0, path: "/dev/only", role: .data, sizeBytes: 16 << 20)],
                                      policy: PoolPolicy())
        for allocationClass in AllocationClass.allCases {
            #expect(try allocator.allocate(allocationClass, lengthBytes: 4096)[0].deviceIndex == 0)
        }
    }

    @Test func checkpointCutCarriesTheDurableViewAndLoads() throws {
        let devices = [Pools.device(0, .data, mebibytes: 200)]
        let allocator = PoolAllocator(devices: devices, policy: PoolPolicy())
        let first = allocator.beginCheckpoint()
        #expect(first.spaceMaps.map(\.blockIndices) == [[0, 1]])          // a fresh map is written whole
        allocator.checkpointDurable(first.checkpoint)
        let kept = try allocator.allocate(.data, lengthBytes: 1 << 20)
        let freed = try allocator.allocate(.metadata, lengthBytes: 4096)
        allocator.free(freed)
        let cut = allocator.beginCheckpoint()
        #expect(cut.checkpoint == 2)
        let image = cut.spaceMaps[0]
        let loaded = PoolAllocator(devices: devices, policy: PoolPolicy(), openCheckpoint: 3)
        var full = [UInt8](repeating: 0, count: 2 * 4096)
        allocator.encodeSpaceMapBlock(deviceIndex: 0, blockIndex: 1, into: UnsafeMutableRawBufferPointer(start: &full[4096], count: 4096))
        for (position, block) in image.blockIndices.enumerated() {
            full.replaceSubrange(block * 4096 ..< block * 4096 + 4096, with: image.block(at: position))
        }
        for block in 0 ..< 2 {
            try full.withUnsafeBytes { try loaded.loadSpaceMapBlock(deviceIndex: 0, blockIndex: block, from: UnsafeRawBufferPointer(rebasing: $0[block * 4096 ..< block * 4096 + 4096])) }
        }
        let statistics = loaded.statistics().devices[0]
        #expect(statistics.usedBytes == kept[0].lengthBytes)              // the deferred free came back free
        #expect(statistics.deferredBytes == 0)
    }

    @Test func alternatingCopiesGetBlocksDirtyInTheLastTwoCuts() throws {
        let allocator = PoolAllocator(devices: [Pools.device(0, .data, mebibytes: 512)], policy: PoolPolicy())
        func cut() -> [Int] {
            let cut = allocator.beginCheckpoint(spaceMapCopies: 2)
            allocator.checkpointDurable(cut.checkpoint)
            return cut.spaceMaps.first?.blockIndices ?? []
        }
        #expect(cut() == [0, 1, 2, 3])                 // first cut: everything
        allocator.markAllocated(Extent(deviceIndex: 0, offsetBytes: 300 << 20, lengthBytes: 4096))
        #expect(cut() == [0, 1, 2, 3])                 // the previous cut was everything
        #expect(cut() == [2])                          // dirty at the previous cut
        #expect(cut() == [])
    }
}
