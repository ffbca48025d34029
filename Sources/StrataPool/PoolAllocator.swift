// PoolAllocator — class-aware allocation over the devices of a pool, with reservations, copies
// and checkpoint-deferred frees.
//
// Devices and routing
// -------------------
// One `SpaceMap` per device (see SpaceMap.swift for the index and its on-disk bitmap). Each
// allocation class is routed to an ordered list of candidate devices in tiers; inside a tier,
// devices with more free space come first (ties: lower device index), which balances fill:
//   metadata   metadata devices → data devices (when absent or full)
//   smallData  metadata devices whose fill is below 100 − metadataReservePercent → the data tiers
//   data       data devices → spill devices; once the data devices together are at or past
//              spillThresholdPercent full: spill devices → data devices. A data request of at most
//              policy.smallBlockCutoffBytes (when > 0) is routed as smallData.
//   log        log devices → metadata devices → data devices
// Cache devices get a map (for later work) but no class lands on them. "Fill" counts everything
// not allocatable: used, reserved and deferred space.
// A one-device pool needs no flag: when the pool has exactly one non-cache device, that device is
// the sole candidate of every class, whatever role its label records (the pool layer records
// `.data`). Multi-device pools without a metadata or log device reach the same devices through
// the fallbacks above.
//
// Copies. `copies = policy.copies(for: PoolPolicy.governingRole(of: class))` extents are taken on
// that many distinct devices: the candidates are walked in order and each device either fits the
// request or is skipped; when fewer than `copies` fit, everything taken is returned at once (never
// referenced) and ENOSPC is thrown naming every candidate. So a copy falls back to the next tier
// only for the copies the earlier tiers cannot hold (metadata copies=2 with one metadata device:
// one copy there, one on a data device).
//
// Reservations
// ------------
// `reserve` allocates the space itself at declare time ("held" space): extentCount groups of
// `copies` extents of lengthBytes on distinct devices, routed exactly like an allocation. A later
// `allocate(from:lengthBytes:)` hands out one group (trimming it to a shorter length returns the
// tail at once), `release` returns what was not consumed. Holding concrete extents, rather than
// counting bytes, is what makes the guarantee hold under fragmentation and copies: a byte count
// cannot promise that a 1 MiB aligned region, or N distinct devices with room, will still exist
// when the transaction executes, and other (unreserved) allocations simply cannot see held space,
// so they fail with ENOSPC instead of eating into it. Held space is encoded as free in the space
// maps (it is referenced by nothing durable), counted as `reserved` in the statistics.
//
// Deferred frees and checkpoints (the API the transaction layer drives)
// ---------------------------------------------------------------------
//   openCheckpoint            N: frees go to N's deferred list (not allocatable).
//   beginCheckpoint() → cut   closes N (later frees go to N+1) and, atomically under the lock,
//                             returns N with the encoded dirty bitmap blocks of every device: the
//                             durable view at the cut (allocated minus pending frees minus held).
//                             Write them, then the uberblock of N. Traps when the previous
//                             checkpoint is not durable yet (one checkpoint in flight, as a txg).
//   checkpointDurable(N)      N's uberblock is durable: the frees of N−1 become allocatable. Traps
//                             unless N is the checkpoint last begun and follows the last durable.
//                             For discards, in two halves: checkpointDurableHoldingFrees(N), then
//                             releaseHeldFrees(of: N) hands them to a callback first.
// So space freed in checkpoint N is allocatable only once N+1 is durable (DESIGN.md). On import,
// construct with `openCheckpoint: lastDurable + 1`, load every bitmap block, then replay the log
// (`markAllocated` for extents its records allocated).
//
// Concurrency: one `Mutex` around all state. An allocate+free is two short critical sections; the
// path allocates nothing (scratch arrays keep their capacity, `ExtentCopies` is inline storage).
// Reservations, checkpoint cuts and statistics allocate (not per I/O).

import Synchronization

/// One device as the allocator sees it. `index` is the device's position in the pool's device
/// list (the `Extent.deviceIndex`); `reservedRanges` are byte ranges never allocated (labels,
/// space-map copies; see DeviceLayout).
public struct AllocatorDevice: Sendable, Hashable, Codable {
    public var index: Int
    public var path: String
    public var role: DeviceRole
    public var sizeBytes: UInt64
    public var reservedRanges: [Range<UInt64>]

