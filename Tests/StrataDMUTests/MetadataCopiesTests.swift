// Metadata with two copies (the pool's copies.metadata = 2, ZFS's ditto blocks): both copies
// written on two devices and named by one pointer, reads that fall back to the second copy on a
// checksum mismatch or an I/O error, every copy freed; an object store on such a pool that keeps
// reading with one copy of every metadata block destroyed, a check that names every bad copy and
// a leaked one, and a typed error naming the object when both copies are bad.

import Foundation
import StrataIO
import StrataPool
import StrataTesting
import Testing
@testable import StrataDMU

@Suite struct MetadataCopiesTests {
    typealias Support = StoreTestSupport

    /// data0, meta0, meta1, log0; copies.metadata = 2 (or `metadataCopies`).
    static func devices() -> [MemoryDevice] {
        [MemoryDevice(path: "data0", sizeBytes: 128 * Support.mib), MemoryDevice(path: "meta0", sizeBytes: 64 * Support.mib),
         MemoryDevice(path: "meta1", sizeBytes: 64 * Support.mib), MemoryDevice(path: "log0", sizeBytes: 64 * Support.mib)]
    }

    static func createPool(_ devices: [any BlockStorage], metadataCopies: Int = 2) throws -> Pool {
        var policy = PoolPolicy()
        policy.setCopies(metadataCopies, for: .metadata)
        return try Pool.create(name: "ditto", devices: [(devices[0], .data), (devices[1], .metadata), (devices[2], .metadata), (devices[3], .log)],
                               policy: policy)
    }

    static func block(_ byteCount: Int, seed: UInt8) -> UnsafeMutableRawBufferPointer {
        let block = allocateAlignedBuffer(byteCount: byteCount)
        for index in 0 ..< byteCount { block[index] = UInt8(truncatingIfNeeded: index &* 7 &+ Int(seed)) }
        return block
    }

    static func overwrite(_ device: any BlockStorage, at offset: UInt64, byteCount: Int = 4096) throws {
        let garbage = block(byteCount, seed: 0x5A)
        defer { garbage.deallocate() }
        try device.write(UnsafeRawBufferPointer(garbage), at: offset, fua: false)
    }

    // MARK: The metadata store

    @Test func bothCopiesAreWrittenAndReadFallsBackToTheSecond() throws {
        let devices = Self.devices()
        let pool = try Self.createPool(devices)
        let store = PoolMetadataStore(pool: pool)
        let block = Self.block(8192, seed: 3)
        defer { block.deallocate() }
        let pointer = try store.writeNew(UnsafeRawBufferPointer(block))
        #expect(pointer.copyCount == 2)
        #expect(Set([pointer.address(ofCopy: 0).deviceIndex, pointer.address(ofCopy: 1).deviceIndex]) == [1, 2], "one copy on each metadata device")
        let readBack = allocateAlignedBuffer(byteCount: 8192)
        defer { readBack.deallocate() }
        for copy in 0 ..< 2 {
            let place = pointer.address(ofCopy: copy)
            try devices[place.deviceIndex].read(into: readBack, at: place.offsetBytes)
            #expect(readBack.elementsEqual(block), "copy \(copy) holds the block")
        }
        try store.read(pointer, into: readBack)
        #expect(store.fallbackReadCount == 0)

        // Copy 0 bad: the read is served by copy 1, and counted.
        let first = pointer.address(ofCopy: 0), second = pointer.address(ofCopy: 1)
        try Self.overwrite(devices[first.deviceIndex], at: first.offsetBytes + 4096)
        readBack.initializeMemory(as: UInt8.self, repeating: 0)
        try store.read(pointer, into: readBack)
        #expect(readBack.elementsEqual(block))
        #expect(store.fallbackReadCount == 1)
        #expect(throws: MetadataStoreError.self) { try store.readCopy(pointer, copy: 0, into: readBack) }
        try store.readCopy(pointer, copy: 1, into: readBack)

        // Both bad: one typed error naming each copy's place and device.
        try Self.overwrite(devices[second.deviceIndex], at: second.offsetBytes)
        do {
            try store.read(pointer, into: readBack)
            Issue.record("a block with two bad copies was returned")
        } catch {
            guard case .everyCopyFailed(let failed, let errors) = error, errors.count == 2,
                  case .checksumMismatch(let place0, let path0, _) = errors[0], case .checksumMismatch(let place1, let path1, _) = errors[1] else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(failed == pointer)
            #expect(place0 == pointer.pointer(toCopy: 0) && place1 == pointer.pointer(toCopy: 1))
            #expect(path0 == devices[first.deviceIndex].path && path1 == devices[second.deviceIndex].path)
            #expect("\(error)".contains("offset \(first.offsetBytes)") && "\(error)".contains("offset \(second.offsetBytes)"))
        }
        #expect(store.fallbackReadCount == 1)

        // Free: both copies go back (deferred until the next checkpoint is durable).
        store.free(pointer)
        let deferred = pool.allocator.statistics().devices.map(\.deferredBytes)
        #expect(deferred[1] == 8192 && deferred[2] == 8192, "\(deferred)")
        try pool.commitCheckpoint()
        try pool.commitCheckpoint()
        #expect(pool.allocator.statistics().devices.allSatisfy { $0.usedBytes == 0 && $0.deferredBytes == 0 })
    }

