// DMUCrashSystem — the transactional object store (ObjectStore) as a system under test of the
// crash harness: transactions of creates, small and large writes, punches, truncates,
// attributes, xattrs and index entries; checkpoints in the middle; every crash image recovered
// by `ObjectStore.open` (replay) and compared with a model.
//
// Theory. The contract of DESIGN.md, clause by clause:
//   1. a transaction whose commit callback fired is there, whole, with the exact bytes;
//   2. any other transaction is whole or absent — and, because records are appended in stop
//      order, "T2 durable ⇒ T1 durable" for T1 stopped before T2: the recovered state is the
//      model after a *prefix* of the transactions, one that includes every acknowledged one;
//   3. the pool imports, and `ObjectStore.check(verifyData: true)` finds no leaked, doubly-owned
//      or unreadable block, and the log replays.
// The oracle sees one key, "store", whose value is a `StoreSnapshot` (every object: type, size,
// attributes, crc32c of its bytes, its xattrs, its index entries). Each transaction's effect is
// the model's snapshot after it; checkpoints, syncs and batch starts have none. The harness's
// per-key rule ("the value of the last acknowledged write to the key, or of one issued after
// it") is then exactly clause 1 + 2: the image must equal the model after transaction k for some
// k at or after the last acknowledged one. The transaction is acknowledged from its commit
// callback (`Transaction.stop(onCommit:)`).
//
// Opens (`OpenPurpose`): `.workload` imports read-write and opens the store (replay of nothing,
// a checkpoint); `.check` imports read-only twice — once for `ObjectStore.check`, which must see
// the pool untouched, once for `ObjectStore.open` (replay in memory), whose every object is read
// whole into a snapshot; `.recovery` imports read-write and opens (replay, then a checkpoint),
// then closes: a crash there must leave the same logical state (the default
// `stateAfterRecovery`).
//
// Determinism: the log's `callerLeads` writer (batches are written by `sync`, `commitAsync`, a
// full batch or a checkpoint, on the caller's thread), no background checkpoints, and
// `Pool.runsDeviceJobsInOrder`. A seed always gives the same recording, so a printed image
// replays. (`dmu-random-threaded` gives that up to put the production writer and completer
// threads under the harness: acknowledgements come from the completer thread.) Small settings (256 KiB log segments, 2 MiB of log, 2 MiB of dirty pages) make
// workloads cross segments, hit the throttle and checkpoint inline.
//
// Independently of crashes, every checkpoint and sync operation (and the end of the run) also
// compares the live store with the model: a mismatch fails the operation (exit 2), naming it.
//
// Planted bugs (`Bug`), to prove the harness can fail:
//   - `callbacksBeforeDurable`: the log fires commit callbacks after writing a batch but before
//     its flush (`LogSettings.firesCallbacksBeforeDurable`, SPI LogTesting);
//   - `dataFlushIgnored`: the data device acknowledges flushes without making anything durable,
//     the crash states of a store that skipped the data flush before a large write's record;
//   - `discardAtFree`: every extent is discarded as soon as it is freed, before the transaction
//     or checkpoint that frees it is durable (`Pool.discardAtFreeForTesting`, SPI CrashTesting):
//     the naive trim. The recorder models a discard as a write of zeros that may or may not land.

import StrataDMU
import StrataIO
@_spi(LogTesting) import StrataLog
@_spi(CrashTesting) import StrataPool
import StrataPoolCrash
import StrataTesting

/// An object store under test, or (for checks) what an image showed.
public final class DMUCrashInstance: @unchecked Sendable {
    public let devices: [any BlockStorage]
    public internal(set) var store: ObjectStore?
    /// Workload: the model keyed by object number, and each slot's object number.
    var model = DMUModel()
    var slots: [Int: UInt64] = [:]
    /// The snapshot after the last transaction (its effect).
    var lastSnapshot: StoreSnapshot?
    /// Check: what the image shows, and what is wrong with it.
    var observed: StoreSnapshot?
    var observeError: String?
    var problems: [String] = []

    init(devices: [any BlockStorage]) { self.devices = devices }
}

public struct DMUCrashSystem: SystemUnderTest, Sendable {
    public typealias Instance = DMUCrashInstance
    public typealias Operation = DMUOperation
    public typealias Key = String
    public typealias Value = StoreSnapshot

    public enum Bug: String, Sendable, CaseIterable {
        case callbacksBeforeDurable = "callbacks-before-durable"
        case dataFlushIgnored = "data-flush-ignored"
        case discardAtFree = "discard-at-free"