    public init(index: Int, path: String, role: DeviceRole, sizeBytes: UInt64, reservedRanges: [Range<UInt64>] = []) {
        self.index = index
        self.path = path
        self.role = role
        self.sizeBytes = sizeBytes
        self.reservedRanges = reservedRanges
    }
}

/// The extents of one allocation: one per copy, on distinct devices, inline (no heap).
public struct ExtentCopies: RandomAccessCollection, Sendable, Hashable, CustomStringConvertible {
    public static let capacity = PoolPolicy.copiesMax
    private var storage: (Extent, Extent, Extent, Extent)
    public private(set) var count: Int

    init() {
        let empty = Extent(deviceIndex: -1, offsetBytes: 0, lengthBytes: 0)
        storage = (empty, empty, empty, empty)
        count = 0
    }

    public init(_ extents: [Extent]) {
        self.init()
        for extent in extents { append(extent) }
    }

    mutating func append(_ extent: Extent) {
        precondition(count < ExtentCopies.capacity, "more than \(ExtentCopies.capacity) copies")
        switch count {
        case 0: storage.0 = extent
        case 1: storage.1 = extent
        case 2: storage.2 = extent
        default: storage.3 = extent
        }
        count += 1
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    public subscript(position: Int) -> Extent {
        precondition(position >= 0 && position < count, "copy \(position) of \(count)")
        switch position {
        case 0: return storage.0
        case 1: return storage.1
        case 2: return storage.2
        default: return storage.3
        }
    }

    public static func == (a: ExtentCopies, b: ExtentCopies) -> Bool { a.elementsEqual(b) }
    public func hash(into hasher: inout Hasher) { for extent in self { hasher.combine(extent) } }
    public var description: String { "[" + map(\.description).joined(separator: ", ") + "]" }
}

/// Space held at declare time; consume with `allocate(from:lengthBytes:)`, return the rest with
/// `release(_:)`. A value handle: the allocator keeps the state.
public struct Reservation: Sendable, Hashable, CustomStringConvertible {
    public let id: UInt64
    /// The class the space was routed as (a small data request reserves as `.smallData`).
    public let allocationClass: AllocationClass
    public let extentCount: Int
    /// The longest allocation each extent serves.
    public let lengthBytes: UInt64
    public let copies: Int

    public var description: String { "reservation \(id): \(extentCount) × \(copies) × \(lengthBytes) bytes of \(allocationClass.name)" }
}

/// The encoded dirty bitmap blocks of one device at a checkpoint cut.
public struct SpaceMapBlocks: Sendable, Equatable {
    public let deviceIndex: Int
    /// Ascending bitmap block indices.
    public let blockIndices: [Int]
    /// `blockIndices.count` blocks of `SpaceMap.bitmapBlockBytes`, in the same order.
    public let bytes: [UInt8]

    public func block(at position: Int) -> ArraySlice<UInt8> {
        let size = SpaceMap.bitmapBlockBytes
        return bytes[position * size ..< (position + 1) * size]
    }
}

/// What `beginCheckpoint` returns: the closed checkpoint and its space-map blocks to write.
public struct CheckpointCut: Sendable, Equatable {
    public let checkpoint: UInt64
    /// Devices with dirty blocks only.
    public let spaceMaps: [SpaceMapBlocks]
}

public final class PoolAllocator: Sendable {
    struct HeldCopy {
        var deviceSlot: Int
        var heldSlot: Int
    }

    struct ReservationRecord {
        var copies: Int
        var lengthBytes: UInt64
        var remaining: Int
        /// Groups of `copies` entries, consumed from the end.
        var held: [HeldCopy]
    }

    struct Placement {
        var deviceSlot: Int
        var offsetBytes: UInt64
        var heldSlot: Int
    }