    @Test func anIOErrorOnTheFirstCopyFallsBackToo() throws {
        let devices = Self.devices()
        let pool = try Self.createPool(devices)
        let block = Self.block(4096, seed: 9)
        defer { block.deallocate() }
        let pointer = try PoolMetadataStore(pool: pool).writeNew(UnsafeRawBufferPointer(block))
        try pool.commitCheckpoint()
        try pool.export()
        let first = pointer.address(ofCopy: 0)
        var wrapped: [any BlockStorage] = devices
        wrapped[first.deviceIndex] = FaultyDevice(wrapping: devices[first.deviceIndex],
                                                  faults: .init(readErrorRanges: [first.offsetBytes ..< first.offsetBytes + 4096]))
        let imported = try Pool.importPool(devices: wrapped, readOnly: true)
        let store = PoolMetadataStore(pool: imported)
        let readBack = allocateAlignedBuffer(byteCount: 4096)
        defer { readBack.deallocate() }
        try store.read(pointer, into: readBack)
        #expect(readBack.elementsEqual(block))
        #expect(store.fallbackReadCount == 1)
    }

    @Test func aFailedWriteFreesBothCopies() throws {
        let devices = Self.devices()
        let faulty = FaultyDevice(wrapping: devices[2], faults: .init())
        let pool = try Self.createPool([devices[0], devices[1], faulty, devices[3]])
        faulty.vanish()
        let block = Self.block(4096, seed: 1)
        defer { block.deallocate() }
        #expect(throws: MetadataStoreError.self) { _ = try PoolMetadataStore(pool: pool).writeNew(UnsafeRawBufferPointer(block)) }
        let statistics = pool.allocator.statistics().devices
        #expect(statistics[1].deferredBytes == 4096 && statistics[2].deferredBytes == 4096, "both places freed: \(statistics.map(\.deferredBytes))")
    }

    @Test func moreCopiesThanAPointerNamesAreRefusedNamingTheLimit() throws {
        let devices = Self.devices()
        // Three devices can hold metadata (two metadata, one data): the pool accepts copies = 3.
        let pool = try Self.createPool(devices, metadataCopies: 3)
        let block = Self.block(4096, seed: 1)
        defer { block.deallocate() }
        do {
            _ = try PoolMetadataStore(pool: pool).writeNew(UnsafeRawBufferPointer(block))
            Issue.record("copies.metadata=3 wrote a block")
        } catch {
            #expect(error == .tooManyCopies(pool: "ditto", copies: 3, copiesMax: 2))
            #expect("\(error)".contains("copies.metadata=3") && "\(error)".contains("at most 2"))
        }
        #expect(pool.allocator.statistics().devices.allSatisfy { $0.usedBytes == 0 && $0.deferredBytes == 0 }, "nothing allocated")
    }

