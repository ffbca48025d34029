// SpaceMap — the free space of one pool device, in 4 KiB units.
//
// What it stores
// --------------
// The persistent representation is a bitmap, one bit per 4 KiB unit (1 = not allocatable), cut
// into 4 KiB bitmap blocks of 32768 units (128 MiB of device each). A bitmap was chosen over an
// extent log (ZFS space maps) because the pool rewrites its maps at every checkpoint anyway
// (DeviceLayout keeps two copies): a bitmap block has a fixed place and size, a dirty block is
// rewritten whole, there is no condensing, and the footprint is bounded (32 MiB of disk per TiB)
// whatever the fragmentation. Encoding: bitmap byte b, bit k (LSB first) is unit 8·b + k; words
// are little-endian. Units past the device's end and reserved ranges (labels, the space-map area)
// are encoded as 1, so a block read alone describes its device truthfully.
//
// The durable view. `encodeBlock` writes allocated-minus-unreferenced: units in pending deferred
// frees (freed, not yet allocatable) and units held for reservations (allocated at declare time,
// not yet consumed) are encoded as *free*. Neither is referenced by the checkpoint being written,
// so after a crash they must come back free, else they leak. Consequently a deferred free, and the
// consumption of held space, mark their bitmap block dirty; holding and releasing held space does
// not (the encoded view does not change). `takeDirtyBlockIndices` returns and clears the set of
// blocks whose encoded view may have changed. Encode at a checkpoint cut (PoolAllocator does it
// under its lock in `beginCheckpoint`), when every pending free belongs to a closed checkpoint.
// After import the frees of the last checkpoint are free at once: the checkpoint before it is then
// no longer a safe fallback (documented limitation; ZFS persists its defer tree instead).
//
// In-memory index (the allocation engine)
// ---------------------------------------
// The live bitmap (bit = allocated, deferred, held, reserved or past the end) plus, per 1 MiB
// region (256 units), its free-unit count and its longest free run (UInt16 each). Regions with any
// free unit sit in exactly one of 9 buckets by longest run: bucket b < 8 holds runs in
// [2^b, 2^(b+1)), bucket 8 holds fully free regions. Each bucket is a 64-ary hierarchical bitmap
// over regions (levels: 2^20 regions → 16384 → 256 → 4 → 1 words), so "first region of bucket b"
// is one trailing-zero count per level: O(levels), independent of fill.
//   * A 1 MiB record takes the first fully free region (bucket 8). k MiB takes k consecutive fully
//     free regions (a scan of bucket 8; rare). Lengths over 1 MiB start on a region boundary;
//     an extent of at most 1 MiB never crosses one.
//   * n < 256 units: the smallest bucket that guarantees a run ≥ n (bucket ⌈log2 n⌉), then larger
//     buckets, and only then a fully free region. Small blocks thus fill partly used regions
//     (best fit by bucket) and keep whole regions for 1 MiB records. When n is not a power of two,
//     bucket ⌊log2 n⌋ is probed first (a few regions; exhaustively when nothing larger remains, so
//     an allocation fails only when no region has a fitting run — the conformance model relies on
//     this). Inside a region, first fit over 4 words.
// A change touches one region: set/clear bits, update the count, recompute the longest run (≤ 128
// runs of 4 words), move the region between buckets (O(levels)). No heap allocation on the path.
//
// Memory (bytes per TiB managed, 2^28 units, 2^20 regions): bitmap 32 MiB + free counts 2 MiB +
// longest runs 2 MiB + 9 buckets ≈ 1.2 MiB + dirty flags 8 KiB ≈ 37.2 MiB/TiB (bound: 64 MiB).
// `indexBytes` reports the exact figure; the pending-free and held run lists (16 bytes a run,
// bounded by a checkpoint's frees; `listBytes`) come on top and do not grow with the device.
//
// Invariants (checked by `checkConsistency` in tests, cheaper ones by preconditions):
//   freeUnits = Σ regionFree = number of 0 bits; a region is in bucket(longest) only; excluded
//   units are always 1; deferred and held runs are disjoint, allocated in the bitmap, and counted
//   in deferredUnits / heldUnits; used = capacity − free − deferred − held.
//
// Thread safety: none; PoolAllocator owns its maps behind a Mutex. Misuse (freeing free space,
// freeing across a reserved range, unaligned lengths) traps: those are programmer errors.

import StrataIO

/// A run of units: `start ..< start + count`.
struct UnitRun: Equatable, Sendable {
    var start: Int
    var count: Int
    var end: Int { start + count }
}

/// Unit-level figures of one space map (bytes are units × 4 KiB).
public struct SpaceMapStatistics: Equatable, Sendable, Codable {
    /// Allocatable bytes: the device minus reserved ranges and the tail past the last whole unit.
    public var capacityBytes: UInt64
    /// Allocated and consumed (referenced, or referenced once its transaction commits).
    public var usedBytes: UInt64
    /// Allocatable now.
    public var freeBytes: UInt64
    /// Held for reservations (allocated at declare time, not yet consumed).
    public var reservedBytes: UInt64
    /// Freed in a checkpoint whose successor is not durable yet: not allocatable.
    public var deferredBytes: UInt64
    /// Reserved ranges (labels, space-map area): never allocatable, not in capacity.
    public var excludedBytes: UInt64
    /// The longest extent an allocation can get now (k consecutive free 1 MiB regions, else the
    /// longest free run inside one region).
    public var largestFreeExtentBytes: UInt64
    public var fullyFreeRegionCount: Int
    /// Share of free space not in fully free 1 MiB regions (0 = all free space is whole regions,
    /// 1 = none is): how much of it cannot take a 1 MiB record. 0 when nothing is free.
    public var fragmentation: Double
}