    struct State {
        var devices: [AllocatorDevice]
        var maps: [SpaceMap]
        var slotByIndex: [Int]
        var policy: PoolPolicy
        var openCheckpoint: UInt64
        var lastClosedCheckpoint: UInt64
        var lastDurableCheckpoint: UInt64
        var reservations: [UInt64: ReservationRecord] = [:]
        var nextReservationID: UInt64 = 1
        /// The only non-cache device of a one-device pool.
        var soleDeviceSlot: Int?
        /// Per device, the blocks dirty at the previous cut (nil: unknown, before the first cut).
        var previousCutDirty: [[Int]?]
        // Scratch, capacity kept (no allocation per request).
        var candidates: [Int] = []
        var placements: [Placement] = []
        /// Crash tests' planted bug only (`observeFreesForTesting`).
        var freeObserver: (@Sendable (Extent) -> Void)?
        /// The checkpoint whose predecessor's frees are held for discarding (from
        /// `checkpointDurableHoldingFrees` to `releaseHeldFrees`): no cut and no other checkpoint
        /// may become durable meanwhile.
        var discardingFor: UInt64?
    }

    public let devices: [AllocatorDevice]
    let state: Mutex<State>

    /// - Parameters:
    ///   - devices: every pool device (cache devices included); indices unique and ≥ 0.
    ///   - policy: must be valid (`validationProblems()` empty).
    ///   - openCheckpoint: the checkpoint frees go to first; on import, the last durable + 1.
    public init(devices: [AllocatorDevice], policy: PoolPolicy, openCheckpoint: UInt64 = 1) {
        precondition(!devices.isEmpty, "an allocator needs at least one device")
        precondition(openCheckpoint >= 1, "checkpoints start at 1")
        precondition(policy.validationProblems().isEmpty, "invalid policy: \(policy.validationProblems())")
        let maxIndex = devices.map(\.index).max()!
        var slotByIndex = [Int](repeating: -1, count: maxIndex + 1)
        for (slot, device) in devices.enumerated() {
            precondition(device.index >= 0 && slotByIndex[device.index] == -1, "device index \(device.index) negative or listed twice")
            slotByIndex[device.index] = slot
        }
        self.devices = devices
        let maps = devices.map { SpaceMap(sizeBytes: $0.sizeBytes, reservedRanges: $0.reservedRanges, path: $0.path) }
        let allocatable = devices.indices.filter { devices[$0].role != .cache }
        var initial = State(devices: devices, maps: maps, slotByIndex: slotByIndex, policy: policy,
                            openCheckpoint: openCheckpoint, lastClosedCheckpoint: openCheckpoint - 1,
                            lastDurableCheckpoint: openCheckpoint - 1,
                            previousCutDirty: [[Int]?](repeating: nil, count: devices.count))
        initial.soleDeviceSlot = allocatable.count == 1 ? allocatable[0] : nil
        initial.candidates.reserveCapacity(devices.count)
        initial.placements.reserveCapacity(ExtentCopies.capacity)
        initial.reservations.reserveCapacity(256)
        state = Mutex(initial)
    }

    // MARK: Policy and checkpoints

    /// The policy in force; setting it takes effect for the next request.
    public var policy: PoolPolicy {
        get { state.withLock { $0.policy } }
        set {
            precondition(newValue.validationProblems().isEmpty, "invalid policy: \(newValue.validationProblems())")
            state.withLock { $0.policy = newValue }
        }
    }

    /// The checkpoint that frees go to now.
    public var openCheckpoint: UInt64 { state.withLock { $0.openCheckpoint } }
    public var lastDurableCheckpoint: UInt64 { state.withLock { $0.lastDurableCheckpoint } }

    /// Closes the open checkpoint N (later frees go to N+1) and returns N with every device's dirty
    /// bitmap blocks encoded at this instant. Traps when the previous checkpoint is not durable.
    ///
    /// - Parameter spaceMapCopies: how many alternating on-disk copies the caller keeps (1 or 2).
    ///   With 2 (DeviceLayout's A/B copies: checkpoint N rewrites the copy N−2 wrote), a block is
    ///   returned when it was dirty at this cut or the previous one, and the first cut after init
    ///   (create or import) returns every block, since the other copy's age is unknown.
    public func beginCheckpoint(spaceMapCopies: Int = 1) -> CheckpointCut {
        precondition(spaceMapCopies == 1 || spaceMapCopies == 2, "spaceMapCopies \(spaceMapCopies)")
        return state.withLock { state in
            var previousCutDirty = state.previousCutDirty
            let blockCounts = state.maps.map(\.bitmapBlockCount)
            let slotByIndex = state.slotByIndex
            let cut = state.cut { deviceIndex, dirty in
                let slot = slotByIndex[deviceIndex]
                defer { previousCutDirty[slot] = dirty }
                guard spaceMapCopies == 2 else { return dirty }
                guard let previous = previousCutDirty[slot] else { return Array(0 ..< blockCounts[slot]) }
                return Array(Set(dirty).union(previous)).sorted()
            }
            state.previousCutDirty = previousCutDirty
            return cut
        }
    }