        public var summary: String {
            switch self {
            case .callbacksBeforeDurable: return "the log fires commit callbacks before the batch's flush"
            case .dataFlushIgnored: return "the data device acknowledges flushes without making anything durable"
            case .discardAtFree: return "freed space is discarded at once, before what frees it is durable"
            }
        }
    }

    public static let poolName = "dmucrash"
    public static let key = "store"

    /// How the log makes a batch durable.
    public let durability: LogSettings.Durability
    /// The pool's copies.metadata: 1, or 2 on two metadata devices (every metadata block written
    /// twice and named by two-address pointers).
    public let metadataCopies: Int
    /// `.callerLeads` (deterministic: a seed replays) or `.dedicatedThread`, the production
    /// writer with its completer thread: batches are written when the writer gets to them and
    /// callbacks acknowledge from the completer, so images differ from run to run and a printed
    /// address may not replay — but every image is still checked against the contract.
    public let writer: LogSettings.Writer
    /// `ObjectStoreSettings.discardFreedSpace`: checkpoints discard the space they release.
    public let discard: Bool
    public let bug: Bug?

    public init(durability: LogSettings.Durability = .fua, metadataCopies: Int = 1, writer: LogSettings.Writer = .callerLeads,
                discard: Bool = false, bug: Bug? = nil) {
        precondition(metadataCopies == 1 || metadataCopies == 2, "metadataCopies \(metadataCopies)")
        self.durability = durability
        self.metadataCopies = metadataCopies
        self.writer = writer
        self.discard = discard
        self.bug = bug
    }

    /// This system with `bug` planted (every other field kept: build variants from here, not by
    /// listing the fields, so a new one is never dropped).
    public func planting(_ bug: Bug?) -> DMUCrashSystem {
        DMUCrashSystem(durability: durability, metadataCopies: metadataCopies, writer: writer, discard: discard, bug: bug)
    }

    public var name: String {
        "object store (log \(durability == .fua ? "fua" : "write+flush")"
            + (metadataCopies > 1 ? ", copies.metadata=\(metadataCopies) on two metadata devices" : "")
            + (writer == .dedicatedThread ? ", writer and completer threads" : "")
            + (discard ? ", freed space discarded" : "") + ")"
            + (bug.map { " with bug \($0.rawValue)" } ?? "")
    }

    /// data, metadata, log (indices 0, 1, 2), and a second metadata device last when metadata
    /// keeps two copies.
    public var devices: [DeviceSpec] {
        [DeviceSpec(name: "data", sizeBytes: 128 << 20), DeviceSpec(name: "metadata", sizeBytes: 64 << 20),
         DeviceSpec(name: "log", sizeBytes: 64 << 20)]
            + (metadataCopies > 1 ? [DeviceSpec(name: "metadata1", sizeBytes: 64 << 20)] : [])
    }

    /// The store's settings under test (StoreTestSupport's, plus the deterministic writer).
    public var settings: ObjectStoreSettings {
        var settings = ObjectStoreSettings()
        settings.backgroundCheckpoints = false
        settings.log.segmentBytes = 256 << 10
        settings.log.logBytesMax = 2 << 20
        settings.log.batchBytesMax = 256 << 10
        settings.log.appendWaitNsMax = 5_000_000_000
        settings.log.writer = writer
        settings.log.durability = bug == .callbacksBeforeDurable ? .writeThenFlush : durability
        settings.log.firesCallbacksBeforeDurable = bug == .callbacksBeforeDurable
        settings.dirtyBytesMax = 2 << 20
        settings.throttleWaitNsMax = 5_000_000_000
        settings.discardFreedSpace = discard
        return settings
    }

    // MARK: Protocol

    /// Creates the pool and an empty store (the base image; not recorded).
    public func format(_ devices: [any BlockStorage]) throws {
        Pool.runsDeviceJobsInOrder = true
        var members: [(storage: any BlockStorage, role: DeviceRole)] = [(devices[0], .data), (devices[1], .metadata), (devices[2], .log)]
        var policy = PoolPolicy()
        if metadataCopies > 1 {
            members.append((devices[3], .metadata))
            policy.setCopies(metadataCopies, for: .metadata)
        }
        let pool = try Pool.create(name: DMUCrashSystem.poolName, devices: members, policy: policy)
        let store = try ObjectStore.open(pool: pool, settings: settings)
        try store.close()
    }

    public func open(_ devices: [any BlockStorage]) throws -> DMUCrashInstance { try open(devices, for: .check) }