public final class SpaceMap {
    public static let unitBytes: UInt64 = 4096
    public static let unitsPerRegion = 256
    public static let regionBytes: UInt64 = 1 << 20
    public static let bitmapBlockBytes = 4096
    public static let unitsPerBitmapBlock = 32768
    static let wordsPerRegion = 4
    static let wordsPerBitmapBlock = 512
    static let regionsPerBitmapBlock = 128
    static let fullyFreeBucket = 8
    /// Regions of bucket ⌊log2 n⌋ looked at before moving to buckets that surely fit.
    static let floorBucketProbeMax = 4
    /// Run-list capacity kept for reuse after a checkpoint's frees are released (64 K runs = 1 MiB):
    /// steady state reuses it; a bulk free's larger list is returned to the system.
    static let retainedRunCapacityMax = 65536

    public let sizeBytes: UInt64
    /// Device path, for messages only.
    public let path: String
    /// Units of the device (whole 4 KiB units below sizeBytes).
    let unitCount: Int
    let regionCount: Int
    public let bitmapBlockCount: Int
    /// Reserved ranges, in units, sorted and merged (rounded outwards to whole units).
    let excludedRuns: [UnitRun]
    let excludedUnits: Int
    public let capacityUnits: Int

    // Live state.
    private let words: UnsafeMutablePointer<UInt64>
    private let regionFree: UnsafeMutablePointer<UInt16>
    private let regionLongest: UnsafeMutablePointer<UInt16>
    private var buckets: RegionBuckets
    private let dirty: UnsafeMutablePointer<Bool>
    private(set) var freeUnits = 0
    private(set) var deferredUnits = 0
    private(set) var heldUnits = 0
    /// True until the first change other than `loadBlock`: loading is only allowed before.
    private(set) var loadable = true

    // Deferred frees, oldest checkpoint first; spare arrays are reused (no growth in steady state).
    private var deferred: [(checkpoint: UInt64, runs: [UnitRun])] = []
    private var spareRunArrays: [[UnitRun]] = []
    // Held (reservation) runs in slots; a freed slot is reused.
    private var held: [UnitRun] = []
    private var freeHeldSlots: [Int] = []
    // Sorted deferred ∪ held runs for encoding; rebuilt lazily after a change.
    private var encodingRuns: [UnitRun] = []
    private var encodingRunsValid = false

    /// - Parameters:
    ///   - sizeBytes: the managed size (units past the last whole 4 KiB are never allocated).
    ///   - reservedRanges: byte ranges never allocatable (labels, space-map area); rounded out to
    ///     whole units; may overlap each other; must lie within sizeBytes.
    public init(sizeBytes: UInt64, reservedRanges: [Range<UInt64>] = [], path: String = "") {
        precondition(sizeBytes >= SpaceMap.unitBytes, "\(path): device of \(sizeBytes) bytes is smaller than one unit")
        self.sizeBytes = sizeBytes
        self.path = path
        unitCount = Int(sizeBytes / SpaceMap.unitBytes)
        regionCount = (unitCount + SpaceMap.unitsPerRegion - 1) / SpaceMap.unitsPerRegion
        bitmapBlockCount = (regionCount + SpaceMap.regionsPerBitmapBlock - 1) / SpaceMap.regionsPerBitmapBlock

        var runs: [UnitRun] = []
        for range in reservedRanges.sorted(by: { $0.lowerBound < $1.lowerBound }) where !range.isEmpty {
            precondition(range.upperBound <= sizeBytes, "\(path): reserved range \(range) beyond the device size \(sizeBytes)")
            let start = Int(range.lowerBound / SpaceMap.unitBytes)
            let end = min(unitCount, Int((range.upperBound + SpaceMap.unitBytes - 1) / SpaceMap.unitBytes))
            guard end > start else { continue }
            if let last = runs.last, start <= last.end {
                runs[runs.count - 1].count = max(last.end, end) - last.start
            } else {
                runs.append(UnitRun(start: start, count: end - start))
            }
        }
        excludedRuns = runs
        excludedUnits = runs.reduce(0) { $0 + $1.count }
        capacityUnits = unitCount - excludedUnits

        let wordCount = bitmapBlockCount * SpaceMap.wordsPerBitmapBlock
        words = .allocate(capacity: wordCount)
        words.initialize(repeating: ~0, count: wordCount)          // past the end: 1
        words.update(repeating: 0, count: unitCount / 64)
        if unitCount % 64 != 0 { words[unitCount / 64] = ~0 << UInt64(unitCount % 64) }
        regionFree = .allocate(capacity: regionCount)
        regionFree.initialize(repeating: 0, count: regionCount)
        regionLongest = .allocate(capacity: regionCount)
        regionLongest.initialize(repeating: 0, count: regionCount)
        buckets = RegionBuckets(regionCount: regionCount)
        dirty = .allocate(capacity: bitmapBlockCount)
        dirty.initialize(repeating: true, count: bitmapBlockCount)  // a fresh map is written whole

        for run in runs { setBits(run.start, run.count, to: true) }
        for region in 0..<regionCount { refreshRegion(region, previousFree: 0) }
        precondition(freeUnits == capacityUnits, "\(path): free \(freeUnits) != capacity \(capacityUnits) at init")
        held.reserveCapacity(64)
        freeHeldSlots.reserveCapacity(64)
        encodingRuns.reserveCapacity(256)
    }