    /// `beginCheckpoint` with the caller choosing which bitmap blocks of each device to encode, in
    /// the same critical section: `select(deviceIndex, dirty)` gets the blocks changed since the
    /// last cut and returns the blocks to encode (ascending, a superset of `dirty`). The pool uses
    /// it to encode, as of this cut, every block its space-map copy lags behind on.
    public func beginCheckpoint(selecting select: (_ deviceIndex: Int, _ dirty: [Int]) -> [Int]) -> CheckpointCut {
        // The selector runs synchronously under the lock, on this thread; it never escapes.
        struct Selector: @unchecked Sendable { let body: (Int, [Int]) -> [Int] }
        return withoutActuallyEscaping(select) { select in
            let selector = Selector(body: select)
            return state.withLock { state in state.cut(selector.body) }
        }
    }

    /// Checkpoint `checkpoint` is durable: the frees of the checkpoint before it become allocatable.
    public func checkpointDurable(_ checkpoint: UInt64) {
        state.withLock { state in
            Self.markDurable(&state, checkpoint)
            for map in state.maps { map.releaseDeferred(throughCheckpoint: checkpoint - 1) }
        }
    }

    /// `checkpointDurable` for discards, first half: `checkpoint` is durable, and the frees it
    /// would release stay unallocatable until `releaseHeldFrees(of:…)`. No cut and no other
    /// `checkpointDurable` may happen in between (they trap): the pool finishes held frees before
    /// it cuts.
    public func checkpointDurableHoldingFrees(_ checkpoint: UInt64) {
        state.withLock { state in
            Self.markDurable(&state, checkpoint)
            state.discardingFor = checkpoint
        }
    }

    /// The second half: hands the held frees to `discard`, per device (its
    /// `AllocatorDevice.index`; byte ranges ascending, adjacent frees merged; devices in
    /// `skipping` left out), outside the lock, then makes them allocatable. The space is
    /// referenced by no durable checkpoint the pool may still import (the same reason it may be
    /// reused), and nothing can be allocated in it until `discard` has returned for every
    /// device; allocations and frees go on meanwhile.
    public func releaseHeldFrees(of checkpoint: UInt64, skipping: Set<Int> = [],
                                 discarding discard: (_ deviceIndex: Int, _ ranges: [Range<UInt64>]) -> Void) {
        let pending = state.withLock { state -> [(index: Int, path: String, runs: [UnitRun])] in
            precondition(state.discardingFor == checkpoint, "releaseHeldFrees(of: \(checkpoint)) but the held frees are \(state.discardingFor.map(String.init) ?? "none")'s")
            return state.maps.indices.compactMap { slot in
                let device = state.devices[slot]
                guard !skipping.contains(device.index) else { return nil }
                return (device.index, device.path, state.maps[slot].pendingFreeRuns(throughCheckpoint: checkpoint - 1))
            }
        }
        for device in pending where !device.runs.isEmpty {
            discard(device.index, SpaceMap.mergedByteRanges(device.runs, path: device.path))
        }
        state.withLock { state in
            precondition(state.discardingFor == checkpoint && state.lastDurableCheckpoint == checkpoint,
                         "checkpoint \(state.lastDurableCheckpoint) became durable while \(checkpoint)'s frees were being discarded")
            state.discardingFor = nil
            for map in state.maps { map.releaseDeferred(throughCheckpoint: checkpoint - 1) }
        }
    }

    /// The checkpoint whose frees are held for discarding (`checkpointDurableHoldingFrees`), if any.
    public var checkpointWithHeldFrees: UInt64? { state.withLock { $0.discardingFor } }

    private static func markDurable(_ state: inout State, _ checkpoint: UInt64) {
        precondition(checkpoint == state.lastClosedCheckpoint && checkpoint == state.lastDurableCheckpoint + 1,
                     "checkpointDurable(\(checkpoint)) out of order: last begun \(state.lastClosedCheckpoint), last durable \(state.lastDurableCheckpoint)")
        precondition(state.discardingFor == nil, "checkpointDurable(\(checkpoint)) while checkpoint \(state.discardingFor!)'s released frees are being discarded")
        state.lastDurableCheckpoint = checkpoint
    }

