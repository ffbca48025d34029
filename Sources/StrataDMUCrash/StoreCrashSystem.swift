// StoreCrashSystem — the object store (StrataDMU) as a system under test of the crash harness.
//
// Theory. Operations are transactions of 1–4 steps over every operation of the store (create
// of regular and index objects, small and large writes with unaligned edges, punch, truncate
// down and up, setAttributes, setXattr with inline-sized and block-sized values, removeXattr,
// index insert and delete, destroy), plus sync, commitAsync, checkpoint and restart (sync, then
// drop the store without closing it and reopen, which replays the log since the last
// checkpoint). A transaction is acknowledged from its commit callback.
//
// Objects are named by workload *slots*; the store's object numbers are found through a
// catalog: an index object made at format time mapping "slot%05d" to the object number, changed
// in the same transaction as the create or destroy (the object index of the OSD layer in
// miniature), so an image is observed without knowing the run that made it.
//
// The oracle's state: for each slot, "s<slot>" = type, mode, size and crc32c of the whole data;
// "s<slot>.x.<name>" = length and crc32c of an xattr; "s<slot>.k.<key>" = length and crc32c of an
// index value. A transaction's effects are the new values of every key of the slots it touched
// (nil for keys that went away), taken from a shadow the instance keeps exactly as the store
// should have it; after a restart the shadow is re-read from the store. So the oracle demands:
// every acknowledged transaction whole with exact bytes, every other one whole or absent.
//
// Checking an image: `ObjectStore.check` on a read-only import (no leaked, doubly-owned or
// unreadable block, every checksum including data, the log replayable), then a read-only open
// (which replays in memory) and the observation. Recovery (crash during recovery): a read-write
// import and open (replay, then a checkpoint), then close.
//
// Deterministic: the log's `callerLeads` writer, no background checkpoints (the throttle runs
// them inline), and `Pool.runsDeviceJobsInOrder`.

import StrataDMU
import StrataIO
@_spi(LogTesting) import StrataLog
@_spi(CrashTesting) import StrataPool
import StrataTesting

/// One step of a transaction.
public enum StoreCrashStep: Sendable, CustomStringConvertible {
    case create(slot: Int, index: Bool)
    case write(slot: Int, offset: Int, length: Int, seed: UInt64)
    case punch(slot: Int, offset: Int, length: Int)
    case truncate(slot: Int, size: Int)
    case setMode(slot: Int, mode: UInt32)
    case setXattr(slot: Int, name: String, length: Int, seed: UInt64)
    case removeXattr(slot: Int, name: String)
    case insert(slot: Int, key: Int, length: Int, seed: UInt64)
    case delete(slot: Int, key: Int)
    case destroy(slot: Int)

    public var slot: Int {
        switch self {
        case .create(let slot, _), .write(let slot, _, _, _), .punch(let slot, _, _), .truncate(let slot, _),
             .setMode(let slot, _), .setXattr(let slot, _, _, _), .removeXattr(let slot, _), .insert(let slot, _, _, _),
             .delete(let slot, _), .destroy(let slot):
            return slot
        }
    }

    public var description: String {
        switch self {
        case .create(let slot, let index): return "create s\(slot) (\(index ? "index" : "regular"))"
        case .write(let slot, let offset, let length, _): return "write s\(slot) \(offset)+\(length)"
        case .punch(let slot, let offset, let length): return "punch s\(slot) \(offset)+\(length)"
        case .truncate(let slot, let size): return "truncate s\(slot) to \(size)"
        case .setMode(let slot, let mode): return "chmod s\(slot) \(String(mode, radix: 8))"
        case .setXattr(let slot, let name, let length, _): return "setxattr s\(slot) \(name) (\(length) B)"
        case .removeXattr(let slot, let name): return "removexattr s\(slot) \(name)"
        case .insert(let slot, let key, let length, _): return "insert s\(slot)[\(key)] (\(length) B)"
        case .delete(let slot, let key): return "delete s\(slot)[\(key)]"
        case .destroy(let slot): return "destroy s\(slot)"
        }
    }
}