    deinit {
        words.deallocate()
        regionFree.deallocate()
        regionLongest.deallocate()
        dirty.deallocate()
        buckets.deallocate()
    }

    // MARK: Allocation

    /// Allocates `lengthBytes` (a multiple of 4 KiB); nil when no place fits. Marks dirty.
    public func allocate(lengthBytes: UInt64) -> UInt64? {
        guard let start = findPlace(lengthBytes: lengthBytes) else { return nil }
        let count = Int(lengthBytes / SpaceMap.unitBytes)
        applyAllocation(start, count)
        markDirty(start, count)
        return UInt64(start) * SpaceMap.unitBytes
    }

    /// Whether `allocate(lengthBytes:)` would succeed now.
    public func canAllocate(lengthBytes: UInt64) -> Bool { findPlace(lengthBytes: lengthBytes) != nil }

    /// Marks a range allocated (load, log replay). The range must be free and inside the device.
    public func markAllocated(offsetBytes: UInt64, lengthBytes: UInt64) {
        let run = checkedRun(offsetBytes, lengthBytes, "markAllocated")
        precondition(rangeAll(run.start, run.count, set: false),
                     "\(path): markAllocated of \(offsetBytes)+\(lengthBytes): part of it is not free")
        applyAllocation(run.start, run.count)
        markDirty(run.start, run.count)
    }

    /// Returns never-referenced space at once (an allocation rolled back before anyone saw it).
    func unallocate(offsetBytes: UInt64, lengthBytes: UInt64) {
        let run = checkedRun(offsetBytes, lengthBytes, "unallocate")
        precondition(rangeAll(run.start, run.count, set: true),
                     "\(path): unallocate of \(offsetBytes)+\(lengthBytes): part of it is free")
        assert(!overlapsPending(run), "\(path): unallocate of \(offsetBytes)+\(lengthBytes) overlaps a deferred or held run")
        applyFree(run.start, run.count)
        markDirty(run.start, run.count)
    }

    // MARK: Deferred frees

    /// Frees an allocated range in `checkpoint`: it stays unallocatable until
    /// `releaseDeferred(throughCheckpoint:)` covers that checkpoint, and is encoded as free.
    /// Traps when part of it is free, reserved, outside the device, or (debug) already freed.
    public func deferFree(offsetBytes: UInt64, lengthBytes: UInt64, checkpoint: UInt64) {
        let run = checkedRun(offsetBytes, lengthBytes, "free")
        precondition(rangeAll(run.start, run.count, set: true),
                     "\(path): free of \(offsetBytes)+\(lengthBytes): part of it is not allocated (double free?)")
        assert(!overlapsPending(run), "\(path): free of \(offsetBytes)+\(lengthBytes): already freed or held (double free)")
        loadable = false
        if deferred.last?.checkpoint != checkpoint {
            precondition(deferred.last.map { $0.checkpoint < checkpoint } ?? true,
                         "\(path): free into checkpoint \(checkpoint) after checkpoint \(deferred.last!.checkpoint)")
            var runs = spareRunArrays.popLast() ?? []
            runs.reserveCapacity(1024)
            deferred.append((checkpoint, runs))
        }
        deferred[deferred.count - 1].runs.append(run)
        deferredUnits += run.count
        encodingRunsValid = false
        markDirty(run.start, run.count)
    }

    /// Makes the frees of every checkpoint ≤ `checkpoint` allocatable. Returns the units released.
    @discardableResult
    public func releaseDeferred(throughCheckpoint checkpoint: UInt64) -> Int {
        var released = 0
        while let first = deferred.first, first.checkpoint <= checkpoint {
            var runs = deferred.removeFirst().runs
            for run in runs {
                applyFree(run.start, run.count)
                released += run.count
            }
            if runs.capacity <= SpaceMap.retainedRunCapacityMax {
                runs.removeAll(keepingCapacity: true)
                spareRunArrays.append(runs)
            }
        }
        deferredUnits -= released
        precondition(deferredUnits >= 0, "\(path): deferred units went negative")
        if released > 0 { encodingRunsValid = false }
        return released
    }

    /// The runs `releaseDeferred(throughCheckpoint: checkpoint)` would make allocatable, copied
    /// (for discards: the caller sorts and merges them outside the allocator's lock with
    /// `mergedByteRanges`).
    func pendingFreeRuns(throughCheckpoint checkpoint: UInt64) -> [UnitRun] {
        var runs: [UnitRun] = []
        for entry in deferred where entry.checkpoint <= checkpoint { runs += entry.runs }
        return runs
    }

    /// `runs` as byte ranges, ascending, adjacent runs merged. Traps on overlapping runs.
    static func mergedByteRanges(_ runs: [UnitRun], path: String) -> [Range<UInt64>] {
        guard !runs.isEmpty else { return [] }
        let sorted = runs.sorted { $0.start < $1.start }
        var ranges: [Range<UInt64>] = []
        ranges.reserveCapacity(sorted.count)
        var current = sorted[0]
        for run in sorted.dropFirst() {
            precondition(run.start >= current.end, "\(path): pending frees \(current) and \(run) overlap")
            if run.start == current.end {
                current.count += run.count
            } else {
                ranges.append(UInt64(current.start) * SpaceMap.unitBytes ..< UInt64(current.end) * SpaceMap.unitBytes)
                current = run
            }
        }
        ranges.append(UInt64(current.start) * SpaceMap.unitBytes ..< UInt64(current.end) * SpaceMap.unitBytes)
        return ranges
    }