    public func open(_ devices: [any BlockStorage], for purpose: OpenPurpose) throws -> DMUCrashInstance {
        Pool.runsDeviceJobsInOrder = true
        switch purpose {
        case .workload:
            var wrapped = devices
            if bug == .dataFlushIgnored { wrapped[0] = FlushFaultDevice(devices[0], fault: .flushIgnored) }
            let instance = DMUCrashInstance(devices: wrapped)
            let pool = try Pool.importPool(devices: wrapped, name: DMUCrashSystem.poolName)
            if bug == .discardAtFree { pool.discardAtFreeForTesting() }
            instance.store = try ObjectStore.open(pool: pool, settings: settings)
            return instance
        case .check:
            let instance = DMUCrashInstance(devices: devices)
            try checkImage(instance)
            return instance
        case .recovery:
            let instance = DMUCrashInstance(devices: devices)
            let pool = try Pool.importPool(devices: devices, name: DMUCrashSystem.poolName)
            instance.store = try ObjectStore.open(pool: pool, settings: settings)
            return instance
        }
    }

    public func close(_ instance: DMUCrashInstance) throws {
        guard let store = instance.store else { return }
        instance.store = nil
        if !store.isReadOnly {
            if instance.lastSnapshot != nil { try verifyLive(store, instance: instance, after: "the last operation") }
            try store.close()
        }
    }

    public func perform(_ operation: DMUOperation, on instance: DMUCrashInstance, context: OperationContext) throws {
        guard let store = instance.store else { throw DMUCrashError("no store open") }
        switch operation {
        case .transaction(let id, let steps):
            try runTransaction(id: id, steps: steps, store: store, instance: instance, context: context)
            instance.lastSnapshot = instance.model.snapshot()
        case .checkpoint:
            try store.checkpoint()
            context.acknowledge()
            try verifyLive(store, instance: instance, after: "checkpoint")
        case .sync:
            try store.sync()
            context.acknowledge()
            try verifyLive(store, instance: instance, after: "sync")
        case .commitAsync:
            store.commitAsync()
            context.acknowledge()
        }
    }

    public func check(_ instance: DMUCrashInstance) throws -> [String] { instance.problems }

    public func observe(_ instance: DMUCrashInstance) throws -> [String: StoreSnapshot] {
        if let error = instance.observeError { throw DMUCrashError(error) }
        guard let observed = instance.observed else { return [:] }
        return [DMUCrashSystem.key: observed]
    }

    public func effects(of operation: DMUOperation) -> [Effect<String, StoreSnapshot>] {
        preconditionFailure("object store effects are the model's snapshot after the transaction: effects(of:performedOn:)")
    }

    public func effects(of operation: DMUOperation, performedOn instance: DMUCrashInstance) -> [Effect<String, StoreSnapshot>] {
        guard case .transaction = operation, let snapshot = instance.lastSnapshot else { return [] }
        return [Effect(key: DMUCrashSystem.key, value: snapshot)]
    }

    // MARK: Transactions

    private func runTransaction(id: Int, steps: [DMUStep], store: ObjectStore, instance: DMUCrashInstance,
                                context: OperationContext) throws {
        let transaction = store.transaction()
        var slots = instance.slots
        func object(_ step: DMUStep) throws -> UInt64 {
            guard let object = slots[step.slot] else { throw DMUCrashError("t\(id): slot s\(step.slot) has no object") }
            return object
        }
        for step in steps {
            switch step {
            case .create(let slot, _, _, _, _): slots[slot] = transaction.declareCreate()
            case .write(_, let offset, let length, _): transaction.declareWrite(try object(step), offset: offset, length: length)
            case .punch, .truncate: transaction.declarePunch(try object(step))
            case .setAttributes: transaction.declareSetAttributes(try object(step))
            case .setXattr(_, let name, let valueBytes, _): transaction.declareSetXattr(try object(step), name: name, valueBytes: valueBytes)
            case .removeXattr(_, let name), .removeMissingXattr(_, let name): transaction.declareRemoveXattr(try object(step), name: name)
            case .indexInsert(_, let key, let valueBytes, _, _):
                transaction.declareIndexInsert(try object(step), keyBytes: key.count, valueBytes: valueBytes)
            case .insertExistingKey(_, let key): transaction.declareIndexInsert(try object(step), keyBytes: key.count, valueBytes: 8)
            case .indexDelete(_, let key): transaction.declareIndexDelete(try object(step), keyBytes: key.count)
            case .destroy: transaction.declareDestroy(try object(step))
            }
        }
        try transaction.start()
        var failure: (any Error)? = nil
        for (index, step) in steps.enumerated() {
            do {
                let number = try object(step)
                try perform(step, on: number, transaction: transaction)
                instance.model.apply(step, to: number)
            } catch {
                failure = DMUCrashError("t\(id) step \(index + 1) (\(step)): \(error)")
                break
            }
        }
        // A started transaction must be stopped, whatever happened.
        try transaction.stop { _ in context.acknowledge() }
        if let failure { throw failure }
        instance.slots = slots
    }

