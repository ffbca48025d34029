// StoreCrashWorkloads — seeded workloads over every operation of the object store.
//
//   object-random   30 operations: transactions of 1–4 steps (creates of regular and index
//                   objects; writes of 100 B – 200 KiB at unaligned and aligned offsets, so both
//                   the log path and the extent path with unaligned edges; punch; truncate down
//                   and up; chmod; xattrs of 20 B (inline) and 3–9 KiB (the xattr block) set and
//                   removed; index inserts and deletes; destroys), syncs, commitAsync,
//                   checkpoints and restarts; a sync last.
//   object-small    the same mix, 12 operations (short runs for quick sweeps).
//
// The generator keeps a model of what exists (slots, types, sizes, xattr names, index keys) so
// every step is valid when it runs: a workload never fails on bad input (that is tested
// separately) and always exercises the path it names.

import StrataTesting

extension StoreCrashSystem {
    struct ModelSlot {
        var index: Bool
        var size: Int = 0
        var xattrs: Set<String> = []
        var keys: Set<Int> = []
    }

    public static func randomWorkload(name: String, length: Int) -> Workload<StoreCrashOperation> {
        Workload(name: name, summary: "\(length) operations: transactions over every object operation, syncs, checkpoints, restarts") { seed in
            var random = SeededRandom(seed: seed)
            func below(_ bound: Int) -> Int { Int(random.next() % UInt64(bound)) }
            var slots: [Int: ModelSlot] = [:]
            var nextSlot = 0
            var operations: [StoreCrashOperation] = []
            for _ in 0..<length {
                let roll = below(100)
                if roll < 10 { operations.append(.sync); continue }
                if roll < 15 { operations.append(.commitAsync); continue }
                if roll < 22 { operations.append(.checkpoint); continue }
                if roll < 27 { operations.append(.restart); continue }
                var steps: [StoreCrashStep] = []
                var touched = Set<Int>()
                for _ in 0..<(1 + below(4)) {
                    let free = slots.keys.filter { !touched.contains($0) }.sorted()
                    if free.isEmpty || (slots.count < 8 && below(4) == 0) {
                        let slot = nextSlot
                        nextSlot += 1
                        let index = below(4) == 0
                        steps.append(.create(slot: slot, index: index))
                        touched.insert(slot)
                        slots[slot] = ModelSlot(index: index)
                        continue
                    }
                    let slot = free[below(free.count)]
                    touched.insert(slot)
                    var model = slots[slot]!
                    let kind = below(model.index ? 5 : 9)
                    let step: StoreCrashStep
                    switch (model.index, kind) {
                    case (false, 0), (false, 1), (false, 2):
                        let length = [100, 3000, 4096, 9000, 20_000, 70_000, 200_000][below(7)]
                        let offset = below(3) == 0 ? below(max(1, model.size / 4096 + 2)) * 4096 : below(max(1, model.size + 5000))
                        step = .write(slot: slot, offset: offset, length: length, seed: random.next())
                        model.size = max(model.size, offset + length)
                    case (false, 3):
                        step = .punch(slot: slot, offset: below(max(1, model.size)), length: 1 + below(100_000))
                    case (false, 4):
                        let size = below(2) == 0 ? below(max(1, model.size)) : model.size + below(50_000)
                        step = .truncate(slot: slot, size: size)
                        model.size = size
                    case (true, 0), (true, 1):
                        let key = below(40)
                        step = .insert(slot: slot, key: key, length: 1 + below(300), seed: random.next())
                        model.keys.insert(key)
                    case (true, 2):
                        if let key = model.keys.sorted().first(where: { _ in below(2) == 0 }) ?? model.keys.sorted().first {
                            step = .delete(slot: slot, key: key)
                            model.keys.remove(key)
                        } else {
                            step = .setMode(slot: slot, mode: 0o40700)
                        }
                    case (_, 5), (true, 3):
                        let name = ["trusted.lma", "trusted.fid", "user.big", "user.layout"][below(4)]
                        let length = name == "user.big" ? 3000 + below(6000) : 20 + below(40)
                        step = .setXattr(slot: slot, name: name, length: length, seed: random.next())
                        model.xattrs.insert(name)
                    case (_, 6):
                        if let name = model.xattrs.sorted().first {
                            step = .removeXattr(slot: slot, name: name)
                            model.xattrs.remove(name)
                        } else {
                            step = .setMode(slot: slot, mode: 0o100600)
                        }
                    case (_, 7), (true, 4):
                        step = .destroy(slot: slot)
                        slots[slot] = nil
                        steps.append(step)
                        continue
                    default:
                        step = .setMode(slot: slot, mode: model.index ? 0o40750 : 0o100640)
                    }
                    slots[slot] = model
                    steps.append(step)
                }
                operations.append(.transaction(steps))
            }
            operations.append(.sync)
            return operations
        }
    }

    public static let workloads: [Workload<StoreCrashOperation>] = [
        randomWorkload(name: "object-random", length: 30),
        randomWorkload(name: "object-small", length: 12),
    ]

    public static func workload(named name: String) -> Workload<StoreCrashOperation>? {
        workloads.first { $0.name == name }
    }
}
