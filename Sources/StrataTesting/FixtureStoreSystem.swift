// FixtureStoreSystem — the FixtureStore as a SystemUnderTest, with its workloads.
//
// Theory. The adapter between the harness and the fixture store: two devices (meta, data),
// operations put/delete/sync/checkpoint, the observed state is the whole table with every value
// checksum-verified, the effects are blind writes of values to keys. Commit callbacks of
// put/delete acknowledge their operation (at the next sync or checkpoint, or at once with the
// ack-before-flush bug); sync and checkpoint acknowledge themselves when they return. Values
// are generated from (seed, step) so every write in a workload is distinct and a replay
// regenerates the same bytes. Holds no state beyond its bug switches.

import StrataIO

/// A value as the oracle sees it: the bytes, printed as length and checksum.
public struct FixtureValue: Equatable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var description: String {
        "\(bytes.count) bytes (crc32c \(String(CRC32C.checksum(bytes), radix: 16)))"
    }
}

/// One operation of a fixture-store workload.
public enum FixtureOperation: Sendable, CustomStringConvertible {
    case put(key: String, value: [UInt8])
    case delete(key: String)
    case sync
    case checkpoint

    public var description: String {
        switch self {
        case .put(let key, let value): return "put \(key) \(FixtureValue(value))"
        case .delete(let key): return "delete \(key)"
        case .sync: return "sync"
        case .checkpoint: return "checkpoint"
        }
    }
}

/// The fixture store under test, optionally with planted bugs.
public struct FixtureStoreSystem: SystemUnderTest {
    public let bugs: FixtureStore.Bugs

    public init(bugs: FixtureStore.Bugs = []) {
        self.bugs = bugs
    }

    public var name: String { bugs.isEmpty ? "fixture-store" : "fixture-store with planted bugs" }

    public var devices: [DeviceSpec] {
        [DeviceSpec(name: "meta", sizeBytes: FixtureStore.metaSizeBytes),
         DeviceSpec(name: "data", sizeBytes: FixtureStore.dataSizeBytes)]
    }

    public func format(_ devices: [any BlockStorage]) throws {
        try FixtureStore.format(meta: devices[0], data: devices[1], bugs: bugs)
    }

    public func open(_ devices: [any BlockStorage]) throws -> FixtureStore {
        try FixtureStore.open(meta: devices[0], data: devices[1], bugs: bugs)
    }

    public func perform(_ operation: FixtureOperation, on store: FixtureStore, context: OperationContext) throws {
        switch operation {
        case .put(let key, let value):
            try store.put(key, value) { context.acknowledge() }
        case .delete(let key):
            try store.delete(key) { context.acknowledge() }
        case .sync:
            try store.sync()
            context.acknowledge()
        case .checkpoint:
            try store.checkpoint()
            context.acknowledge()
        }
    }

    public func check(_ store: FixtureStore) throws -> [String] {
        store.check()
    }

    public func observe(_ store: FixtureStore) throws -> [String: FixtureValue] {
        var state: [String: FixtureValue] = [:]
        for key in store.keys {
            if let value = try store.get(key) { state[key] = FixtureValue(value) }
        }
        return state
    }

    public func effects(of operation: FixtureOperation) -> [Effect<String, FixtureValue>] {
        switch operation {
        case .put(let key, let value): return [Effect(key: key, value: FixtureValue(value))]
        case .delete(let key): return [Effect(key: key, value: nil)]
        case .sync, .checkpoint: return []
        }
    }

    // MARK: Workloads

    /// Value sizes: small (one-sector log record), medium (inline, two-sector record), large
    /// (data-device blocks).
    public enum ValueSize: Sendable {
        case small, medium, large

        func length(_ random: inout SeededRandom) -> Int {
            switch self {
            case .small: return 64 + Int(random.next() % 3000)
            case .medium: return 4200 + Int(random.next() % UInt64(FixtureStore.inlineValueBytesMax - 4200))
            case .large: return FixtureStore.inlineValueBytesMax + 100 + Int(random.next() % 9000)
            }
        }
    }