    private func perform(_ step: DMUStep, on object: UInt64, transaction: Transaction) throws {
        switch step {
        case .create(_, let type, let mode, let uid, let timeNs):
            try transaction.create(object, type: type, mode: mode, uid: uid, timeNs: timeNs)
        case .write(_, let offset, let length, let seed):
            try transaction.write(object, at: offset, DMUData.bytes(seed: seed, count: length))
        case .punch(_, let offset, let length):
            try transaction.punch(object, offset: offset, length: length)
        case .truncate(_, let size):
            try transaction.truncate(object, sizeBytes: size)
        case .setAttributes(_, let change):
            try transaction.setAttributes(object, change)
        case .setXattr(_, let name, let valueBytes, let seed):
            try transaction.setXattr(object, name: name, value: DMUData.bytes(seed: seed, count: valueBytes))
        case .removeXattr(_, let name):
            try transaction.removeXattr(object, name: name)
        case .indexInsert(_, let key, let valueBytes, let seed, let upsert):
            try transaction.indexInsert(object, key: key, value: DMUData.bytes(seed: seed, count: valueBytes), mode: upsert ? .upsert : .mustNotExist)
        case .indexDelete(_, let key):
            try transaction.indexDelete(object, key: key)
        case .destroy:
            try transaction.destroy(object)
        case .removeMissingXattr(_, let name):
            do {
                try transaction.removeXattr(object, name: name)
            } catch .noSuchXattr {
                return
            }
            throw DMUCrashError("removing the absent xattr \(name) of object \(object) did not fail")
        case .insertExistingKey(_, let key):
            do {
                try transaction.indexInsert(object, key: key, value: [1, 2, 3, 4, 5, 6, 7, 8], mode: .mustNotExist)
            } catch .index(_, .keyExists(_, _)) {
                return
            }
            throw DMUCrashError("inserting the present key \(DMUData.show(key)) into object \(object) did not fail with keyExists")
        }
    }

    // MARK: Reading a store

    /// Every object of `store` (numbers 1 ..< next object number, and a few past it: an object
    /// there is a problem).
    static func snapshot(of store: ObjectStore, problems: inout [String]) throws -> StoreSnapshot {
        let next = store.nextObjectNumber
        var objects: [UInt64: ObjectSnapshot] = [:]
        for object in UInt64(1) ..< next + 16 where try store.exists(object) {
            if object >= next { problems.append("object \(object) exists at or past the next object number \(next)") }
            objects[object] = try ObjectSnapshot(reading: object, from: store)
        }
        return StoreSnapshot(objects: objects)
    }

    /// The live store against the model (outside any crash): a mismatch is a bug of the store.
    private func verifyLive(_ store: ObjectStore, instance: DMUCrashInstance, after: String) throws {
        var problems: [String] = []
        let live = try DMUCrashSystem.snapshot(of: store, problems: &problems)
        let model = instance.model.snapshot()
        if live != model || !problems.isEmpty {
            var lines = problems
            for object in Set(live.objects.keys).union(model.objects.keys).sorted() where live.objects[object] != model.objects[object] {
                lines.append("object \(object): live \(live.objects[object].map(\.description) ?? "absent"), model \(model.objects[object].map(\.description) ?? "absent")")
            }
            throw DMUCrashError("live store differs from the model after \(after): " + lines.joined(separator: "; "))
        }
    }

    // MARK: Checking an image

    /// Check mode: the full check on one read-only import, then a read-only open (replay) on
    /// another, every object read whole.
    private func checkImage(_ instance: DMUCrashInstance) throws {
        let checkPool = try Pool.importPool(devices: instance.devices, name: DMUCrashSystem.poolName, readOnly: true)
        let report = ObjectStore.check(pool: checkPool, verifyData: true, settings: settings)
        instance.problems += report.problems
        if report.problemCount > report.problems.count {
            instance.problems.append("… and \(report.problemCount - report.problems.count) more problems")
        }
        let pool = try Pool.importPool(devices: instance.devices, name: DMUCrashSystem.poolName, readOnly: true)
        let store = try ObjectStore.open(pool: pool, settings: settings)
        instance.store = store
        do {
            instance.observed = try DMUCrashSystem.snapshot(of: store, problems: &instance.problems)
        } catch {
            instance.observeError = "\(error)"
        }
    }
}
