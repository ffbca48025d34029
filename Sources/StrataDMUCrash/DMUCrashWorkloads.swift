// DMUCrashWorkloads — the object store's crash workloads, each paired with the store it runs on.
//
// Theory. Workloads are pure functions of their seed. The random generator keeps a model keyed
// by slot (DMUModel), so every step it draws is valid on the state the store will be in: writes
// and truncates on regular objects, index steps on index and directory objects, removes of
// xattrs and keys that are there. Sizes are bounded (an object ≤ 6 MiB, a transaction's log
// records ≤ 160 KiB of the 256 KiB batch, xattr blocks well under their 256 KiB limit) so a
// workload never fails for lack of room.
//
//   dmu-random        ~28 transactions of 1–4 steps (sometimes a bulk of 12–40 index inserts),
//                     drawn over every operation: creates (regular, index, directory), small
//                     writes (1 B – 64 KiB − 1, aligned and not, sub-4K), large writes (64 KiB –
//                     3 MiB, aligned and unaligned edges), overwrites, punches, truncates down and
//                     up, setattr, xattrs inline-sized and large (to the xattr block) and their
//                     removal, index inserts / upserts / deletes, destroys, and bad input refused
//                     inside a transaction that goes on; after each, nothing, a batch start, a
//                     sync or a checkpoint (one checkpoint always in the middle); a final sync.
//   dmu-random-flush  the same with the log's write-then-flush durability (no FUA).
//   dmu-random-ditto  dmu-random on a pool with two metadata devices and copies.metadata=2:
//                     every metadata block written twice, named by two-address pointers; the
//                     check marks and verifies both copies on every image.
//   dmu-random-threaded  dmu-random with the production log writer (a writer thread and a
//                     completer thread acknowledging from callbacks): not deterministic (a
//                     printed address may not replay), every image checked all the same.
//   dmu-random-discard  dmu-random with `discardFreedSpace`: each checkpoint discards the space
//                     it makes reusable (recorded as zeros that may or may not land).
//   dmu-small         ~20 transactions without large writes or big xattrs: cheap images, many
//                     per second (the CI budget).
//   dmu-ace           ACE-style: after a fixed setup, every sequence of at most 2 transactions of
//                     13 kinds, each followed by a sync, a checkpoint or nothing (1,040 cases).

import StrataDMU
import StrataIO
import StrataTesting

/// A workload and the store it runs on.
public struct DMUCrashWorkload: Sendable {
    public let system: DMUCrashSystem
    public let workload: Workload<DMUOperation>
    public var name: String { workload.name }
}

extension DMUCrashSystem {
    public static let workloads: [DMUCrashWorkload] = [
        DMUCrashWorkload(system: DMUCrashSystem(), workload: randomWorkload(name: "dmu-random", transactions: 28, large: true)),
        DMUCrashWorkload(system: DMUCrashSystem(durability: .writeThenFlush),
                         workload: randomWorkload(name: "dmu-random-flush", transactions: 28, large: true)),
        DMUCrashWorkload(system: DMUCrashSystem(metadataCopies: 2),
                         workload: randomWorkload(name: "dmu-random-ditto", transactions: 28, large: true)),
        DMUCrashWorkload(system: DMUCrashSystem(writer: .dedicatedThread),
                         workload: randomWorkload(name: "dmu-random-threaded", transactions: 28, large: true)),
        DMUCrashWorkload(system: DMUCrashSystem(discard: true),
                         workload: randomWorkload(name: "dmu-random-discard", transactions: 28, large: true)),
        DMUCrashWorkload(system: DMUCrashSystem(), workload: randomWorkload(name: "dmu-small", transactions: 20, large: false)),
        DMUCrashWorkload(system: DMUCrashSystem(), workload: aceWorkload()),
    ]

    public static func workload(named name: String) throws(CrashTestError) -> DMUCrashWorkload {
        guard let found = workloads.first(where: { $0.name == name }) else {
            throw .unknownWorkload(name: name, known: workloads.map(\.name))
        }
        return found
    }

    // MARK: Random