    /// A distinct value for (seed, tag): its first bytes name the tag, the rest is seeded noise.
    public static func value(seed: UInt64, tag: UInt64, size: ValueSize) -> [UInt8] {
        var random = SeededRandom(seed: seed, stream: tag)
        let length = size.length(&random)
        var bytes = [UInt8](repeating: 0, count: length)
        for index in 0..<length {
            bytes[index] = index < 8 ? UInt8(truncatingIfNeeded: tag >> (8 * index)) : UInt8(truncatingIfNeeded: random.next())
        }
        return bytes
    }

    /// `kv-random`: `length` operations over 5 keys (puts of all sizes, deletes, syncs,
    /// checkpoints), ending in a sync.
    public static func randomWorkload(length: Int = 40) -> Workload<FixtureOperation> {
        Workload(name: "kv-random", summary: "\(length) random puts (small, two-sector, data-block), deletes, syncs, checkpoints on 5 keys") { seed in
            var random = SeededRandom(seed: seed)
            var operations: [FixtureOperation] = []
            for step in 0..<(length - 1) {
                let key = "k\(random.next() % 5)"
                let roll = random.next() % 100
                switch roll {
                case 0..<20: operations.append(.put(key: key, value: value(seed: seed, tag: UInt64(step), size: .small)))
                case 20..<35: operations.append(.put(key: key, value: value(seed: seed, tag: UInt64(step), size: .medium)))
                case 35..<60: operations.append(.put(key: key, value: value(seed: seed, tag: UInt64(step), size: .large)))
                case 60..<70: operations.append(.delete(key: key))
                case 70..<95: operations.append(.sync)
                default: operations.append(.checkpoint)
                }
            }
            operations.append(.sync)
            return operations
        }
    }

    /// `kv-ace` (≤ 3 core operations) and `kv-ace-short` (≤ 2): ACE-style exhaustive
    /// sequences after a setup of a data-block value on k0 and a small one on k1.
    public static func aceWorkload(lengthMax: Int = 3) -> Workload<FixtureOperation> {
        let seed: UInt64 = 0xACE
        let setup: [FixtureOperation] = [
            .put(key: "k0", value: value(seed: seed, tag: 1000, size: .large)),
            .put(key: "k1", value: value(seed: seed, tag: 1001, size: .small)),
            .sync,
        ]
        let core: [@Sendable (Int) -> FixtureOperation] = [
            { .put(key: "k0", value: value(seed: seed, tag: UInt64(10 * $0 + 1), size: .large)) },
            { .put(key: "k1", value: value(seed: seed, tag: UInt64(10 * $0 + 2), size: .large)) },
            { .put(key: "k0", value: value(seed: seed, tag: UInt64(10 * $0 + 3), size: .medium)) },
            { .put(key: "k2", value: value(seed: seed, tag: UInt64(10 * $0 + 4), size: .small)) },
            { _ in .delete(key: "k0") },
        ]
        let persistence: [@Sendable (Int) -> FixtureOperation] = [{ _ in .sync }, { _ in .checkpoint }]
        return Workload.exhaustive(name: lengthMax == 3 ? "kv-ace" : "kv-ace-\(lengthMax)",
                                   summary: "every sequence of ≤ \(lengthMax) of {put k0 data-block, put k1 data-block, put k0 two-sector, put k2 small, delete k0}, each followed by sync, checkpoint or nothing, the last by sync or checkpoint",
                                   setup: setup, core: core, persistence: persistence, lengthMax: lengthMax)
    }

    /// Every fixture-store workload by name.
    public static let workloads: [Workload<FixtureOperation>] = [
        randomWorkload(), aceWorkload(lengthMax: 3), aceWorkload(lengthMax: 2),
    ]

    /// The workload called `name`.
    public static func workload(named name: String) throws(CrashTestError) -> Workload<FixtureOperation> {
        guard let workload = workloads.first(where: { $0.name == name }) else {
            throw .unknownWorkload(name: name, known: workloads.map(\.name))
        }
        return workload
    }
}
