// Allocator conformance: a seeded random sequence of allocate / free / reserve / consume /
// release / checkpoint / policy steps runs against PoolAllocator and a simple model (one state
// byte per 4 KiB unit per device). After every step the invariants are checked:
//   no overlap        an allocation returns only units the model has free (so deferred frees are
//                     honoured: a unit freed in N stays out of reach until N+1 is durable)
//   no leak           allocator bitmaps and free/used/reserved/deferred counts equal the model's
//   reservations      consumption returns held space of that reservation, never fails, never more
//                     than reserved; unreserved allocations never see held space
//   copies            N extents on N distinct devices
//   routing           for every prefix of the class's routing tiers, the copies placed there are
//                     min(copies, devices of the prefix that can fit); ENOSPC only when fewer than
//                     `copies` candidates fit, and it changes nothing
//   durable view      at every cut, the encoded blocks, applied to a model disk image, make the
//                     image equal to the model's durable view (checks dirty tracking too)
// Every problem names the seed and step; `Harness.problems()` returns them so a deliberately
// broken model can prove the checker fails.

import Foundation
import Testing
@testable import StrataPool

struct ModelDevice {
    static let free: UInt8 = 0, used: UInt8 = 1, deferred: UInt8 = 2, held: UInt8 = 3, excluded: UInt8 = 4
    var device: AllocatorDevice
    /// One state per unit; change through `set` so that `words` and `histogram` follow.
    private(set) var units: [UInt8]
    /// Bit per unit: not free (the allocator's live bitmap).
    private(set) var words: [UInt64]
    private(set) var histogram = [Int](repeating: 0, count: 5)
    /// The durable image built from checkpoint cuts (bitmap bytes).
    var disk: [UInt8]
    var capacityUnits = 0
    func count(_ state: UInt8) -> Int { histogram[Int(state)] }

    init(_ device: AllocatorDevice, blockCount: Int) {
        self.device = device
        let unitCount = Int(device.sizeBytes / 4096)
        units = [UInt8](repeating: ModelDevice.free, count: unitCount)
        words = [UInt64](repeating: 0, count: (unitCount + 63) / 64)
        histogram[0] = unitCount
        disk = [UInt8](repeating: 0, count: blockCount * 4096)
        for range in device.reservedRanges {
            for unit in Int(range.lowerBound / 4096) ..< Int((range.upperBound + 4095) / 4096) where units[unit] != ModelDevice.excluded {
                set(unit, ModelDevice.excluded)
            }
        }
        capacityUnits = unitCount - count(ModelDevice.excluded)
    }

    mutating func set(_ unit: Int, _ state: UInt8) {
        histogram[Int(units[unit])] -= 1
        histogram[Int(state)] += 1
        units[unit] = state
        if state == ModelDevice.free { words[unit >> 6] &= ~(1 << UInt64(unit & 63)) } else { words[unit >> 6] |= 1 << UInt64(unit & 63) }
    }

    /// The durable view's bitmap word `index`: used, excluded and past-the-end units set.
    func durableWord(_ index: Int) -> UInt64 {
        var word: UInt64 = 0
        for bit in 0 ..< 64 {
            let unit = index * 64 + bit
            if unit >= units.count || units[unit] == ModelDevice.used || units[unit] == ModelDevice.excluded { word |= 1 << UInt64(bit) }
        }
        return word
    }

    /// Whether a run of `count` units fits per the allocator's placement rules.
    func canFit(units count: Int) -> Bool {
        if count < 256 {
            var run = 0
            for unit in units.indices {
                if unit % 256 == 0 { run = 0 }
                run = units[unit] == ModelDevice.free ? run + 1 : 0
                if run >= count { return true }
            }
            return false
        }
        let needed = (count + 255) / 256
        var consecutive = 0
        for region in 0 ..< units.count / 256 {
            let whole = units[region * 256 ..< region * 256 + 256].allSatisfy { $0 == ModelDevice.free }
            consecutive = whole ? consecutive + 1 : 0
            if consecutive >= needed { return true }
        }
        return false
    }

}

final class Harness {
    let seed: UInt64
    var step = 0
    var random: SeededRandom
    let allocator: PoolAllocator
    var policy: PoolPolicy
    var model: [ModelDevice]
    var live: [ExtentCopies] = []
    var deferred: [(checkpoint: UInt64, extent: Extent)] = []
    var reservations: [Reservation] = []
    var inFlightCheckpoint: UInt64?
    var problemList: [String] = []
    var counts: [String: Int] = [:]