    @Test func aPointerOfAnUnknownFormIsRefusedByEveryReader() throws {
        let devices = Self.devices()
        let pool = try Self.createPool(devices)
        let store = StagedMetadataStore(pool: pool)
        let block = Self.block(4096, seed: 1)
        defer { block.deallocate() }
        let pointer = try store.writeNew(UnsafeRawBufferPointer(block))
        var bytes = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeMutableBytes { pointer.encode(into: $0, at: 0) }
        bytes[26] |= 0x80                                   // a flag this build does not know
        let unknown = bytes.withUnsafeBytes { BlockPointer.decode(from: $0, at: 0) }
        #expect(unknown.formatProblem != nil)
        let buffer = allocateAlignedBuffer(byteCount: 4096)
        defer { buffer.deallocate() }
        for reader in [store as any MetadataStore, store.direct, MemoryMetadataStore()] {
            do {
                try reader.read(unknown, into: buffer)
                Issue.record("\(type(of: reader)) followed a pointer of an unknown form")
            } catch {
                guard case .unreadablePointer = error else { Issue.record("unexpected \(error)"); continue }
            }
        }
        #expect { _ = try IndexTree(root: unknown, store: store, name: "t") } throws: { error in
            guard let error = error as? IndexTreeError, case .store(_, _, .unreadablePointer) = error else { return false }
            return true
        }
        #expect(throws: ObjectStoreError.metadata(.unreadablePointer(pointer: unknown, problem: "test: " + unknown.formatProblem!))) {
            _ = try ObjectStore.decodePointer(bytes, what: "test")
        }
    }

    // MARK: The object store

    struct Populated {
        var devices: [MemoryDevice]
        var big: UInt64
        var bigBytes: [UInt8]
        var small: UInt64
        var index: UInt64
        var keys: [[UInt8]]
        var xattr: [UInt8]
    }

    /// A store with an extent-map tree (a file of 160 separate extents), an xattr block, an index
    /// of 1,500 entries (several levels), checkpointed, closed and exported.
    static func populated() throws -> Populated {
        let devices = Self.devices()
        let pool = try Self.createPool(devices)
        let store = try ObjectStore.open(pool: pool, settings: Support.settings())
        var bigBytes = [UInt8](repeating: 0, count: 160 * 8192)
        let big = try Support.createFile(store, [])
        for batch in 0 ..< 4 {
            let transaction = store.transaction()
            for slot in batch * 40 ..< (batch + 1) * 40 { transaction.declareWrite(big, offset: UInt64(slot * 8192), length: 4096) }
            try transaction.start()
            for slot in batch * 40 ..< (batch + 1) * 40 {
                let bytes = Support.pattern(4096, seed: UInt8(truncatingIfNeeded: slot))
                try transaction.write(big, at: UInt64(slot * 8192), bytes)
                bigBytes.replaceSubrange(slot * 8192 ..< slot * 8192 + 4096, with: bytes)
            }
            try transaction.stop()
        }
        bigBytes.removeLast(4096)                               // the size ends after the last write
        let small = try Support.createFile(store, Support.pattern(3000, seed: 7))
        let xattr = Support.pattern(5000, seed: 11)
        let index: UInt64
        var keys: [[UInt8]] = []
        do {
            let transaction = store.transaction()
            index = transaction.declareCreate()
            transaction.declareSetXattr(big, name: "user.big", valueBytes: xattr.count)
            try transaction.start()
            try transaction.create(index, type: .index)
            try transaction.setXattr(big, name: "user.big", value: xattr)
            try transaction.stop()
        }
        for batch in 0 ..< 5 {
            let transaction = store.transaction()
            for _ in 0 ..< 300 { transaction.declareIndexInsert(index, keyBytes: 24, valueBytes: 40) }
            try transaction.start()
            for entry in batch * 300 ..< (batch + 1) * 300 {
                let key = Array("key-\(entry * 7919 % 100_000)-padding-xx".utf8)
                try transaction.indexInsert(index, key: key, value: Array(key.reversed()) + [UInt8](repeating: 1, count: 40 - key.count))
                keys.append(key)
            }
            try transaction.stop()
        }
        try store.checkpoint()
        guard case .tree = try store.attributes(big).extentMap else { throw ObjectStoreError.failed("the test file's extent map is inline") }
        #expect(!(try store.attributes(big).systemAttributes.overflowBlock.isNull), "the xattr went to a block")
        try store.close()
        try store.pool.export()
        return Populated(devices: devices, big: big, bigBytes: bigBytes, small: small, index: index, keys: keys, xattr: xattr)
    }

    static func readEverything(_ store: ObjectStore, _ populated: Populated) throws {
        #expect(try store.read(populated.big, at: 0, length: populated.bigBytes.count) == populated.bigBytes)
        #expect(try store.read(populated.small, at: 0, length: 3000) == Support.pattern(3000, seed: 7))
        #expect(try store.xattr(populated.big, name: "user.big") == populated.xattr)
        for key in populated.keys {
            #expect(try store.indexLookup(populated.index, key: key) == Array(key.reversed()) + [UInt8](repeating: 1, count: 40 - key.count))
        }
        #expect(try store.indexEntries(populated.index).entries.count == populated.keys.count)
    }

    @Test func aStoreOnTwoCopiesReadsEverythingWithOneCopyOfEveryBlockDestroyed() throws {
        let populated = try Self.populated()
        let devices = populated.devices
        let clean = try Support.check(devices)
        #expect(clean.isClean, "\(clean.problems)")
        #expect(clean.metadataBlocks > 10)

        // Destroy, on the device that holds copy 0 of the dnode table's root, everything but the
        // pool's own areas: the first copy of that root and of every block placed like it, and
        // the second copy of the others.
        let pool = try Pool.importPool(devices: devices, readOnly: true)
        let tableRoot = pool.uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue]
        #expect(tableRoot.copyCount == 2)
        let victim = tableRoot.address(ofCopy: 0).deviceIndex
        let reserved = pool.allocator.devices[victim].reservedRanges
        var offset: UInt64 = 0
        while offset < devices[victim].sizeBytes {
            if !reserved.contains(where: { $0.overlaps(offset ..< offset + 4096) }) { try Self.overwrite(devices[victim], at: offset) }
            offset += 4096
        }

        let store = try Support.reopen(devices, readOnly: true)
        try Self.readEverything(store, populated)
        #expect(store.metadata.fallbackReadCount > 0, "copy 0 of the table root is bad: the reads fell back")
        #expect(store.statistics.metadataFallbackReads == store.metadata.fallbackReadCount, "the statistics show the fallbacks")
        try store.close()

        // The check reads every copy alone: one problem per block (its copy on the victim), none
        // about space (every copy is still marked once).
        let report = try Support.check(devices)
        #expect(report.problemCount == report.metadataBlocks, "\(report.problems.prefix(5))")
        #expect(report.problems.allSatisfy { $0.contains("copy") && $0.contains("is bad") && $0.contains("device \(victim)") },
                "\(report.problems.prefix(5))")
        #expect(report.problems.contains { $0.contains("dnode table") })
        #expect(!report.problems.contains { $0.contains("leaked") || $0.contains("free in the space map") })

        // A store that writes again moves the blocks it changes to two good copies.
        let writer = try Support.reopen(devices)
        try Support.createFile(writer, [1, 2, 3])
        try writer.checkpoint()
        try Self.readEverything(writer, populated)
        try writer.close()
        try writer.pool.export()
    }

    @Test func bothCopiesBadIsATypedChecksumErrorNamingTheObject() throws {
        let populated = try Self.populated()
        let devices = populated.devices
        let store = try Support.reopen(devices, readOnly: true)
        let pointer = try store.attributes(populated.big).systemAttributes.overflowBlock
        try store.close()
        #expect(pointer.copyCount == 2)
        for copy in 0 ..< 2 {
            let place = pointer.address(ofCopy: copy)
            try Self.overwrite(devices[place.deviceIndex], at: place.offsetBytes)
        }
        let reopened = try Support.reopen(devices, readOnly: true)
        do {
            _ = try reopened.xattr(populated.big, name: "user.big")
            Issue.record("an xattr block with two bad copies was read")
        } catch {
            guard case .dnode(.metadata(let object, .everyCopyFailed(let failed, let errors))) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(object == populated.big && failed == pointer)
            #expect(errors.count == 2 && errors.allSatisfy { if case .checksumMismatch = $0 { true } else { false } })
            #expect("\(error)".contains("object \(populated.big)") && "\(error)".contains("meta0") && "\(error)".contains("meta1"), "\(error)")
        }
        // The rest of the store reads.
        #expect(try reopened.read(populated.small, at: 0, length: 3000) == Support.pattern(3000, seed: 7))
        try reopened.close()
        let report = try Support.check(devices)
        #expect(report.problems.contains { $0.contains("object \(populated.big) xattrs") && $0.contains("all 2 copies failed") }, "\(report.problems)")
        #expect(report.problems.filter { $0.contains("object \(populated.big) xattr block: copy") && $0.contains("is bad") }.count == 2, "\(report.problems)")
    }

    @Test func checkFindsALeakedSecondCopy() throws {
        let populated = try Self.populated()
        let devices = populated.devices
        // A metadata allocation (two copies) whose first copy is freed and whose second is never
        // referenced: what a pointer that lost its second address would leave behind.
        let pool = try Pool.importPool(devices: devices)
        let copies = try pool.allocator.allocate(.metadata, lengthBytes: 4096)
        #expect(copies.count == 2)
        pool.allocator.free(copies[0])
        try pool.commitCheckpoint()
        try pool.export()
        let report = try Support.check(devices)
        let leaked = copies[1]
        #expect(report.problemCount == 1, "\(report.problems)")
        #expect(report.problems.contains { $0.contains("device \(leaked.deviceIndex)") && $0.contains("leaked") && $0.contains("offset \(leaked.offsetBytes)") },
                "\(report.problems)")
    }
}