    // MARK: Allocation

    /// Allocates `lengthBytes` (a positive multiple of 4 KiB) in a class, on `copies` distinct
    /// devices; throws `.noSpace` having allocated nothing.
    public func allocate(_ allocationClass: AllocationClass, lengthBytes: UInt64) throws(AllocationError) -> ExtentCopies {
        try state.withLock { state throws(AllocationError) -> ExtentCopies in
            let effective = state.route(allocationClass, lengthBytes: lengthBytes)
            let copies = state.policy.copies(for: PoolPolicy.governingRole(of: effective))
            guard state.place(lengthBytes: lengthBytes, copies: copies, hold: false) else {
                throw state.noSpaceError(effective, lengthBytes: lengthBytes, copies: copies)
            }
            var result = ExtentCopies()
            for placement in state.placements {
                result.append(Extent(deviceIndex: state.devices[placement.deviceSlot].index, offsetBytes: placement.offsetBytes, lengthBytes: lengthBytes))
            }
            assert(result.count == copies, "placed \(result.count) of \(copies) copies")
            return result
        }
    }

    /// Holds `extentCount` allocations of up to `lengthBytes` each (with the class's copies) so that
    /// `allocate(from:lengthBytes:)` cannot fail. Throws `.noSpace` holding nothing.
    public func reserve(_ allocationClass: AllocationClass, extentCount: Int, lengthBytes: UInt64) throws(AllocationError) -> Reservation {
        precondition(extentCount > 0, "reservation of \(extentCount) extents")
        return try state.withLock { state throws(AllocationError) -> Reservation in
            var effective = allocationClass
            var copies = 1
            var record = ReservationRecord(copies: 0, lengthBytes: lengthBytes, remaining: extentCount, held: [])
            record.held.reserveCapacity(extentCount * ExtentCopies.capacity)
            for _ in 0..<extentCount {
                effective = state.route(allocationClass, lengthBytes: lengthBytes)
                copies = state.policy.copies(for: PoolPolicy.governingRole(of: effective))
                guard state.place(lengthBytes: lengthBytes, copies: copies, hold: true) else {
                    let error = state.noSpaceError(effective, lengthBytes: lengthBytes, copies: copies)
                    for copy in record.held { state.maps[copy.deviceSlot].releaseHeld(slot: copy.heldSlot) }
                    throw error
                }
                precondition(record.copies == 0 || record.copies == copies, "copies changed inside one reservation")
                record.copies = copies
                for placement in state.placements { record.held.append(HeldCopy(deviceSlot: placement.deviceSlot, heldSlot: placement.heldSlot)) }
            }
            let id = state.nextReservationID
            state.nextReservationID += 1
            state.reservations[id] = record
            return Reservation(id: id, allocationClass: effective, extentCount: extentCount, lengthBytes: lengthBytes, copies: copies)
        }
    }

    /// Takes one extent group of a reservation, trimmed to `lengthBytes` (≤ the reserved length).
    /// Never fails; traps when the reservation is exhausted or released.
    public func allocate(from reservation: Reservation, lengthBytes: UInt64) -> ExtentCopies {
        state.withLock { state in
            precondition(lengthBytes > 0 && lengthBytes <= reservation.lengthBytes && lengthBytes % SpaceMap.unitBytes == 0,
                         "allocation of \(lengthBytes) bytes from \(reservation)")
            // Moved out and back so the held array stays uniquely referenced (no copy).
            guard var record = state.reservations.removeValue(forKey: reservation.id) else { preconditionFailure("\(reservation) was released") }
            precondition(record.remaining > 0, "\(reservation) exhausted")
            var result = ExtentCopies()
            let first = record.held.count - record.copies
            for copy in record.held[first...] {
                let offset = state.maps[copy.deviceSlot].consumeHeld(slot: copy.heldSlot, keepBytes: lengthBytes)
                result.append(Extent(deviceIndex: state.devices[copy.deviceSlot].index, offsetBytes: offset, lengthBytes: lengthBytes))
            }
            record.held.removeLast(record.copies)
            record.remaining -= 1
            state.reservations[reservation.id] = record
            return result
        }
    }