    init(seed: UInt64, devices: [AllocatorDevice], policy: PoolPolicy) {
        self.seed = seed
        random = SeededRandom(seed: seed)
        self.policy = policy
        allocator = PoolAllocator(devices: devices, policy: policy)
        model = devices.map { device in
            ModelDevice(device, blockCount: SpaceMap(sizeBytes: device.sizeBytes).bitmapBlockCount)
        }
    }

    func problem(_ text: String) { problemList.append("seed \(seed) step \(step): \(text)") }

    func slot(_ deviceIndex: Int) -> Int { model.firstIndex { $0.device.index == deviceIndex }! }

    // MARK: Routing model

    func fillAtLeast(_ percent: Int, _ slots: [Int]) -> Bool {
        let capacity = slots.reduce(0) { $0 + model[$1].capacityUnits }
        let notFree = slots.reduce(0) { $0 + model[$1].capacityUnits - model[$1].count(ModelDevice.free) }
        return capacity > 0 && notFree * 100 >= percent * capacity
    }

    func tiers(_ requested: AllocationClass, lengthBytes: UInt64) -> (AllocationClass, [[Int]]) {
        var effective = requested
        if requested == .data, policy.smallBlockCutoffBytes > 0, lengthBytes <= policy.smallBlockCutoffBytes { effective = .smallData }
        let allocatable = model.indices.filter { model[$0].device.role != .cache }
        if allocatable.count == 1 { return (effective, [allocatable]) }
        func role(_ role: DeviceRole) -> [Int] { model.indices.filter { model[$0].device.role == role } }
        let past = fillAtLeast(Int(policy.spillThresholdPercent), role(.data))
        let dataTiers = past ? [role(.spill), role(.data)] : [role(.data), role(.spill)]
        switch effective {
        case .metadata: return (effective, [role(.metadata), role(.data)])
        case .smallData:
            let eligible = role(.metadata).filter { slot in
                let device = model[slot]
                let notFree = device.capacityUnits - device.count(ModelDevice.free)
                return notFree * 100 < (100 - Int(policy.metadataReservePercent)) * device.capacityUnits
            }
            return (effective, [eligible] + dataTiers)
        case .data: return (effective, dataTiers)
        case .log: return (effective, [role(.log), role(.metadata), role(.data)])
        }
    }

    // MARK: Steps

    func randomLength() -> UInt64 {
        switch random.next(below: 10) {
        case 0...3: return 4096
        case 4: return 4096 * UInt64(1 + random.next(below: 255))
        case 5: return 64 << 10
        case 6...8: return 1 << 20
        default: return UInt64(1 + random.next(below: 3)) << 20
        }
    }

    func randomClass() -> AllocationClass { AllocationClass.allCases[random.next(below: AllocationClass.allCases.count)] }

    /// Checks routing and placement of a fresh allocation against the model state before it.
    func checkPlacement(_ copies: ExtentCopies, tiers: [[Int]], expectedCopies: Int, lengthBytes: UInt64) {
        if copies.count != expectedCopies { problem("\(copies.count) copies, policy says \(expectedCopies)") }
        if Set(copies.map(\.deviceIndex)).count != copies.count { problem("copies on the same device: \(copies)") }
        let chosen = Set(copies.map { slot($0.deviceIndex) })
        var prefix: [Int] = []
        for tier in tiers {
            prefix += tier
            let capable = prefix.filter { model[$0].canFit(units: Int(lengthBytes / 4096)) }.count
            let placed = chosen.intersection(prefix).count
            if placed != min(expectedCopies, capable) {
                problem("routing: \(placed) copies in tiers \(prefix) where \(capable) devices fit (\(copies))")
            }
        }
        if !chosen.isSubset(of: Set(prefix)) { problem("copy outside the class's devices: \(copies)") }
        for extent in copies {
            if extent.lengthBytes != lengthBytes { problem("extent \(extent) length, asked \(lengthBytes)") }
            if lengthBytes >= 1 << 20, extent.offsetBytes % (1 << 20) != 0 { problem("extent \(extent) not 1 MiB aligned") }
        }
    }

    func claim(_ extent: Extent, from expected: UInt8, to state: UInt8, _ what: String) {
        let device = slot(extent.deviceIndex)
        for unit in Int(extent.offsetBytes / 4096) ..< Int(extent.endBytes / 4096) {
            guard unit < model[device].units.count else { problem("\(what): \(extent) beyond the device"); return }
            if model[device].units[unit] != expected {
                problem("\(what): \(extent) unit \(unit) is in state \(model[device].units[unit]), expected \(expected) (overlap)")
                return
            }
            model[device].set(unit, state)
        }
    }