    /// Checkpoints with pending frees, oldest first.
    public var pendingCheckpoints: [UInt64] { deferred.map(\.checkpoint) }

    // MARK: Held space (reservations)

    /// Allocates `lengthBytes` and holds it for a reservation: not allocatable, encoded as free.
    /// Returns the slot and offset, or nil when no place fits.
    func hold(lengthBytes: UInt64) -> (slot: Int, offsetBytes: UInt64)? {
        guard let start = findPlace(lengthBytes: lengthBytes) else { return nil }
        let count = Int(lengthBytes / SpaceMap.unitBytes)
        applyAllocation(start, count)
        heldUnits += count
        let run = UnitRun(start: start, count: count)
        let slot: Int
        if let reused = freeHeldSlots.popLast() { slot = reused; held[slot] = run } else { slot = held.count; held.append(run) }
        encodingRunsValid = false
        return (slot, UInt64(start) * SpaceMap.unitBytes)
    }

    /// Consumes a held run: its first `keepBytes` become allocated (dirty), the rest is free again.
    func consumeHeld(slot: Int, keepBytes: UInt64) -> UInt64 {
        let run = held[slot]
        precondition(run.count > 0, "\(path): held slot \(slot) is empty")
        let keep = Int(keepBytes / SpaceMap.unitBytes)
        precondition(keep > 0 && keep <= run.count && keepBytes % SpaceMap.unitBytes == 0,
                     "\(path): consuming \(keepBytes) bytes of a held run of \(run.count) units")
        clearHeldSlot(slot)
        if keep < run.count { applyFree(run.start + keep, run.count - keep) }
        markDirty(run.start, keep)
        return UInt64(run.start) * SpaceMap.unitBytes
    }

    func heldRun(slot: Int) -> UnitRun { held[slot] }

    /// Returns a held run to free space.
    func releaseHeld(slot: Int) {
        let run = held[slot]
        precondition(run.count > 0, "\(path): held slot \(slot) is empty")
        clearHeldSlot(slot)
        applyFree(run.start, run.count)
    }

    private func clearHeldSlot(_ slot: Int) {
        heldUnits -= held[slot].count
        held[slot] = UnitRun(start: 0, count: 0)
        freeHeldSlots.append(slot)
        encodingRunsValid = false
        loadable = false
    }

    // MARK: Serialisation

    /// Writes bitmap block `index` (4096 bytes): the durable view (see the theory comment).
    public func encodeBlock(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) {
        precondition(index >= 0 && index < bitmapBlockCount, "\(path): bitmap block \(index) of \(bitmapBlockCount)")
        precondition(buffer.count >= SpaceMap.bitmapBlockBytes, "\(path): encode buffer of \(buffer.count) bytes")
        let base = index * SpaceMap.wordsPerBitmapBlock
        for word in 0..<SpaceMap.wordsPerBitmapBlock {
            buffer.storeBytes(of: words[base + word].littleEndian, toByteOffset: word * 8, as: UInt64.self)
        }
        if !encodingRunsValid { rebuildEncodingRuns() }
        let blockStart = index * SpaceMap.unitsPerBitmapBlock
        let blockEnd = blockStart + SpaceMap.unitsPerBitmapBlock
        // First run ending after blockStart (runs are sorted and disjoint).
        var low = 0, high = encodingRuns.count
        while low < high {
            let middle = (low + high) / 2
            if encodingRuns[middle].end <= blockStart { low = middle + 1 } else { high = middle }
        }
        var cleared = 0
        while low < encodingRuns.count, encodingRuns[low].start < blockEnd {
            let run = encodingRuns[low]
            let start = max(run.start, blockStart), end = min(run.end, blockEnd)
            var unit = start
            while unit < end {
                let bit = unit & 63
                let span = min(64 - bit, end - unit)
                let mask = span == 64 ? ~UInt64(0) : ((UInt64(1) << UInt64(span)) - 1) << UInt64(bit)
                let offset = ((unit - blockStart) >> 6) * 8
                let value = UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
                buffer.storeBytes(of: (value & ~mask).littleEndian, toByteOffset: offset, as: UInt64.self)
                unit += span
                cleared += span
            }
            low += 1
        }
        assert(cleared <= SpaceMap.unitsPerBitmapBlock, "\(path): cleared \(cleared) units in one block")
    }