public enum StoreCrashOperation: Sendable, CustomStringConvertible {
    case transaction([StoreCrashStep])
    case sync
    case commitAsync
    case checkpoint
    case restart

    public var description: String {
        switch self {
        case .transaction(let steps): return "transaction [" + steps.map(\.description).joined(separator: "; ") + "]"
        case .sync: return "sync"
        case .commitAsync: return "commitAsync"
        case .checkpoint: return "checkpoint"
        case .restart: return "restart"
        }
    }
}

/// The store a run uses, the slot → object map, and the shadow state.
public final class StoreCrashInstance: @unchecked Sendable {
    let devices: [any BlockStorage]
    var pool: Pool?
    var store: ObjectStore?
    var objects: [Int: UInt64] = [:]
    var shadow: [String: String] = [:]
    var lastEffects: [Effect<String, String>] = []
    var problems: [String] = []

    init(devices: [any BlockStorage]) { self.devices = devices }
}

public struct StoreCrashSystem: SystemUnderTest {
    public typealias Instance = StoreCrashInstance
    public typealias Operation = StoreCrashOperation
    public typealias Key = String
    public typealias Value = String

    /// A planted bug: the log acknowledges between its write and its flush.
    public var acknowledgesBeforeFlush = false
    public init(acknowledgesBeforeFlush: Bool = false) { self.acknowledgesBeforeFlush = acknowledgesBeforeFlush }

    public var name: String { acknowledgesBeforeFlush ? "object-store (callbacks before flush)" : "object-store" }
    public var devices: [DeviceSpec] {
        [DeviceSpec(name: "data0", sizeBytes: 64 << 20), DeviceSpec(name: "meta0", sizeBytes: 64 << 20), DeviceSpec(name: "log0", sizeBytes: 64 << 20)]
    }

    static let catalog: UInt64 = 1

    public var settings: ObjectStoreSettings {
        var settings = ObjectStoreSettings()
        settings.backgroundCheckpoints = false
        settings.smallWriteCutoffBytes = 16 << 10
        settings.recordBytesMax = 64 << 10
        settings.dirtyBytesMax = 1 << 20
        settings.log.segmentBytes = 128 << 10
        settings.log.logBytesMax = 1 << 20
        settings.log.batchBytesMax = 64 << 10
        settings.log.writer = .callerLeads
        settings.log.appendWaitNsMax = 2_000_000_000
        settings.log.durability = acknowledgesBeforeFlush ? .writeThenFlush : .fua
        settings.log.firesCallbacksBeforeDurable = acknowledgesBeforeFlush
        settings.throttleWaitNsMax = 2_000_000_000
        return settings
    }

    // MARK: Protocol

    public func format(_ devices: [any BlockStorage]) throws {
        Pool.runsDeviceJobsInOrder = true
        let pool = try Pool.create(name: "objcrash", devices: [(devices[0], .data), (devices[1], .metadata), (devices[2], .log)])
        let store = try ObjectStore.open(pool: pool, settings: settings)
        let transaction = store.transaction()
        let catalog = transaction.declareCreate()
        precondition(catalog == Self.catalog, "the catalog is object \(catalog), not \(Self.catalog)")
        try transaction.start()
        try transaction.create(catalog, type: .index)
        try transaction.stop()
        try store.close()
    }

    public func open(_ devices: [any BlockStorage]) throws -> StoreCrashInstance { try open(devices, for: .check) }

    public func open(_ devices: [any BlockStorage], for purpose: OpenPurpose) throws -> StoreCrashInstance {
        Pool.runsDeviceJobsInOrder = true
        let instance = StoreCrashInstance(devices: devices)
        switch purpose {
        case .check:
            let pool = try Pool.importPool(devices: devices, readOnly: true)
            let report = ObjectStore.check(pool: pool, verifyData: true, settings: settings)
            instance.problems = report.problems
            let readOnly = try Pool.importPool(devices: devices, readOnly: true)
            instance.store = try ObjectStore.open(pool: readOnly, settings: settings)
            try readShadow(instance)
        case .workload:
            try reopen(instance)
        case .recovery:
            try reopen(instance)
            try instance.store?.close()
        }
        return instance
    }