    func stepAllocate() {
        let requested = randomClass(), length = randomLength()
        let (effective, tiers) = self.tiers(requested, lengthBytes: length)
        let expectedCopies = policy.copies(for: PoolPolicy.governingRole(of: effective))
        let feasible = tiers.joined().filter { model[$0].canFit(units: Int(length / 4096)) }.count >= expectedCopies
        do {
            let copies = try allocator.allocate(requested, lengthBytes: length)
            counts["allocate", default: 0] += 1
            if !feasible { problem("allocation of \(length) (\(requested)) succeeded where the model has no room: \(copies)") }
            checkPlacement(copies, tiers: tiers, expectedCopies: expectedCopies, lengthBytes: length)
            for extent in copies { claim(extent, from: ModelDevice.free, to: ModelDevice.used, "allocate") }
            live.append(copies)
        } catch {
            counts["enospc", default: 0] += 1
            if feasible { problem("ENOSPC for \(length) (\(requested)) where the model fits: \(error)") }
            if case .noSpace(let errorClass, let errorLength, _, _) = error, errorClass != effective || errorLength != length {
                problem("ENOSPC names \(errorClass)/\(errorLength), expected \(effective)/\(length)")
            }
        }
    }

    func stepFree() {
        guard !live.isEmpty else { return }
        let copies = live.remove(at: random.next(below: live.count))
        let checkpoint = allocator.openCheckpoint
        if random.next(below: 2) == 0 { allocator.free(copies) } else { for extent in copies { allocator.free(extent) } }
        counts["free", default: 0] += 1
        for extent in copies {
            claim(extent, from: ModelDevice.used, to: ModelDevice.deferred, "free")
            deferred.append((checkpoint, extent))
        }
    }

    func stepReserve() {
        let requested = randomClass(), length = random.next(below: 2) == 0 ? UInt64(4096) : randomLength()
        let count = 1 + random.next(below: 3)
        let (_, tiers) = self.tiers(requested, lengthBytes: length)
        do {
            let reservation = try allocator.reserve(requested, extentCount: count, lengthBytes: length)
            counts["reserve", default: 0] += 1
            let held = allocator.heldExtents(of: reservation)
            if held.count != count * reservation.copies { problem("\(reservation) holds \(held.count) extents") }
            let allowed = Set(tiers.joined())
            for group in stride(from: 0, to: held.count, by: reservation.copies) {
                let devices = held[group ..< group + reservation.copies].map(\.deviceIndex)
                if Set(devices).count != devices.count { problem("\(reservation): copies on one device \(devices)") }
                if !devices.allSatisfy({ allowed.contains(slot($0)) }) { problem("\(reservation): held outside the class's devices \(devices)") }
            }
            for extent in held { claim(extent, from: ModelDevice.free, to: ModelDevice.held, "reserve") }
            reservations.append(reservation)
        } catch {
            counts["reserve-enospc", default: 0] += 1
        }
    }

    func stepConsume() {
        guard let index = reservations.indices.randomElement(using: &random) else { return }
        let reservation = reservations[index]
        let before = allocator.heldExtents(of: reservation)
        let length = random.next(below: 3) == 0 ? reservation.lengthBytes
            : 4096 * UInt64(1 + random.next(below: Int(reservation.lengthBytes / 4096)))
        let copies = allocator.allocate(from: reservation, lengthBytes: length)
        counts["consume", default: 0] += 1
        let group = Array(before.suffix(reservation.copies))
        if copies.count != reservation.copies { problem("consumed \(copies.count) copies of \(reservation)") }
        for (extent, heldExtent) in zip(copies, group) {
            if extent.deviceIndex != heldExtent.deviceIndex || extent.offsetBytes != heldExtent.offsetBytes || extent.lengthBytes != length {
                problem("consumed \(extent), held was \(heldExtent) (length \(length))")
            }
            claim(heldExtent, from: ModelDevice.held, to: ModelDevice.free, "consume")
            claim(extent, from: ModelDevice.free, to: ModelDevice.used, "consume")
        }
        live.append(copies)
        if allocator.remainingExtents(in: reservation) == 0 {
            allocator.release(reservation)
            reservations.remove(at: index)
        }
    }