    /// Replaces bitmap block `index` with the durable view read from disk. Only before any other
    /// change (import). Throws when the block contradicts the device: a reserved unit or a unit
    /// past the end marked free.
    public func loadBlock(_ index: Int, from buffer: UnsafeRawBufferPointer) throws(AllocationError) {
        precondition(loadable, "\(path): loadBlock after the map was used")
        precondition(index >= 0 && index < bitmapBlockCount, "\(path): bitmap block \(index) of \(bitmapBlockCount)")
        precondition(buffer.count >= SpaceMap.bitmapBlockBytes, "\(path): load buffer of \(buffer.count) bytes")
        let base = index * SpaceMap.wordsPerBitmapBlock
        let blockStart = index * SpaceMap.unitsPerBitmapBlock
        // Units past the end must be 1.
        for word in 0..<SpaceMap.wordsPerBitmapBlock {
            let value = UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: word * 8, as: UInt64.self))
            let firstUnit = blockStart + word * 64
            let pastEndMask: UInt64 = firstUnit >= unitCount ? ~0 : (firstUnit + 64 <= unitCount ? 0 : ~0 << UInt64(unitCount - firstUnit))
            if value & pastEndMask != pastEndMask {
                throw .corruptSpaceMap(path: path, blockIndex: index, detail: "units past the device end (\(unitCount) units) marked free")
            }
        }
        let previous = (0..<SpaceMap.wordsPerBitmapBlock).map { words[base + $0] }
        for word in 0..<SpaceMap.wordsPerBitmapBlock {
            words[base + word] = UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: word * 8, as: UInt64.self))
        }
        for run in excludedRuns where run.end > blockStart && run.start < blockStart + SpaceMap.unitsPerBitmapBlock {
            let start = max(run.start, blockStart), end = min(run.end, blockStart + SpaceMap.unitsPerBitmapBlock)
            if !rangeAll(start, end - start, set: true) {
                for word in 0..<SpaceMap.wordsPerBitmapBlock { words[base + word] = previous[word] }
                throw .corruptSpaceMap(path: path, blockIndex: index,
                                       detail: "reserved bytes \(UInt64(start) * SpaceMap.unitBytes)..<\(UInt64(end) * SpaceMap.unitBytes) marked free")
            }
        }
        let firstRegion = index * SpaceMap.regionsPerBitmapBlock
        for region in firstRegion..<min(regionCount, firstRegion + SpaceMap.regionsPerBitmapBlock) {
            refreshRegion(region, previousFree: Int(regionFree[region]))
        }
        dirty[index] = false
    }

    /// The bitmap blocks whose encoded view may have changed since the last call, ascending; clears
    /// the set. A fresh map starts with every block dirty; a loaded block is clean.
    public func takeDirtyBlockIndices() -> [Int] {
        var indices: [Int] = []
        for index in 0..<bitmapBlockCount where dirty[index] {
            indices.append(index)
            dirty[index] = false
        }
        return indices
    }

    // MARK: Statistics

    public func statistics() -> SpaceMapStatistics {
        let fullyFree = buckets.memberCount(SpaceMap.fullyFreeBucket)
        var largestUnits = 0
        if fullyFree > 0 {
            var longestRegions = 0, current = 0
            for region in 0..<regionCount {
                if regionFree[region] == UInt16(SpaceMap.unitsPerRegion) { current += 1; longestRegions = max(longestRegions, current) } else { current = 0 }
            }
            largestUnits = longestRegions * SpaceMap.unitsPerRegion
        } else {
            for region in 0..<regionCount { largestUnits = max(largestUnits, Int(regionLongest[region])) }
        }
        let notWhole = freeUnits - fullyFree * SpaceMap.unitsPerRegion
        assert(notWhole >= 0, "\(path): more fully free units than free units")
        let used = capacityUnits - freeUnits - deferredUnits - heldUnits
        precondition(used >= 0, "\(path): negative used space")
        return SpaceMapStatistics(
            capacityBytes: UInt64(capacityUnits) * SpaceMap.unitBytes,
            usedBytes: UInt64(used) * SpaceMap.unitBytes,
            freeBytes: UInt64(freeUnits) * SpaceMap.unitBytes,
            reservedBytes: UInt64(heldUnits) * SpaceMap.unitBytes,
            deferredBytes: UInt64(deferredUnits) * SpaceMap.unitBytes,
            excludedBytes: UInt64(excludedUnits) * SpaceMap.unitBytes,
            largestFreeExtentBytes: UInt64(largestUnits) * SpaceMap.unitBytes,
            fullyFreeRegionCount: fullyFree,
            fragmentation: freeUnits == 0 ? 0 : Double(notWhole) / Double(freeUnits))
    }

    /// Bytes of RAM of the index proper: proportional to the size managed (reported per TiB).
    public var indexBytes: Int {
        bitmapBlockCount * SpaceMap.wordsPerBitmapBlock * 8 + regionCount * 4 + buckets.stateBytes + bitmapBlockCount
    }

    /// Bytes of RAM of the pending-free and held run lists: proportional to the frees of the open
    /// checkpoints and the outstanding reservations (16 bytes a run), not to the size managed.
    public var listBytes: Int {
        let runs = held.capacity + freeHeldSlots.capacity / 2 + encodingRuns.capacity
            + deferred.reduce(0) { $0 + $1.runs.capacity } + spareRunArrays.reduce(0) { $0 + $1.capacity }
        return runs * MemoryLayout<UnitRun>.stride
    }

    /// All RAM held by this map: `indexBytes + listBytes`.
    public var stateBytes: Int { indexBytes + listBytes }

    /// Whether a unit is set in the live bitmap (allocated, deferred, held, reserved or past the end).
    func isSet(unit: Int) -> Bool { words[unit >> 6] & (UInt64(1) << UInt64(unit & 63)) != 0 }

    /// Live bitmap words (tests compare them with a model).
    func liveWord(_ index: Int) -> UInt64 { words[index] }
    var liveWordCount: Int { bitmapBlockCount * SpaceMap.wordsPerBitmapBlock }
    var managedUnitCount: Int { unitCount }

    /// Recomputes every derived figure from the bitmap and traps on a mismatch (tests; O(size)).
    func checkConsistency() {
        var total = 0
        for region in 0..<regionCount {
            let base = words + region * SpaceMap.wordsPerRegion
            var zeros = 0
            for word in 0..<SpaceMap.wordsPerRegion { zeros += 64 - base[word].nonzeroBitCount }
            precondition(zeros == Int(regionFree[region]), "\(path): region \(region) free count \(regionFree[region]) != \(zeros)")
            let longest = SpaceMap.longestRun(base)
            precondition(longest == Int(regionLongest[region]), "\(path): region \(region) longest \(regionLongest[region]) != \(longest)")
            for bucket in 0...SpaceMap.fullyFreeBucket {
                precondition(buckets.contains(region, bucket: bucket) == (longest > 0 && SpaceMap.bucket(forLongest: longest) == bucket),
                             "\(path): region \(region) (longest \(longest)) bucket membership wrong for bucket \(bucket)")
            }
            total += zeros
        }
        precondition(total == freeUnits, "\(path): free units \(freeUnits) != bitmap zeros \(total)")
        for run in excludedRuns { precondition(rangeAll(run.start, run.count, set: true), "\(path): excluded run \(run) has free units") }
        let deferredTotal = deferred.reduce(0) { $0 + $1.runs.reduce(0) { $0 + $1.count } }
        precondition(deferredTotal == deferredUnits, "\(path): deferred \(deferredUnits) != runs \(deferredTotal)")
        precondition(held.reduce(0) { $0 + $1.count } == heldUnits, "\(path): held units mismatch")
    }

    // MARK: Placement

    private func findPlace(lengthBytes: UInt64) -> Int? {
        precondition(lengthBytes > 0 && lengthBytes % SpaceMap.unitBytes == 0,
                     "\(path): allocation length \(lengthBytes) is not a positive multiple of 4 KiB")
        let count = Int(lengthBytes / SpaceMap.unitBytes)
        if count >= SpaceMap.unitsPerRegion {
            let regions = (count + SpaceMap.unitsPerRegion - 1) / SpaceMap.unitsPerRegion
            guard let first = findWholeRegions(regions) else { return nil }
            return first * SpaceMap.unitsPerRegion
        }
        let floorBucket = Int.bitWidth - 1 - count.leadingZeroBitCount
        let isPowerOfTwo = count & (count - 1) == 0
        let ceilBucket = isPowerOfTwo ? floorBucket : floorBucket + 1
        if !isPowerOfTwo, let start = probe(bucket: floorBucket, count: count, limit: SpaceMap.floorBucketProbeMax) {
            return start
        }
        for bucket in ceilBucket...SpaceMap.fullyFreeBucket {
            if let region = buckets.next(bucket, from: 0) {
                let offset = SpaceMap.findRun(words + region * SpaceMap.wordsPerRegion, count)
                precondition(offset != nil, "\(path): region \(region) in bucket \(bucket) has no run of \(count)")
                return region * SpaceMap.unitsPerRegion + offset!
            }
        }
        if !isPowerOfTwo { return probe(bucket: floorBucket, count: count, limit: Int.max) }
        return nil
    }

    /// First region of `bucket` (up to `limit` looked at) with a free run of `count`.
    private func probe(bucket: Int, count: Int, limit: Int) -> Int? {
        var from = 0, looked = 0
        while looked < limit, let region = buckets.next(bucket, from: from) {
            if Int(regionLongest[region]) >= count,
               let offset = SpaceMap.findRun(words + region * SpaceMap.wordsPerRegion, count) {
                return region * SpaceMap.unitsPerRegion + offset
            }
            looked += 1
            from = region + 1
        }
        return nil
    }

    /// First run of `count` consecutive fully free regions.
    private func findWholeRegions(_ count: Int) -> Int? {
        var from = 0
        while let first = buckets.next(SpaceMap.fullyFreeBucket, from: from) {
            if count == 1 { return first }
            guard first + count <= regionCount else { return nil }
            var region = first + 1
            while region < first + count, buckets.contains(region, bucket: SpaceMap.fullyFreeBucket) { region += 1 }
            if region == first + count { return first }
            from = region + 1
        }
        return nil
    }

    // MARK: Bit and region maintenance

    private func applyAllocation(_ start: Int, _ count: Int) {
        loadable = false
        setBits(start, count, to: true)
        refreshRegions(start, count)
    }

    private func applyFree(_ start: Int, _ count: Int) {
        loadable = false
        setBits(start, count, to: false)
        refreshRegions(start, count)
    }

    private func refreshRegions(_ start: Int, _ count: Int) {
        let first = start / SpaceMap.unitsPerRegion, last = (start + count - 1) / SpaceMap.unitsPerRegion
        for region in first...last { refreshRegion(region, previousFree: Int(regionFree[region])) }
    }

    /// Recomputes a region's free count and longest run from its words; moves it between buckets.
    private func refreshRegion(_ region: Int, previousFree: Int) {
        let base = words + region * SpaceMap.wordsPerRegion
        let free = 256 - base[0].nonzeroBitCount - base[1].nonzeroBitCount - base[2].nonzeroBitCount - base[3].nonzeroBitCount
        let longest = free == 256 ? 256 : (free == 0 ? 0 : SpaceMap.longestRun(base))
        let oldLongest = Int(regionLongest[region])
        if oldLongest != longest {
            let oldBucket = oldLongest == 0 ? -1 : SpaceMap.bucket(forLongest: oldLongest)
            let newBucket = longest == 0 ? -1 : SpaceMap.bucket(forLongest: longest)
            if oldBucket != newBucket {
                if oldBucket >= 0 { buckets.remove(region, bucket: oldBucket) }
                if newBucket >= 0 { buckets.insert(region, bucket: newBucket) }
            }
            regionLongest[region] = UInt16(longest)
        }
        freeUnits += free - previousFree
        regionFree[region] = UInt16(free)
        assert(longest <= free, "\(path): region \(region) longest run \(longest) above free \(free)")
    }

    private func setBits(_ start: Int, _ count: Int, to value: Bool) {
        var unit = start
        let end = start + count
        while unit < end {
            let bit = unit & 63
            let span = min(64 - bit, end - unit)
            let mask = span == 64 ? ~UInt64(0) : ((UInt64(1) << UInt64(span)) - 1) << UInt64(bit)
            if value { words[unit >> 6] |= mask } else { words[unit >> 6] &= ~mask }
            unit += span
        }
    }

    /// Whether every unit of the range is set (set: true) or clear (set: false).
    private func rangeAll(_ start: Int, _ count: Int, set: Bool) -> Bool {
        var unit = start
        let end = start + count
        while unit < end {
            let bit = unit & 63
            let span = min(64 - bit, end - unit)
            let mask = span == 64 ? ~UInt64(0) : ((UInt64(1) << UInt64(span)) - 1) << UInt64(bit)
            let value = words[unit >> 6] & mask
            if set ? value != mask : value != 0 { return false }
            unit += span
        }
        return true
    }

    private func markDirty(_ start: Int, _ count: Int) {
        guard count > 0 else { return }
        for block in (start / SpaceMap.unitsPerBitmapBlock)...((start + count - 1) / SpaceMap.unitsPerBitmapBlock) { dirty[block] = true }
    }

    /// Validates an extent against the device and the reserved ranges; returns it in units.
    private func checkedRun(_ offsetBytes: UInt64, _ lengthBytes: UInt64, _ operation: String) -> UnitRun {
        precondition(lengthBytes > 0 && offsetBytes % SpaceMap.unitBytes == 0 && lengthBytes % SpaceMap.unitBytes == 0,
                     "\(path): \(operation) of \(offsetBytes)+\(lengthBytes): not 4 KiB aligned")
        precondition(offsetBytes < sizeBytes && lengthBytes <= UInt64(unitCount) * SpaceMap.unitBytes - offsetBytes,
                     "\(path): \(operation) of \(offsetBytes)+\(lengthBytes): beyond the device (\(sizeBytes) bytes)")
        let run = UnitRun(start: Int(offsetBytes / SpaceMap.unitBytes), count: Int(lengthBytes / SpaceMap.unitBytes))
        for excluded in excludedRuns where excluded.start < run.end && run.start < excluded.end {
            preconditionFailure("\(path): \(operation) of \(offsetBytes)+\(lengthBytes) crosses a reserved range "
                                + "\(UInt64(excluded.start) * SpaceMap.unitBytes)..<\(UInt64(excluded.end) * SpaceMap.unitBytes)")
        }
        return run
    }

    /// Debug check: does the run overlap a pending deferred free or a held run? O(pending).
    private func overlapsPending(_ run: UnitRun) -> Bool {
        for generation in deferred {
            for other in generation.runs where other.start < run.end && run.start < other.end { return true }
        }
        for other in held where other.count > 0 && other.start < run.end && run.start < other.end { return true }
        return false
    }

    private func rebuildEncodingRuns() {
        let needed = deferred.reduce(0) { $0 + $1.runs.count } + held.count
        if encodingRuns.capacity > max(SpaceMap.retainedRunCapacityMax, 2 * needed) {
            encodingRuns = []                  // after a bulk free: give the memory back
        }
        encodingRuns.removeAll(keepingCapacity: true)
        encodingRuns.reserveCapacity(needed)
        for generation in deferred { encodingRuns.append(contentsOf: generation.runs) }
        for run in held where run.count > 0 { encodingRuns.append(run) }
        encodingRuns.sort { $0.start < $1.start }
        for index in encodingRuns.indices.dropFirst() {
            precondition(encodingRuns[index - 1].end <= encodingRuns[index].start,
                         "\(path): deferred/held runs overlap at unit \(encodingRuns[index].start)")
        }
        encodingRunsValid = true
    }

    // MARK: Region word helpers (4 words, bit = allocated)

    static func bucket(forLongest longest: Int) -> Int {
        longest >= unitsPerRegion ? fullyFreeBucket : Int.bitWidth - 1 - longest.leadingZeroBitCount
    }

    /// First clear bit at or after `position` (256 when none).
    @inline(__always)
    static func nextClear(_ base: UnsafeMutablePointer<UInt64>, from position: Int) -> Int {
        var word = position >> 6
        guard word < wordsPerRegion else { return 256 }
        var bits = ~base[word] & (~UInt64(0) << UInt64(position & 63))
        while true {
            if bits != 0 { return word << 6 | bits.trailingZeroBitCount }
            word += 1
            if word == wordsPerRegion { return 256 }
            bits = ~base[word]
        }
    }

    /// First set bit at or after `position` (256 when none).
    @inline(__always)
    static func nextSet(_ base: UnsafeMutablePointer<UInt64>, from position: Int) -> Int {
        var word = position >> 6
        guard word < wordsPerRegion else { return 256 }
        var bits = base[word] & (~UInt64(0) << UInt64(position & 63))
        while true {
            if bits != 0 { return word << 6 | bits.trailingZeroBitCount }
            word += 1
            if word == wordsPerRegion { return 256 }
            bits = base[word]
        }
    }

    /// Offset of the first free run of at least `count` units in a region.
    static func findRun(_ base: UnsafeMutablePointer<UInt64>, _ count: Int) -> Int? {
        var position = 0
        while position < 256 {
            let start = nextClear(base, from: position)
            if start == 256 { return nil }
            let end = nextSet(base, from: start)
            if end - start >= count { return start }
            position = end
        }
        return nil
    }

    static func longestRun(_ base: UnsafeMutablePointer<UInt64>) -> Int {
        var position = 0, longest = 0
        while position < 256 {
            let start = nextClear(base, from: position)
            if start == 256 { break }
            let end = nextSet(base, from: start)
            longest = max(longest, end - start)
            position = end
        }
        return longest
    }
}