    public func close(_ instance: StoreCrashInstance) throws {
        if let store = instance.store, !store.isReadOnly { try store.close() }
    }

    public func perform(_ operation: StoreCrashOperation, on instance: StoreCrashInstance, context: OperationContext) throws {
        instance.lastEffects = []
        switch operation {
        case .sync:
            try instance.store!.sync()
            context.acknowledge()
        case .commitAsync:
            instance.store!.commitAsync()
            context.acknowledge()
        case .checkpoint:
            try instance.store!.checkpoint(force: true)
            context.acknowledge()
        case .restart:
            // Everything stopped is made durable first, so the workload's later steps find the
            // objects they name; what the restart tests is replay (nothing is checkpointed).
            try instance.store!.sync()
            try reopen(instance)
            context.acknowledge()
        case .transaction(let steps):
            try run(steps, on: instance, context: context)
        }
    }

    public func check(_ instance: StoreCrashInstance) throws -> [String] { instance.problems }

    public func observe(_ instance: StoreCrashInstance) throws -> [String: String] { instance.shadow }

    public func effects(of operation: StoreCrashOperation) -> [Effect<String, String>] { [] }

    public func effects(of operation: StoreCrashOperation, performedOn instance: StoreCrashInstance) -> [Effect<String, String>] {
        instance.lastEffects
    }

    // MARK: Running

    /// Drops the current store without closing it (a crash of the process) and opens the pool
    /// again: import, replay, checkpoint; the shadow is re-read from the store.
    func reopen(_ instance: StoreCrashInstance) throws {
        instance.store = nil
        instance.pool = nil
        let pool = try Pool.importPool(devices: instance.devices)
        instance.pool = pool
        instance.store = try ObjectStore.open(pool: pool, settings: settings)
        try readShadow(instance)
    }