    /// Returns the unconsumed part of a reservation at once. Traps when already released.
    public func release(_ reservation: Reservation) {
        state.withLock { state in
            guard let record = state.reservations.removeValue(forKey: reservation.id) else {
                preconditionFailure("\(reservation) released twice")
            }
            precondition(record.held.count == record.remaining * record.copies, "\(reservation): held copies out of step")
            for copy in record.held { state.maps[copy.deviceSlot].releaseHeld(slot: copy.heldSlot) }
        }
    }

    /// Extent groups still available in a reservation (0 once released).
    public func remainingExtents(in reservation: Reservation) -> Int {
        state.withLock { $0.reservations[reservation.id]?.remaining ?? 0 }
    }

    // MARK: Frees and replay

    /// Frees an extent in the open checkpoint (deferred). Traps on a free of space that is not
    /// allocated, crosses a reserved range or (debug builds) is already freed.
    public func free(_ extent: Extent) { deferFrees(CollectionOfOne(extent)) }

    /// Frees many extents (deferred) in one trip through the allocator's lock: a checkpoint frees
    /// the old places of every page it maps.
    public func free(_ extents: [Extent]) {
        guard !extents.isEmpty else { return }
        deferFrees(extents)
    }

    /// Frees every copy of an allocation (deferred).
    public func free(_ copies: ExtentCopies) { deferFrees(copies) }

    /// The frees above, in one trip through the lock; the planted-bug observer (tests only)
    /// sees each extent after it.
    private func deferFrees<Extents: Sequence<Extent>>(_ extents: Extents) {
        let observer = state.withLock { state in
            for extent in extents {
                let slot = state.slot(of: extent.deviceIndex)
                state.maps[slot].deferFree(offsetBytes: extent.offsetBytes, lengthBytes: extent.lengthBytes, checkpoint: state.openCheckpoint)
            }
            return state.freeObserver
        }
        if let observer { for extent in extents { observer(extent) } }
    }

    /// Planted bug for the crash tests' failure proof: `observer` sees every extent as it is
    /// freed (outside the lock), before the freeing transaction or checkpoint is durable. The
    /// pool uses it to discard at free time (`Pool.discardAtFreeForTesting`). Never set outside tests.
    @_spi(CrashTesting) public func observeFreesForTesting(_ observer: (@Sendable (Extent) -> Void)?) {
        state.withLock { $0.freeObserver = observer }
    }

    /// Marks an extent allocated (log replay, load). Traps unless it is entirely free.
    public func markAllocated(_ extent: Extent) {
        state.withLock { state in
            let slot = state.slot(of: extent.deviceIndex)
            state.maps[slot].markAllocated(offsetBytes: extent.offsetBytes, lengthBytes: extent.lengthBytes)
        }
    }

    // MARK: Space-map serialisation

    public func spaceMapBlockCount(deviceIndex: Int) -> Int {
        state.withLock { $0.maps[$0.slot(of: deviceIndex)].bitmapBlockCount }
    }

    /// Loads one bitmap block on import (before any allocation or free).
    public func loadSpaceMapBlock(deviceIndex: Int, blockIndex: Int, from buffer: UnsafeRawBufferPointer) throws(AllocationError) {
        precondition(buffer.count >= SpaceMap.bitmapBlockBytes, "load buffer of \(buffer.count) bytes")
        let bytes = [UInt8](buffer.prefix(SpaceMap.bitmapBlockBytes))   // import only: a copy is fine
        try state.withLock { state throws(AllocationError) in
            let map = state.maps[state.slot(of: deviceIndex)]
            let result: Result<Void, AllocationError> = bytes.withUnsafeBytes { raw in
                do throws(AllocationError) { try map.loadBlock(blockIndex, from: raw); return .success(()) } catch { return .failure(error) }
            }
            try result.get()
        }
    }

    /// Encodes one bitmap block now (create, export, tests). Between cuts, prefer `beginCheckpoint`.
    public func encodeSpaceMapBlock(deviceIndex: Int, blockIndex: Int, into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= SpaceMap.bitmapBlockBytes, "encode buffer of \(buffer.count) bytes")
        let bytes = state.withLock { state -> [UInt8] in
            var bytes = [UInt8](repeating: 0, count: SpaceMap.bitmapBlockBytes)
            let map = state.maps[state.slot(of: deviceIndex)]
            bytes.withUnsafeMutableBytes { map.encodeBlock(blockIndex, into: $0) }
            return bytes
        }
        buffer.copyBytes(from: bytes)
    }