/// Nine 64-ary hierarchical bitmaps over regions, one per bucket, in one allocation. Level 0 has a
/// bit per region; a bit of level l+1 is set when word i of level l is non-zero.
struct RegionBuckets {
    static let bucketCount = SpaceMap.fullyFreeBucket + 1
    let regionCount: Int
    let levelCount: Int
    private let levelWordCounts: UnsafeMutablePointer<Int>
    private let levelStarts: UnsafeMutablePointer<Int>
    private let storage: UnsafeMutablePointer<UInt64>
    private let counts: UnsafeMutablePointer<Int>
    private let storageWordCount: Int

    init(regionCount: Int) {
        precondition(regionCount > 0, "no regions")
        self.regionCount = regionCount
        var wordCounts: [Int] = []
        var bits = regionCount
        repeat {
            let count = (bits + 63) / 64
            wordCounts.append(count)
            bits = count
        } while bits > 1
        levelCount = wordCounts.count
        levelWordCounts = .allocate(capacity: levelCount)
        levelStarts = .allocate(capacity: levelCount)
        var start = 0
        for level in 0..<levelCount {
            levelWordCounts[level] = wordCounts[level]
            levelStarts[level] = start
            start += wordCounts[level] * RegionBuckets.bucketCount
        }
        storageWordCount = start
        storage = .allocate(capacity: start)
        storage.initialize(repeating: 0, count: start)
        counts = .allocate(capacity: RegionBuckets.bucketCount)
        counts.initialize(repeating: 0, count: RegionBuckets.bucketCount)
    }

