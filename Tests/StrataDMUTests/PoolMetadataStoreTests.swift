// The DMU's copy-on-write structures on a real pool: an index tree built, flushed through the
// pool's metadata store, named by an uberblock root, and found again after export and import;
// its old blocks freed through the allocator's deferred frees.

import Foundation
import StrataIO
import StrataPool
import Testing
@testable import StrataDMU

@Suite struct PoolMetadataStoreTests {
    static func withPool<Result>(_ body: (String, [Pool.MemberSpec]) throws -> Result) throws -> Result {
        var template = Array("/tmp/strata-dmu-test.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil)
        let directory = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let members = [Pool.MemberSpec(path: directory + "/data0", role: .data, createSizeBytes: 128 << 20),
                       Pool.MemberSpec(path: directory + "/meta0", role: .metadata, createSizeBytes: 64 << 20)]
        return try body(directory, members)
    }

    @Test func indexTreeSurvivesExportAndImportThroughTheUberblock() throws {
        try PoolMetadataStoreTests.withPool { _, members in
            let pool = try Pool.create(name: "tank", members: members)
            let store = PoolMetadataStore(pool: pool)
            let tree = IndexTree(store: store, name: "oi")
            var model: [String: String] = [:]
            for index in 0..<3000 {
                let key = "fid:0x200000401:\(index * 7919 % 3000)", value = "dnode \(index)"
                try tree.insert(Array(key.utf8), Array(value.utf8), mode: .upsert)
                model[key] = value
            }
            func commitTree() throws {
                let root = try tree.flush()
                var roots = pool.uberblock.roots
                roots[Uberblock.RootSlot.objectIndex.rawValue] = root
                try pool.commitCheckpoint(roots: roots)
            }
            try commitTree()
            // Change a few keys: copy-on-write frees the old path's blocks (deferred).
            for index in 0..<50 {
                let key = "fid:0x200000401:\(index)"
                try tree.delete(Array(key.utf8))
                model[key] = nil
            }
            try commitTree()
            #expect(pool.status().devices[1].space.usedBytes > 0, "index blocks land on the metadata device")
            try pool.export()

            let imported = try Pool.importPool(paths: members.map(\.path), readOnly: true)
            let root = imported.uberblock.roots[Uberblock.RootSlot.objectIndex.rawValue]
            #expect(!root.isNull)
            let reloaded = try IndexTree(root: root, store: PoolMetadataStore(pool: imported), name: "oi")
            #expect(reloaded.count == model.count)
            for (key, value) in model {
                #expect(try reloaded.lookup(Array(key.utf8)) == Array(value.utf8))
            }
            #expect(try reloaded.lookup(Array("fid:0x200000401:7".utf8)) == nil)
            let check = reloaded.verify()
            #expect(check.isClean)
            // Every block the tree references is allocated in the imported space maps: the tree's
            // bytes equal the metadata device's used bytes (nothing leaked, nothing missing).
            let treeBytes = check.blockPointers.reduce(UInt64(0)) { $0 + $1.lengthBytes }
            #expect(imported.status().devices[1].space.usedBytes == treeBytes)
        }
    }

    @Test func aCorruptBlockOnDiskIsNamed() throws {
        try PoolMetadataStoreTests.withPool { _, members in
            let pool = try Pool.create(name: "tank", members: members)
            let store = PoolMetadataStore(pool: pool)
            let block = allocateAlignedBuffer(byteCount: 4096)
            defer { block.deallocate() }
            block.initializeMemory(as: UInt8.self, repeating: 0xAB)
            let pointer = try store.writeNew(UnsafeRawBufferPointer(block))
            try pool.commitCheckpoint()
            let fd = open(members[pointer.deviceIndex].path, O_WRONLY)
            var byte: UInt8 = 0
            _ = pwrite(fd, &byte, 1, off_t(pointer.offsetBytes + 17))
            close(fd)
            do {
                try store.read(pointer, into: block)
                Issue.record("a corrupt metadata block was returned")
            } catch {
                #expect("\(error)".contains(members[pointer.deviceIndex].path))
            }
        }
    }

    /// copies.metadata = 2 with one metadata device: one copy there, one on the data device (the
    /// allocator's fallback tier), both on files, and the tree reads back after import.
    @Test func mirroredMetadataLandsOnTwoDevices() throws {
        try PoolMetadataStoreTests.withPool { directory, members in
            var policy = PoolPolicy()
            policy.setCopies(2, for: .metadata)
            let pool = try Pool.create(name: "tank", members: members, policy: policy)
            let tree = IndexTree(store: PoolMetadataStore(pool: pool), name: "oi")
            for index in 0..<2000 { try tree.insert(Array("key \(index)".utf8), Array("value \(index)".utf8), mode: .upsert) }
            let root = try tree.flush()
            #expect(root.copyCount == 2 && Set([root.address(ofCopy: 0).deviceIndex, root.address(ofCopy: 1).deviceIndex]) == [0, 1])
            var roots = pool.uberblock.roots
            roots[Uberblock.RootSlot.objectIndex.rawValue] = root
            try pool.commitCheckpoint(roots: roots)
            let used = pool.status().devices.map(\.space.usedBytes)
            #expect(used[0] == used[1] && used[1] > 0, "every block on both devices: \(used)")
            try pool.export()
            let imported = try Pool.importPool(paths: members.map(\.path), readOnly: true)
            let reloaded = try IndexTree(root: imported.uberblock.roots[Uberblock.RootSlot.objectIndex.rawValue],
                                         store: PoolMetadataStore(pool: imported), name: "oi")
            #expect(reloaded.count == 2000)
            #expect(try reloaded.lookup(Array("key 1234".utf8)) == Array("value 1234".utf8))
        }
    }
}
