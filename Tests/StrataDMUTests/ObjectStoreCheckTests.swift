// The full check must fail when the pool is inconsistent: a leaked allocation, a flipped data
// byte (and the read that meets it), a corrupt metadata block. Each planted on an otherwise
// clean pool that the check passes first.

import Foundation
import StrataIO
import StrataPool
import StrataTesting
import Testing
@testable import StrataDMU

@Suite struct ObjectStoreCheckTests {
    typealias Support = StoreTestSupport

    /// A pool with a few objects of every kind, closed and exported; the check passes.
    static func populated() throws -> (devices: [MemoryDevice], file: UInt64) {
        let devices = Support.devices()
        let store = try Support.newStore(devices)
        let file = try Support.createFile(store, Support.pattern(512 << 10, seed: 9))
        try Support.createFile(store, Support.pattern(3000, seed: 10))
        let transaction = store.transaction()
        let index = transaction.declareCreate()
        transaction.declareIndexInsert(index, keyBytes: 4, valueBytes: 4)
        transaction.declareSetXattr(file, name: "user.big", valueBytes: 5000)
        try transaction.start()
        try transaction.create(index, type: .index)
        try transaction.indexInsert(index, key: [1, 2, 3, 4], value: [4, 3, 2, 1])
        try transaction.setXattr(file, name: "user.big", value: [UInt8](repeating: 1, count: 5000))
        try transaction.stop()
        try store.close()
        try store.pool.export()
        let report = try Support.check(devices)
        #expect(report.isClean, "\(report.problems)")
        #expect(report.objects == 3 && report.indexEntries == 1 && report.dataBytesVerified > 0)
        return (devices, file)
    }

    @Test func aLeakedAllocationIsReported() throws {
        let (devices, _) = try Self.populated()
        let pool = try Pool.importPool(devices: devices)
        let leaked = try pool.allocator.allocate(.data, lengthBytes: 1 << 20)
        try pool.commitCheckpoint()
        try pool.export()
        let report = try Support.check(devices)
        #expect(!report.isClean)
        #expect(report.problems.contains { $0.contains("leaked") && $0.contains("offset \(leaked[0].offsetBytes)") }, "\(report.problems)")
    }

    @Test func aFlippedDataByteIsReportedAndTheReadNamesObjectAndOffset() throws {
        let (devices, file) = try Self.populated()
        let store = try Support.reopen(devices)
        let extent = try #require(try store.fiemap(file, range: 0 ..< (512 << 10)).first)
        try store.close()
        try store.pool.export()
        // Flip a byte 8 KiB + 5 into the extent.
        let device = devices[extent.deviceIndex]
        let target = extent.physicalOffsetBytes + 8192
        let block = allocateAlignedBuffer(byteCount: 4096)
        defer { block.deallocate() }
        try device.read(into: block, at: target)
        block[5] ^= 0xFF
        try device.write(UnsafeRawBufferPointer(block), at: target, fua: false)

        let report = try Support.check(devices)
        #expect(report.problems.contains { $0.contains("object \(file)") }, "\(report.problems)")
        let reopened = try Support.reopen(devices)
        #expect { try reopened.read(file, at: 0, length: 512 << 10) } throws: { error in
            "\(error)".contains("object \(file)") && "\(error)".contains("\(extent.logicalOffsetBytes + 8192)")
        }
        // The rest of the object still reads.
        #expect(try reopened.read(file, at: 16384, length: 4096) == Array(Support.pattern(512 << 10, seed: 9)[16384 ..< 20480]))
        try reopened.close()
    }

    @Test func aCorruptDnodeTableBlockIsReported() throws {
        let (devices, _) = try Self.populated()
        let pool = try Pool.importPool(devices: devices, readOnly: true)
        let root = pool.uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue]
        let table = try IndexTree(root: root, store: StagedMetadataStore(pool: pool), name: "t")
        let value = try #require(try table.lookup(ObjectStore.tableKey(0)))
        let pointer = try ObjectStore.decodePointer(value, what: "test")
        let block = allocateAlignedBuffer(byteCount: 4096)
        defer { block.deallocate() }
        try devices[pointer.deviceIndex].read(into: block, at: pointer.offsetBytes)
        block[1100] ^= 0x01
        try devices[pointer.deviceIndex].write(UnsafeRawBufferPointer(block), at: pointer.offsetBytes, fua: false)
        let report = try Support.check(devices)
        #expect(report.problems.contains { $0.contains("dnode table block 0") && $0.contains("checksum") }, "\(report.problems)")
    }
}