    func deallocate() {
        levelWordCounts.deallocate()
        levelStarts.deallocate()
        storage.deallocate()
        counts.deallocate()
    }

    var stateBytes: Int { storageWordCount * 8 + levelCount * 16 + RegionBuckets.bucketCount * 8 }

    @inline(__always)
    private func level(_ bucket: Int, _ level: Int) -> UnsafeMutablePointer<UInt64> {
        storage + levelStarts[level] + bucket * levelWordCounts[level]
    }

    func memberCount(_ bucket: Int) -> Int { counts[bucket] }

    func contains(_ region: Int, bucket: Int) -> Bool {
        level(bucket, 0)[region >> 6] & (UInt64(1) << UInt64(region & 63)) != 0
    }

    func insert(_ region: Int, bucket: Int) {
        assert(region < regionCount && !contains(region, bucket: bucket), "region \(region) already in bucket \(bucket)")
        counts[bucket] += 1
        var index = region
        for l in 0..<levelCount {
            let words = level(bucket, l)
            let before = words[index >> 6]
            words[index >> 6] = before | (UInt64(1) << UInt64(index & 63))
            if before != 0 { return }
            index >>= 6
        }
    }

    func remove(_ region: Int, bucket: Int) {
        assert(contains(region, bucket: bucket), "region \(region) not in bucket \(bucket)")
        counts[bucket] -= 1
        var index = region
        for l in 0..<levelCount {
            let words = level(bucket, l)
            let after = words[index >> 6] & ~(UInt64(1) << UInt64(index & 63))
            words[index >> 6] = after
            if after != 0 { return }
            index >>= 6
        }
    }

    /// First member of `bucket` at or after `region`.
    func next(_ bucket: Int, from region: Int) -> Int? {
        guard counts[bucket] > 0 else { return nil }
        return next(bucket, level: 0, from: region)
    }

    private func next(_ bucket: Int, level l: Int, from position: Int) -> Int? {
        let words = level(bucket, l)
        let count = levelWordCounts[l]
        var word = position >> 6
        guard word < count else { return nil }
        let masked = words[word] & (~UInt64(0) << UInt64(position & 63))
        if masked != 0 { return word << 6 | masked.trailingZeroBitCount }
        if l + 1 == levelCount {
            word += 1
            while word < count {
                if words[word] != 0 { return word << 6 | words[word].trailingZeroBitCount }
                word += 1
            }
            return nil
        }
        guard let nextWord = next(bucket, level: l + 1, from: word + 1) else { return nil }
        assert(words[nextWord] != 0, "summary bit set over an empty word")
        return nextWord << 6 | words[nextWord].trailingZeroBitCount
    }
}