    static let objectBytesMax = 6 << 20
    static let transactionLogBytesMax = 160 << 10
    static let xattrNames = ["trusted.lma", "trusted.fid", "user.a", "user.layout", "user.big1", "user.big2"]

    /// A seeded random workload of `transactions` transactions (see the file comment).
    public static func randomWorkload(name: String, transactions: Int, large: Bool) -> Workload<DMUOperation> {
        let summary = "\(transactions) seeded transactions over every operation"
            + (large ? " (large writes to 3 MiB, xattrs to 64 KiB)" : " (small writes and values only)")
            + ", syncs, batch starts, checkpoints"
        return Workload(name: name, summary: summary) { seed in
            var generator = RandomGenerator(seed: seed, large: large)
            var operations: [DMUOperation] = []
            for id in 1...transactions {
                operations.append(.transaction(id: id, steps: generator.transaction()))
                if id == transactions / 2 {
                    operations.append(.checkpoint)
                    continue
                }
                switch generator.random.next() % 100 {
                case 0..<45: break
                case 45..<62: operations.append(.commitAsync)
                case 62..<84: operations.append(.sync)
                default: operations.append(.checkpoint)
                }
            }
            operations.append(.sync)
            return operations
        }
    }

    struct RandomGenerator {
        var random: SeededRandom
        let large: Bool
        var model = DMUModel()
        var nextSlot = 0
        var nextSeed: UInt64

        init(seed: UInt64, large: Bool) {
            random = SeededRandom(seed: seed)
            self.large = large
            nextSeed = seed &* 1_000_003
        }

        mutating func roll(_ count: Int) -> Int { Int(random.next() % UInt64(count)) }
        mutating func pick<T>(_ items: [T]) -> T { items[roll(items.count)] }
        mutating func freshSeed() -> UInt64 {
            nextSeed &+= 1
            return nextSeed
        }

        func slots(where predicate: (ModelObject) -> Bool) -> [Int] {
            model.objects.filter { predicate($0.value) }.keys.map { Int($0) }.sorted()
        }

        mutating func transaction() -> [DMUStep] {
            var steps: [DMUStep] = []
            var logBytes = 0
            let count = 1 + roll(4)
            if roll(8) == 0, let index = slots(where: \.isIndex).randomElement(using: &random) {
                // A bulk of inserts: index nodes split (and later merge).
                for _ in 0 ..< 12 + roll(29) {
                    guard let step = indexStep(UInt64(index), valueBytesMax: 200) else { break }
                    steps.append(step)
                    model.apply(step, to: UInt64(index))
                }
                return steps
            }
            while steps.count < count {
                let step = nextStep()
                let cost = logCost(step)
                if !steps.isEmpty && logBytes + cost > DMUCrashSystem.transactionLogBytesMax { break }
                logBytes += cost
                steps.append(step)
                model.apply(step, to: UInt64(step.slot))
            }
            return steps
        }

        func logCost(_ step: DMUStep) -> Int {
            switch step {
            case .write(_, let offset, let length, _):
                return length < 64 << 10 ? length + 64 : 8192 + 64 * (Int(offset) % 4096 == 0 ? 1 : 2) + length / (1 << 20) * 4096
            case .setXattr(_, let name, let bytes, _): return bytes + name.utf8.count + 64
            case .indexInsert(_, let key, let bytes, _, _): return key.count + bytes + 64
            default: return 128
            }
        }