    // MARK: Test support (internal)

    /// The held extents of a reservation, in consumption order reversed (tests).
    func heldExtents(of reservation: Reservation) -> [Extent] {
        state.withLock { state in
            guard let record = state.reservations[reservation.id] else { return [] }
            return record.held.map { copy in
                state.maps[copy.deviceSlot].heldExtent(slot: copy.heldSlot, deviceIndex: state.devices[copy.deviceSlot].index)
            }
        }
    }

    /// Runs `body` with a device's map under the lock (tests).
    func withSpaceMap<Result: Sendable>(deviceIndex: Int, _ body: (SpaceMap) -> Result) -> Result {
        nonisolated(unsafe) let body = body
        return state.withLock { state in body(state.maps[state.slot(of: deviceIndex)]) }
    }
}

extension PoolAllocator.State {
    /// Closes the open checkpoint N and encodes, per device, the blocks `select` picks (see
    /// `beginCheckpoint(selecting:)`). Traps when the previous checkpoint is not durable yet.
    mutating func cut(_ select: (_ deviceIndex: Int, _ dirty: [Int]) -> [Int]) -> CheckpointCut {
        precondition(lastDurableCheckpoint == lastClosedCheckpoint,
                     "beginCheckpoint while checkpoint \(lastClosedCheckpoint) is not durable yet")
        precondition(discardingFor == nil, "beginCheckpoint while checkpoint \(discardingFor!)'s released frees are being discarded")
        let checkpoint = openCheckpoint
        lastClosedCheckpoint = checkpoint
        openCheckpoint = checkpoint + 1
        var spaceMaps: [SpaceMapBlocks] = []
        for (slot, map) in maps.enumerated() {
            let dirty = map.takeDirtyBlockIndices()
            let indices = select(devices[slot].index, dirty)
            assert(Set(dirty).isSubset(of: indices), "a cut must encode every dirty block")
            guard !indices.isEmpty else { continue }
            var bytes = [UInt8](repeating: 0, count: indices.count * SpaceMap.bitmapBlockBytes)
            bytes.withUnsafeMutableBytes { buffer in
                for (position, index) in indices.enumerated() {
                    let start = position * SpaceMap.bitmapBlockBytes
                    map.encodeBlock(index, into: UnsafeMutableRawBufferPointer(rebasing: buffer[start ..< start + SpaceMap.bitmapBlockBytes]))
                }
            }
            spaceMaps.append(SpaceMapBlocks(deviceIndex: devices[slot].index, blockIndices: indices, bytes: bytes))
        }
        return CheckpointCut(checkpoint: checkpoint, spaceMaps: spaceMaps)
    }

    func slot(of deviceIndex: Int) -> Int {
        precondition(deviceIndex >= 0 && deviceIndex < slotByIndex.count && slotByIndex[deviceIndex] >= 0,
                     "device index \(deviceIndex) is not in the pool")
        return slotByIndex[deviceIndex]
    }

    func fillAtLeast(percent: Int, slots: some Sequence<Int>) -> Bool {
        var capacity = 0, notFree = 0
        for slot in slots {
            capacity += maps[slot].capacityUnits
            notFree += maps[slot].capacityUnits - maps[slot].freeUnits
        }
        return capacity > 0 && notFree * 100 >= percent * capacity
    }

    /// Whether a metadata device may take small data (fill below 100 − metadata reserve).
    func acceptsSmallData(_ slot: Int) -> Bool {
        let map = maps[slot]
        let limit = 100 - Int(policy.metadataReservePercent)
        return (map.capacityUnits - map.freeUnits) * 100 < limit * map.capacityUnits
    }

    var dataPastSpillThreshold: Bool {
        fillAtLeast(percent: Int(policy.spillThresholdPercent), slots: devices.indices.lazy.filter { devices[$0].role == .data })
    }

