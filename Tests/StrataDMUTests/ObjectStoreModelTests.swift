// The object store against a model: random transactions over every operation, with checkpoints,
// clean reopens and crash reopens (synced) in between; after each, every object is compared with
// the model and the pool passes the full check. And a concurrent run: threads committing while
// the background thread checkpoints.

import Foundation
import StrataIO
import StrataPool
import StrataTesting
import Synchronization
import Testing
@testable import StrataDMU

struct ModelObject {
    var type: ObjectType
    var data: [UInt8] = []
    var xattrs: [String: [UInt8]] = [:]
    var entries: [[UInt8]: [UInt8]] = [:]
    var mode: UInt32 = 0o100644
}

/// A small deterministic generator (xorshift).
struct ModelRandom {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

@Suite struct ObjectStoreModelTests {
    typealias Support = StoreTestSupport

    static func compare(_ store: ObjectStore, _ model: [UInt64: ModelObject]) throws {
        for (object, expected) in model {
            let dnode = try store.attributes(object)
            #expect(dnode.type == expected.type, "object \(object)")
            #expect(dnode.mode == expected.mode, "object \(object) mode")
            if expected.type == .regular {
                #expect(dnode.sizeBytes == UInt64(expected.data.count), "object \(object) size")
                if !expected.data.isEmpty {
                    let bytes = try store.read(object, at: 0, length: expected.data.count)
                    let same = bytes == expected.data        // not inside #expect: a failure would print megabytes
                    #expect(same, "object \(object) data (\(expected.data.count) bytes) differs from the model")
                }
            } else {
                let batch = try store.indexEntries(object)
                #expect(batch.entries.count == expected.entries.count, "object \(object) entries")
                for entry in batch.entries { #expect(expected.entries[entry.key] == entry.value, "object \(object) key \(entry.key)") }
            }
            #expect(try store.xattrNames(object) == expected.xattrs.keys.sorted(), "object \(object) xattr names")
            for (name, value) in expected.xattrs { #expect(try store.xattr(object, name: name) == value, "object \(object) xattr \(name)") }
        }
    }

    /// One random transaction of 1–3 operations on the model and the store.
    static func randomTransaction(_ store: ObjectStore, _ model: inout [UInt64: ModelObject], _ random: inout ModelRandom) throws {
        let transaction = store.transaction()
        var plan: [(UInt64, Int)] = []
        let count = 1 + random.below(3)
        var creating: [UInt64: ObjectType] = [:]
        var touched = Set<UInt64>()
        for _ in 0..<count {
            let existing = model.keys.filter { !touched.contains($0) }.sorted()
            if existing.isEmpty || random.below(8) == 0 {
                let object = transaction.declareCreate()
                creating[object] = random.below(4) == 0 ? .index : .regular
                plan.append((object, -1))
                touched.insert(object)
                continue
            }
            let object = existing[random.below(existing.count)]
            touched.insert(object)
            let kind = random.below(model[object]!.type == .regular ? 9 : 6)
            plan.append((object, kind))
        }
        // Declare everything, with the sizes the operations will use (drawn now).
        var arguments: [(UInt64, Int, UInt64, Int, String)] = []        // object, kind, offset, length, name
        for (object, kind) in plan {
            let isIndex = (model[object]?.type ?? .regular) == .index
            switch (isIndex, kind) {
            case (_, -1): arguments.append((object, -1, 0, 0, ""))
            case (false, 0...2):
                let length = [100, 4096, 5000, 70_000, 300_000, 1 << 20][random.below(6)]
                let size = model[object]!.data.count
                let offset = UInt64(random.below(max(1, size + 8192)))
                transaction.declareWrite(object, offset: offset, length: length)
                arguments.append((object, 0, offset, length, ""))
            case (false, 3):
                transaction.declarePunch(object)
                let size = model[object]!.data.count
                arguments.append((object, 3, UInt64(random.below(max(1, size))), 1 + random.below(200_000), ""))
            case (false, 4):
                transaction.declarePunch(object)
                arguments.append((object, 4, UInt64(random.below(max(1, model[object]!.data.count * 2))), 0, ""))
            case (true, 0...2):
                transaction.declareIndexInsert(object, keyBytes: 8, valueBytes: 40)
                arguments.append((object, 10, UInt64(random.below(64)), 1 + random.below(40), ""))
            case (true, 3):
                transaction.declareIndexDelete(object, keyBytes: 8)
                arguments.append((object, 11, UInt64(random.below(64)), 0, ""))
            case (_, 5), (_, 6):
                let name = ["trusted.lma", "trusted.fid", "user.big", "user.x"][random.below(4)]
                let length = name == "user.big" ? 3000 + random.below(20_000) : 10 + random.below(60)
                transaction.declareSetXattr(object, name: name, valueBytes: length)
                arguments.append((object, 5, 0, length, name))
            case (_, 7):
                let name = ["trusted.lma", "user.big", "user.x"][random.below(3)]
                transaction.declareRemoveXattr(object, name: name)
                arguments.append((object, 7, 0, 0, name))
            case (_, 8):
                transaction.declareDestroy(object)
                arguments.append((object, 8, 0, 0, ""))
            default:
                transaction.declareSetAttributes(object)
                arguments.append((object, 9, 0, 0, ""))
            }
        }
        try transaction.start()
        for (object, kind, offset, length, name) in arguments {
            switch kind {
            case -1:
                let type = creating[object]!
                try transaction.create(object, type: type, mode: type == .index ? 0o40755 : 0o100644)
                model[object] = ModelObject(type: type, mode: type == .index ? 0o40755 : 0o100644)
            case 0:
                let bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                try transaction.write(object, at: offset, bytes)
                var data = model[object]!.data
                let end = Int(offset) + length
                if data.count < end { data += [UInt8](repeating: 0, count: end - data.count) }
                data.replaceSubrange(Int(offset)..<end, with: bytes)
                model[object]!.data = data
            case 3:
                try transaction.punch(object, offset: offset, length: UInt64(length))
                var data = model[object]!.data
                let start = min(Int(offset), data.count), end = min(Int(offset) + length, data.count)
                if start < end { data.replaceSubrange(start..<end, with: [UInt8](repeating: 0, count: end - start)) }
                model[object]!.data = data
            case 4:
                try transaction.truncate(object, sizeBytes: offset)
                var data = model[object]!.data
                if Int(offset) < data.count { data = Array(data[0..<Int(offset)]) } else { data += [UInt8](repeating: 0, count: Int(offset) - data.count) }
                model[object]!.data = data
            case 10:
                let key = Array(String(format: "key%05d", Int(offset)).utf8)
                let value = [UInt8](repeating: UInt8(length), count: length)
                try transaction.indexInsert(object, key: key, value: value, mode: .upsert)
                model[object]!.entries[key] = value
            case 11:
                let key = Array(String(format: "key%05d", Int(offset)).utf8)
                if model[object]!.entries[key] != nil {
                    try transaction.indexDelete(object, key: key)
                    model[object]!.entries[key] = nil
                } else {
                    #expect(throws: ObjectStoreError.self) { try transaction.indexDelete(object, key: key) }
                }
            case 5:
                let value = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                try transaction.setXattr(object, name: name, value: value)
                model[object]!.xattrs[name] = value
            case 7:
                if model[object]!.xattrs[name] != nil {
                    try transaction.removeXattr(object, name: name)
                    model[object]!.xattrs[name] = nil
                } else {
                    #expect(throws: ObjectStoreError.noSuchXattr(object: object, name: name)) { try transaction.removeXattr(object, name: name) }
                }
            case 8:
                try transaction.destroy(object)
                model[object] = nil
            default:
                var change = AttributeChange()
                change.mask = [.mode, .mtime]
                change.mode = model[object]!.type == .index ? 0o40700 : 0o100600
                change.mtimeNs = 42
                try transaction.setAttributes(object, change)
                model[object]!.mode = change.mode
            }
        }
        try transaction.stop()
    }

    @Test(arguments: [1, 2, 3])
    func randomTransactionsMatchTheModelAcrossCheckpointsReopensAndCrashes(seed: UInt64) throws {
        var random = ModelRandom(state: 0x9E37_79B9_7F4A_7C15 &* (seed + 1))
        let devices = Support.devices()
        var model: [UInt64: ModelObject] = [:]
        var store = try Support.newStore(devices)
        var current: [any BlockStorage] = devices
        for phase in 0..<6 {
            for _ in 0..<60 { try Self.randomTransaction(store, &model, &random) }
            try Self.compare(store, model)
            switch phase % 3 {
            case 0:
                try store.checkpoint()
                try Self.compare(store, model)
            case 1:
                try store.close()
                try store.pool.export()
                #expect(try Support.check(current).problems == [])
                store = try Support.reopen(current)
            default:
                try store.sync()
                let image = Support.crashImage(current)
                try store.abandon()
                current = image
                store = try Support.reopen(current)
            }
            try Self.compare(store, model)
        }
        try store.close()
        let report = try Support.check(current)
        #expect(report.isClean, "\(report.problems)")
    }

    @Test func concurrentTransactionsWithBackgroundCheckpoints() throws {
        var settings = Support.settings()
        settings.backgroundCheckpoints = true
        settings.checkpointIntervalNs = 20_000_000
        let devices = Support.devices()
        let store = try Support.newStore(devices, settings: settings)
        let threads = 4
        let perThread = 60
        let results = Mutex<[UInt64: [UInt8]]>([:])
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            do {
                var random = ModelRandom(state: UInt64(thread + 1) &* 0x2545_F491_4F6C_DD1D)
                var mine: [UInt64: [UInt8]] = [:]
                for _ in 0..<perThread {
                    if mine.isEmpty || random.below(4) == 0 {
                        let bytes = (0..<(random.below(2) == 0 ? 3000 : 100_000)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                        mine[try StoreTestSupport.createFile(store, bytes)] = bytes
                    } else {
                        let object = mine.keys.sorted()[random.below(mine.count)]
                        let offset = random.below(mine[object]!.count)
                        let bytes = (0..<(1 + random.below(9000))).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                        let transaction = store.transaction()
                        transaction.declareWrite(object, offset: UInt64(offset), length: bytes.count)
                        try transaction.start()
                        try transaction.write(object, at: UInt64(offset), bytes)
                        try transaction.stop()
                        var data = mine[object]!
                        if data.count < offset + bytes.count { data += [UInt8](repeating: 0, count: offset + bytes.count - data.count) }
                        data.replaceSubrange(offset ..< offset + bytes.count, with: bytes)
                        mine[object] = data
                    }
                }
                results.withLock { $0.merge(mine) { a, _ in a } }
            } catch {
                failures.withLock { $0.append("\(error)") }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
        #expect(store.statistics.checkpoints > 1)
        let expected = results.withLock { $0 }
        for (object, bytes) in expected {
            let same = try store.read(object, at: 0, length: bytes.count) == bytes
            #expect(same, "object \(object)")
        }
        try store.sync()
        let image = Support.crashImage(devices)
        try store.close()
        let recovered = try Support.reopen(image)
        for (object, bytes) in expected {
            let same = try recovered.read(object, at: 0, length: bytes.count) == bytes
            #expect(same, "object \(object) after recovery")
        }
        try recovered.close()
        let report = try Support.check(image)
        #expect(report.isClean, "\(report.problems)")
    }
}