    static func bytes(seed: UInt64, length: Int) -> [UInt8] {
        var random = SeededRandom(seed: seed | 1)
        var result = [UInt8](repeating: 0, count: length)
        var index = 0
        while index < length {
            let word = random.next()
            for shift in 0..<8 where index < length {
                result[index] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(shift)))
                index += 1
            }
        }
        return result
    }

    static func summary(_ bytes: [UInt8]) -> String { "\(bytes.count):\(String(CRC32C.checksum(bytes), radix: 16))" }

    static func slotKey(_ slot: Int) -> [UInt8] {
        let digits = String(slot)
        return Array(("slot" + String(repeating: "0", count: max(0, 5 - digits.count)) + digits).utf8)
    }
    static func entryKey(_ key: Int) -> [UInt8] { Array("key\(key)".utf8) }

    func run(_ steps: [StoreCrashStep], on instance: StoreCrashInstance, context: OperationContext) throws {
        let store = instance.store!
        let transaction = store.transaction()
        var created: [Int: UInt64] = [:]
        for step in steps {
            switch step {
            case .create(let slot, _):
                created[slot] = transaction.declareCreate()
                transaction.declareIndexInsert(Self.catalog, keyBytes: 9, valueBytes: 8)
            case .write(let slot, let offset, let length, _):
                transaction.declareWrite(instance.objects[slot]!, offset: UInt64(offset), length: length)
            case .punch(let slot, _, _), .truncate(let slot, _):
                transaction.declarePunch(instance.objects[slot]!)
            case .setMode(let slot, _):
                transaction.declareSetAttributes(instance.objects[slot]!)
            case .setXattr(let slot, let name, let length, _):
                transaction.declareSetXattr(instance.objects[slot]!, name: name, valueBytes: length)
            case .removeXattr(let slot, let name):
                transaction.declareRemoveXattr(instance.objects[slot]!, name: name)
            case .insert(let slot, _, let length, _):
                transaction.declareIndexInsert(instance.objects[slot]!, keyBytes: 8, valueBytes: length)
            case .delete(let slot, _):
                transaction.declareIndexDelete(instance.objects[slot]!, keyBytes: 8)
            case .destroy(let slot):
                transaction.declareDestroy(instance.objects[slot]!)
                transaction.declareIndexDelete(Self.catalog, keyBytes: 9)
            }
        }
        try transaction.start()
        var touched = Set<Int>()
        for step in steps {
            touched.insert(step.slot)
            switch step {
            case .create(let slot, let index):
                let object = created[slot]!
                try transaction.create(object, type: index ? .index : .regular, mode: index ? 0o40755 : 0o100644)
                try transaction.indexInsert(Self.catalog, key: Self.slotKey(slot), value: withUnsafeBytes(of: object.littleEndian) { Array($0) })
                instance.objects[slot] = object
            case .write(let slot, let offset, let length, let seed):
                try transaction.write(instance.objects[slot]!, at: UInt64(offset), Self.bytes(seed: seed, length: length))
            case .punch(let slot, let offset, let length):
                try transaction.punch(instance.objects[slot]!, offset: UInt64(offset), length: UInt64(length))
            case .truncate(let slot, let size):
                try transaction.truncate(instance.objects[slot]!, sizeBytes: UInt64(size))
            case .setMode(let slot, let mode):
                var change = AttributeChange()
                change.mask = [.mode]
                change.mode = mode
                try transaction.setAttributes(instance.objects[slot]!, change)
            case .setXattr(let slot, let name, let length, let seed):
                try transaction.setXattr(instance.objects[slot]!, name: name, value: Self.bytes(seed: seed, length: length))
            case .removeXattr(let slot, let name):
                try transaction.removeXattr(instance.objects[slot]!, name: name)
            case .insert(let slot, let key, let length, let seed):
                try transaction.indexInsert(instance.objects[slot]!, key: Self.entryKey(key), value: Self.bytes(seed: seed, length: length), mode: .upsert)
            case .delete(let slot, let key):
                try transaction.indexDelete(instance.objects[slot]!, key: Self.entryKey(key))
            case .destroy(let slot):
                try transaction.destroy(instance.objects[slot]!)
                try transaction.indexDelete(Self.catalog, key: Self.slotKey(slot))
                instance.objects[slot] = nil
            }
        }
        try transaction.stop { _ in context.acknowledge() }
        // The new values of every key of the touched slots, read back from the store.
        var effects: [Effect<String, String>] = []
        for slot in touched.sorted() {
            let before = instance.shadow.filter { $0.key == "s\(slot)" || $0.key.hasPrefix("s\(slot).") }
            var after: [String: String] = [:]
            if let object = instance.objects[slot] { try Self.observe(slot: slot, object: object, store: store, into: &after) }
            for key in Set(before.keys).union(after.keys).sorted() {
                effects.append(Effect(key: key, value: after[key]))
                instance.shadow[key] = after[key]
            }
        }
        instance.lastEffects = effects
    }

    /// Reads the catalog and every object it names into the shadow.
    func readShadow(_ instance: StoreCrashInstance) throws {
        let store = instance.store!
        var shadow: [String: String] = [:]
        var objects: [Int: UInt64] = [:]
        for entry in try store.indexEntries(Self.catalog).entries {
            guard let slot = Int(String(decoding: entry.key.dropFirst(4), as: UTF8.self)), entry.value.count == 8 else {
                instance.problems.append("catalog entry \(entry.key) is malformed")
                continue
            }
            let object = entry.value.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian
            objects[slot] = object
            try Self.observe(slot: slot, object: object, store: store, into: &shadow)
        }
        instance.objects = objects
        instance.shadow = shadow
    }

    static func observe(slot: Int, object: UInt64, store: ObjectStore, into state: inout [String: String]) throws {
        let dnode = try store.attributes(object)
        if dnode.type == .regular {
            let data = dnode.sizeBytes == 0 ? [] : try store.read(object, at: 0, length: Int(dnode.sizeBytes))
            state["s\(slot)"] = "regular \(String(dnode.mode, radix: 8)) \(summary(data))"
        } else {
            state["s\(slot)"] = "\(dnode.type) \(String(dnode.mode, radix: 8))"
            for entry in try store.indexEntries(object).entries {
                state["s\(slot).k.\(String(decoding: entry.key, as: UTF8.self))"] = summary(entry.value)
            }
        }
        for name in try store.xattrNames(object) {
            state["s\(slot).x.\(name)"] = summary(try store.xattr(object, name: name) ?? [])
        }
    }
}