    func stepRelease() {
        guard !reservations.isEmpty else { return }
        let reservation = reservations.remove(at: random.next(below: reservations.count))
        for extent in allocator.heldExtents(of: reservation) { claim(extent, from: ModelDevice.held, to: ModelDevice.free, "release") }
        allocator.release(reservation)
        counts["release", default: 0] += 1
    }

    func stepCheckpoint() {
        if let checkpoint = inFlightCheckpoint {
            allocator.checkpointDurable(checkpoint)
            inFlightCheckpoint = nil
            counts["durable", default: 0] += 1
            for entry in deferred where entry.checkpoint <= checkpoint - 1 {
                claim(entry.extent, from: ModelDevice.deferred, to: ModelDevice.free, "durable(\(checkpoint))")
            }
            deferred.removeAll { $0.checkpoint <= checkpoint - 1 }
            return
        }
        let cut = allocator.beginCheckpoint()
        counts["cut", default: 0] += 1
        inFlightCheckpoint = cut.checkpoint
        for blocks in cut.spaceMaps {
            let device = slot(blocks.deviceIndex)
            for (position, block) in blocks.blockIndices.enumerated() {
                model[device].disk.replaceSubrange(block * 4096 ..< block * 4096 + 4096, with: blocks.block(at: position))
            }
        }
        for device in model.indices {
            let disk = model[device].disk
            for index in 0 ..< disk.count / 8 {
                let onDisk = disk.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) }
                let expected = index < model[device].words.count ? model[device].durableWord(index) : ~0
                if onDisk != expected {
                    problem("cut \(cut.checkpoint): \(model[device].device.path) bitmap word \(index) on disk \(String(onDisk, radix: 16)), durable view \(String(expected, radix: 16))")
                    break
                }
            }
        }
    }

    func stepPolicy() {
        var next = policy
        next.smallBlockCutoffBytes = [0, 16 << 10, 64 << 10][random.next(below: 3)]
        next.spillThresholdPercent = [50, 70, 90][random.next(below: 3)]
        next.metadataReservePercent = [0, 25, 50][random.next(below: 3)]
        policy = next
        allocator.policy = next
    }

    func runStep() {
        step += 1
        switch random.next(below: 100) {
        case 0..<38: stepAllocate()
        case 38..<66: stepFree()
        case 66..<74: stepReserve()
        case 74..<82: stepConsume()
        case 82..<86: stepRelease()
        case 86..<98: stepCheckpoint()
        default: stepPolicy()
        }
    }

    // MARK: Invariants

    /// Compares the allocator with the model; returns the problems found (also kept).
    @discardableResult
    func problems() -> [String] {
        let statistics = allocator.statistics()
        var modelDeferredUnits = 0
        for (device, modelDevice) in model.enumerated() {
            let modelWords = modelDevice.words
            let histogram = modelDevice.histogram
            modelDeferredUnits += histogram[2]
            let mismatch: Int? = allocator.withSpaceMap(deviceIndex: modelDevice.device.index) { map -> Int? in
                map.checkConsistency()
                for word in modelWords.indices where map.liveWord(word) != modelWords[word] {
                    return word * 64 + (map.liveWord(word) ^ modelWords[word]).trailingZeroBitCount
                }
                return nil
            }
            if let unit = mismatch {
                problem("\(modelDevice.device.path): unit \(unit) allocator bit differs from model state \(modelDevice.units[unit])")
            }
            let space = statistics.devices[device]
            let expected = (free: histogram[0], used: histogram[1], held: histogram[3], deferred: histogram[2])
            if space.freeBytes != UInt64(expected.free) * 4096 || space.usedBytes != UInt64(expected.used) * 4096
                || space.reservedBytes != UInt64(expected.held) * 4096 || space.deferredBytes != UInt64(expected.deferred) * 4096 {
                problem("\(modelDevice.device.path): statistics free/used/reserved/deferred \(space.freeBytes)/\(space.usedBytes)/\(space.reservedBytes)/\(space.deferredBytes), model \(expected) units")
            }
        }
        if allocator.hasDeferredFrees != (modelDeferredUnits > 0) {
            problem("hasDeferredFrees is \(allocator.hasDeferredFrees), the model has \(modelDeferredUnits) deferred units")
        }
        return problemList
    }
}

/// splitmix64: small, seedable, deterministic across platforms.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func next(below bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

enum Pools {
    static let labelBytes: UInt64 = 256 << 10