        mutating func nextStep() -> DMUStep {
            let regular = slots { $0.type == .regular }
            let indexes = slots(where: \.isIndex)
            let all = slots { _ in true }
            if all.count < 2 || (all.count < 8 && roll(10) == 0) { return createStep() }
            for _ in 0..<8 {
                switch roll(100) {
                case 0..<22: if let slot = regular.randomElement(using: &random) { return smallWrite(slot) }
                case 22..<32: if large, let slot = regular.randomElement(using: &random) { return largeWrite(slot) }
                case 32..<39: if let slot = regular.randomElement(using: &random) { return punch(slot) }
                case 39..<46: if let slot = regular.randomElement(using: &random) { return truncate(slot) }
                case 46..<52: return setAttributes(pick(all))
                case 52..<64: return setXattr(pick(all))
                case 64..<69:
                    let slot = pick(all)
                    if let name = model.objects[UInt64(slot)]!.xattrs.keys.sorted().randomElement(using: &random) {
                        return .removeXattr(slot: slot, name: name)
                    }
                case 69..<82:
                    if let slot = indexes.randomElement(using: &random), let step = indexStep(UInt64(slot), valueBytesMax: 1024) { return step }
                case 82..<87:
                    if let slot = indexes.randomElement(using: &random),
                       let key = model.objects[UInt64(slot)]!.index.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }).randomElement(using: &random) {
                        return .indexDelete(slot: slot, key: key)
                    }
                case 87..<90: if all.count > 2 { return .destroy(slot: pick(all)) }
                case 90..<93:
                    let slot = pick(all)
                    let missing = DMUCrashSystem.xattrNames.filter { model.objects[UInt64(slot)]!.xattrs[$0] == nil }
                    if let name = missing.first { return .removeMissingXattr(slot: slot, name: name) }
                case 93..<95:
                    if let slot = indexes.randomElement(using: &random),
                       let key = model.objects[UInt64(slot)]!.index.keys.min(by: { $0.lexicographicallyPrecedes($1) }) {
                        return .insertExistingKey(slot: slot, key: key)
                    }
                default: if all.count < 10 { return createStep() }
                }
            }
            return setAttributes(pick(all))
        }

        mutating func createStep() -> DMUStep {
            let slot = nextSlot
            nextSlot += 1
            let type: ObjectType = roll(10) < 6 ? .regular : (roll(2) == 0 ? .index : .directory)
            let mode: UInt32 = type == .directory ? 0o040755 : 0o100644
            return .create(slot: slot, type: type, mode: mode, uid: UInt32(roll(1000)), timeNs: Int64(random.next() >> 2))
        }

        func size(_ slot: Int) -> Int { Int(model.objects[UInt64(slot)]!.sizeBytes) }

        mutating func smallWrite(_ slot: Int) -> DMUStep {
            let length = pick([1, 17, 512, 4095, 4096, 4097, 5000, 8192, 12_291, 40_000, 65_535])
            let size = size(slot)
            var offset: Int
            switch roll(4) {
            case 0: offset = roll(size + 1)                                   // anywhere, unaligned
            case 1: offset = roll(size / 4096 + 2) * 4096                     // aligned
            case 2: offset = size                                             // append
            default: offset = size + roll(3) * 4096 + roll(2) * 777           // past the end: a hole
            }
            if offset + length > DMUCrashSystem.objectBytesMax { offset = roll(4096) }
            return .write(slot: slot, offset: UInt64(offset), length: length, seed: freshSeed())
        }

        mutating func largeWrite(_ slot: Int) -> DMUStep {
            let length = pick([64 << 10, (64 << 10) + 1234, 256 << 10, (1 << 20) + 777, (2 << 20) + 3, 3 << 20, 200_000])
            let size = size(slot)
            var offset: Int
            switch roll(4) {
            case 0: offset = 0
            case 1: offset = roll(size / 4096 + 1) * 4096                     // aligned overwrite or append
            case 2: offset = roll(size / 4096 + 1) * 4096 + 1 + roll(4094)    // unaligned edges
            default: offset = roll(size + 1)
            }
            if offset + length > DMUCrashSystem.objectBytesMax { offset = roll(2) * 4096 + roll(2) * 333 }
            return .write(slot: slot, offset: UInt64(offset), length: length, seed: freshSeed())
        }

        mutating func punch(_ slot: Int) -> DMUStep {
            let size = max(1, size(slot))
            let offset = roll(2) == 0 ? roll(size) : roll(size / 4096 + 1) * 4096
            let length = pick([1, 100, 4096, 4096 * 3, 20_000, 70_000, 300_000, size])
            return .punch(slot: slot, offset: UInt64(offset), length: UInt64(length))
        }

        mutating func truncate(_ slot: Int) -> DMUStep {
            let size = size(slot)
            var target: Int
            switch roll(5) {
            case 0: target = 0
            case 1, 2: target = roll(size + 1)                                // down (or equal)
            case 3: target = size + 1 + roll(large ? 1 << 20 : 40_000)        // up: zeros
            default: target = roll(size / 4096 + 1) * 4096                    // aligned
            }
            return .truncate(slot: slot, sizeBytes: UInt64(min(target, DMUCrashSystem.objectBytesMax)))
        }

        mutating func setAttributes(_ slot: Int) -> DMUStep {
            var change = AttributeChange()
            let fields: [AttributeMask] = [.mode, .uid, .gid, .flags, .projid, .nlink, .rdev, .atime, .mtime, .ctime]
            for field in fields where roll(3) == 0 { change.mask.insert(field) }
            if change.mask.isEmpty { change.mask = .mtime }
            change.mode = 0o100000 | UInt32(roll(0o7777))
            change.uid = UInt32(random.next() >> 40)
            change.gid = UInt32(random.next() >> 40)
            change.flags = UInt32(roll(256))
            change.projid = UInt32(roll(100_000))
            change.nlink = UInt32(1 + roll(5))
            change.rdev = UInt32(random.next() >> 32)
            change.atimeNs = Int64(random.next() >> 2)
            change.mtimeNs = Int64(random.next() >> 2)
            change.ctimeNs = -Int64(roll(1_000_000))
            return .setAttributes(slot: slot, change)
        }

        mutating func setXattr(_ slot: Int) -> DMUStep {
            let object = model.objects[UInt64(slot)]!
            let bigCount = object.xattrs.values.filter { $0.count > 1024 }.count
            var name = pick(DMUCrashSystem.xattrNames)
            var bytes: Int
            switch roll(large ? 4 : 2) {
            case 0: bytes = pick([0, 1, 24, 44, 100, 255])                   // small, inline
            case 1: bytes = pick([400, 700, 720, 900])                        // around the inline limit
            default:
                bytes = pick([4096, 20_000, 65_536])                          // to the xattr block
                if bigCount >= 2 && (object.xattrs[name]?.count ?? 0) <= 1024 {
                    name = object.xattrs.first { $0.value.count > 1024 }!.key
                }
            }
            return .setXattr(slot: slot, name: name, valueBytes: bytes, seed: freshSeed())
        }

        /// An insert of a new key, or an upsert of a present one.
        mutating func indexStep(_ slot: UInt64, valueBytesMax: Int) -> DMUStep? {
            let object = model.objects[slot]!
            let valueBytes = pick([0, 8, 40, 200, 1024].filter { $0 <= valueBytesMax })
            if !object.index.isEmpty && roll(5) == 0 {
                let key = object.index.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }).randomElement(using: &random)!
                return .indexInsert(slot: Int(slot), key: key, valueBytes: valueBytes, seed: freshSeed(), upsert: true)
            }
            for _ in 0..<8 {
                var key = Array("k\(roll(5000))".utf8)
                if roll(4) == 0 { key += Array(repeating: UInt8(ascii: "x"), count: roll(200)) }
                if object.index[key] == nil {
                    return .indexInsert(slot: Int(slot), key: key, valueBytes: valueBytes, seed: freshSeed(), upsert: false)
                }
            }
            return nil
        }
    }

    // MARK: ACE

    /// After a setup (a regular object with small and large data and xattrs, an index with 8
    /// entries, three objects to destroy, a checkpoint and a sync), every sequence of at most
    /// `lengthMax` transactions of 13 kinds, each followed by sync, checkpoint or nothing.
    public static func aceWorkload(lengthMax: Int = 2) -> Workload<DMUOperation> {
        let file = 0, index = 1, victims = 2   // slots 2, 3, 4: one destroy per position
        var setupSteps: [DMUStep] = [
            .create(slot: file, type: .regular, mode: 0o100644, uid: 7, timeNs: 1000),
            .write(slot: file, offset: 0, length: 20_000, seed: 1),
            .write(slot: file, offset: 40_960, length: 300_000, seed: 2),
            .setXattr(slot: file, name: "trusted.lma", valueBytes: 24, seed: 3),
            .setXattr(slot: file, name: "user.big1", valueBytes: 20_000, seed: 4),
            .create(slot: index, type: .index, mode: 0o100644, uid: 7, timeNs: 1000),
        ]
        for position in 0..<3 {
            setupSteps.append(.create(slot: victims + position, type: position == 1 ? .directory : .regular, mode: 0o100644, uid: 0, timeNs: 5))
            setupSteps.append(.setXattr(slot: file, name: "user.r\(position)", valueBytes: 30, seed: 10 + UInt64(position)))
        }
        for key in 0..<8 {
            setupSteps.append(.indexInsert(slot: index, key: Array("s\(key)".utf8), valueBytes: 100, seed: 20 + UInt64(key), upsert: false))
        }
        let setup: [DMUOperation] = [.transaction(id: 0, steps: setupSteps), .checkpoint,
                                     .transaction(id: 1, steps: [.write(slot: victims, offset: 0, length: 70_000, seed: 30)]), .sync]
        @Sendable func transaction(_ position: Int, _ steps: [DMUStep]) -> DMUOperation { .transaction(id: 10 + position, steps: steps) }
        @Sendable func seed(_ position: Int, _ salt: UInt64) -> UInt64 { UInt64(100 + position * 10) + salt }
        let core: [@Sendable (Int) -> DMUOperation] = [
            { p in transaction(p, [.write(slot: file, offset: 4095 + UInt64(p) * 9000, length: 3000, seed: seed(p, 1))]) },
            { p in transaction(p, [.write(slot: file, offset: 12_345 + UInt64(p) * 4096, length: (1 << 20) + 5, seed: seed(p, 2))]) },
            { p in transaction(p, [.punch(slot: file, offset: 1000 + UInt64(p) * 100_000, length: 150_000)]) },
            { p in transaction(p, [.truncate(slot: file, sizeBytes: 100_001 - UInt64(p) * 30_000)]) },
            { p in transaction(p, [.truncate(slot: file, sizeBytes: 1_500_000 + UInt64(p) * 4097)]) },
            { p in
                var change = AttributeChange()
                change.mask = [.mode, .mtime, .nlink]
                change.mode = 0o100600 + UInt32(p)
                change.mtimeNs = 77 + Int64(p)
                change.nlink = 3 + UInt32(p)
                return transaction(p, [.setAttributes(slot: file, change)])
            },
            { p in transaction(p, [.setXattr(slot: index, name: "user.big2", valueBytes: 65_536 - p, seed: seed(p, 3))]) },
            { p in transaction(p, [.removeXattr(slot: file, name: "user.r\(p)")]) },
            { p in transaction(p, [.indexInsert(slot: index, key: Array("ace\(p)".utf8), valueBytes: 1024, seed: seed(p, 4), upsert: false)]) },
            { p in transaction(p, [.indexDelete(slot: index, key: Array("s\(p)".utf8))]) },
            { p in transaction(p, [.create(slot: 10 + p, type: .regular, mode: 0o100644, uid: 1, timeNs: 9),
                                   .write(slot: 10 + p, offset: 0, length: 5000, seed: seed(p, 5))]) },
            { p in transaction(p, [.destroy(slot: victims + p)]) },
            { p in transaction(p, [.write(slot: file, offset: 7 + UInt64(p), length: 10, seed: seed(p, 6)),
                                   .setXattr(slot: file, name: "user.a", valueBytes: 700, seed: seed(p, 7)),
                                   .indexInsert(slot: index, key: Array("s\(p + 4)".utf8), valueBytes: 9, seed: seed(p, 8), upsert: true),
                                   .punch(slot: file, offset: 4096 * 20, length: 4096 * 3)]) },
        ]
        return Workload.exhaustive(name: lengthMax == 2 ? "dmu-ace" : "dmu-ace-\(lengthMax)",
                                   summary: "after a setup, every sequence of ≤ \(lengthMax) transactions of 13 kinds, each followed by sync, checkpoint or nothing",
                                   setup: setup, core: core, persistence: [{ _ in .sync }, { _ in .checkpoint }], lengthMax: lengthMax)
    }
}