    /// Fills `candidates` in routing order; returns the effective class.
    mutating func route(_ requested: AllocationClass, lengthBytes: UInt64) -> AllocationClass {
        var effective = requested
        if requested == .data, policy.smallBlockCutoffBytes > 0, lengthBytes <= policy.smallBlockCutoffBytes { effective = .smallData }
        candidates.removeAll(keepingCapacity: true)
        if let soleDeviceSlot {
            candidates.append(soleDeviceSlot)
            return effective
        }
        switch effective {
        case .metadata:
            addTier(.metadata)
            addTier(.data)
        case .smallData:
            addTier(.metadata, smallDataOnly: true)
            addDataTiers()
        case .data:
            addDataTiers()
        case .log:
            addTier(.log)
            addTier(.metadata)
            addTier(.data)
        }
        return effective
    }

    private mutating func addDataTiers() {
        if dataPastSpillThreshold {
            addTier(.spill)
            addTier(.data)
        } else {
            addTier(.data)
            addTier(.spill)
        }
    }

    /// Appends the devices of a role, most free first (insertion sort: tiers are small).
    private mutating func addTier(_ role: DeviceRole, smallDataOnly: Bool = false) {
        let tierStart = candidates.count
        for slot in devices.indices where devices[slot].role == role {
            if smallDataOnly && !acceptsSmallData(slot) { continue }
            var position = candidates.count
            candidates.append(slot)
            while position > tierStart, comesBefore(slot, candidates[position - 1]) {
                candidates[position] = candidates[position - 1]
                position -= 1
            }
            candidates[position] = slot
        }
    }

    private func comesBefore(_ a: Int, _ b: Int) -> Bool {
        let freeA = maps[a].freeUnits, freeB = maps[b].freeUnits
        return freeA != freeB ? freeA > freeB : devices[a].index < devices[b].index
    }

    /// Places `copies` extents on distinct candidates into `placements`; all or nothing.
    mutating func place(lengthBytes: UInt64, copies: Int, hold: Bool) -> Bool {
        placements.removeAll(keepingCapacity: true)
        for slot in candidates {
            if hold {
                if let held = maps[slot].hold(lengthBytes: lengthBytes) {
                    placements.append(PoolAllocator.Placement(deviceSlot: slot, offsetBytes: held.offsetBytes, heldSlot: held.slot))
                }
            } else if let offset = maps[slot].allocate(lengthBytes: lengthBytes) {
                placements.append(PoolAllocator.Placement(deviceSlot: slot, offsetBytes: offset, heldSlot: -1))
            }
            if placements.count == copies { return true }
        }
        for placement in placements {
            if hold {
                maps[placement.deviceSlot].releaseHeld(slot: placement.heldSlot)
            } else {
                maps[placement.deviceSlot].unallocate(offsetBytes: placement.offsetBytes, lengthBytes: lengthBytes)
            }
        }
        placements.removeAll(keepingCapacity: true)
        return false
    }

    func noSpaceError(_ allocationClass: AllocationClass, lengthBytes: UInt64, copies: Int) -> AllocationError {
        var summaries: [DeviceSpaceSummary] = []
        func summary(_ slot: Int, note: String?) -> DeviceSpaceSummary {
            let statistics = maps[slot].statistics()
            return DeviceSpaceSummary(deviceIndex: devices[slot].index, path: devices[slot].path, role: devices[slot].role,
                                      freeBytes: statistics.freeBytes, largestFreeExtentBytes: statistics.largestFreeExtentBytes, note: note)
        }
        if allocationClass == .smallData && soleDeviceSlot == nil {
            for slot in devices.indices where devices[slot].role == .metadata && !acceptsSmallData(slot) {
                summaries.append(summary(slot, note: "past the metadata reserve of \(policy.metadataReservePercent)%"))
            }
        }
        for slot in candidates { summaries.append(summary(slot, note: nil)) }
        if copies > candidates.count {
            summaries = summaries.map { var s = $0; s.note = (s.note.map { $0 + "; " } ?? "") + "copies=\(copies) needs \(copies) devices, the class has \(candidates.count)"; return s }
        }
        return .noSpace(allocationClass: allocationClass, lengthBytes: lengthBytes, copies: copies, devices: summaries)
    }
}

extension SpaceMap {
    func heldExtent(slot: Int, deviceIndex: Int) -> Extent {
        let run = heldRun(slot: slot)
        return Extent(deviceIndex: deviceIndex, offsetBytes: UInt64(run.start) * SpaceMap.unitBytes, lengthBytes: UInt64(run.count) * SpaceMap.unitBytes)
    }
}