    static func device(_ index: Int, _ role: DeviceRole, mebibytes: UInt64) -> AllocatorDevice {
        let size = mebibytes << 20
        // Labels front and back, and a space-map area in the middle to exercise an interior range.
        return AllocatorDevice(index: index, path: "/dev/test\(index)-\(role.name)", role: role, sizeBytes: size,
                               reservedRanges: [0 ..< labelBytes, size - labelBytes ..< size, (3 << 20) ..< (3 << 20) + (48 << 10)])
    }

    /// metadata ×2, data ×2, spill, log; metadata mirrored.
    static var mixed: ([AllocatorDevice], PoolPolicy) {
        var policy = PoolPolicy()
        policy.setCopies(2, for: .metadata)
        policy.smallBlockCutoffBytes = 16 << 10
        policy.spillThresholdPercent = 70
        return ([device(0, .metadata, mebibytes: 8), device(1, .metadata, mebibytes: 12), device(2, .data, mebibytes: 24),
                 device(3, .data, mebibytes: 16), device(4, .spill, mebibytes: 24), device(5, .log, mebibytes: 6),
                 device(6, .cache, mebibytes: 8)], policy)
    }

    static var oneDevice: ([AllocatorDevice], PoolPolicy) { ([device(0, .data, mebibytes: 24)], PoolPolicy()) }

    /// Three data devices, data mirrored, no metadata device.
    static var mirroredData: ([AllocatorDevice], PoolPolicy) {
        var policy = PoolPolicy()
        policy.setCopies(2, for: .data)
        policy.setCopies(3, for: .metadata)
        return ([device(0, .data, mebibytes: 12), device(1, .data, mebibytes: 16), device(2, .data, mebibytes: 10)], policy)
    }
}

@Suite struct AllocatorConformanceTests {
    static let stepCount = 3000

    func run(_ pool: ([AllocatorDevice], PoolPolicy), seeds: [UInt64]) {
        for seed in seeds {
            let harness = Harness(seed: seed, devices: pool.0, policy: pool.1)
            for _ in 0 ..< AllocatorConformanceTests.stepCount {
                harness.runStep()
                let problems = harness.problems()
                if !problems.isEmpty {
                    Issue.record("\(problems.count) problem(s); first: \(problems[0]) (replay: seed \(seed))")
                    return
                }
            }
            // The workload must have exercised every kind of step, including running out of space.
            for kind in ["allocate", "free", "reserve", "consume", "cut", "durable", "enospc"] where harness.counts[kind, default: 0] == 0 {
                Issue.record("seed \(seed): no '\(kind)' step happened in \(AllocatorConformanceTests.stepCount) steps: \(harness.counts)")
            }
        }
    }

    @Test func mixedPool() { run(Pools.mixed, seeds: [1, 2, 0xC0FFEE]) }
    @Test func oneDevicePool() { run(Pools.oneDevice, seeds: [3, 4]) }
    @Test func mirroredDataPool() { run(Pools.mirroredData, seeds: [5, 6]) }

    /// The checker must catch a broken invariant: a model that forgets an allocation.
    @Test func checkerCatchesAnUnrecordedAllocation() throws {
        let harness = Harness(seed: 9, devices: Pools.mixed.0, policy: Pools.mixed.1)
        for _ in 0 ..< 50 { harness.runStep() }
        #expect(harness.problems().isEmpty)
        _ = try harness.allocator.allocate(.data, lengthBytes: 1 << 20)   // not told to the model
        let problems = harness.problems()
        #expect(!problems.isEmpty)
        #expect(problems.allSatisfy { $0.hasPrefix("seed 9 step 50:") })
    }

    /// And one that reuses a deferred free too early.
    @Test func checkerCatchesAnEarlyReuse() throws {
        let harness = Harness(seed: 10, devices: Pools.oneDevice.0, policy: Pools.oneDevice.1)
        let copies = try harness.allocator.allocate(.data, lengthBytes: 1 << 20)
        for unit in Int(copies[0].offsetBytes / 4096) ..< Int(copies[0].endBytes / 4096) { harness.model[0].set(unit, ModelDevice.used) }
        harness.live.append(copies)
        harness.stepFree()
        #expect(harness.problems().isEmpty)
        // Pretend the free is already allocatable in the model: the bitmaps now disagree.
        for unit in Int(copies[0].offsetBytes / 4096) ..< Int(copies[0].endBytes / 4096) { harness.model[0].set(unit, ModelDevice.free) }
        #expect(!harness.problems().isEmpty)
    }
}
