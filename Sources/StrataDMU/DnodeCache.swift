// DnodeCache — the in-memory dnodes, keyed by object number, under a memory bound.
//
// Theory. Every operation on an object starts with its dnode, so the cache sits on the metadata
// hot path: a cached lookup must cost one uncontended lock, one hash probe and one read of the
// entry, and allocate nothing. The cache holds two kinds of entries:
//   - clean dnodes (equal to what the last durable checkpoint holds): evictable at any time;
//   - dirty dnodes and destroyed-object tombstones, tagged with the checkpoint that must write
//     them: pinned (never evicted) until the checkpoint code, after that checkpoint is durable,
//     calls `markClean(through:)`. The cache is the only place the new state exists besides the
//     intent log, so evicting it would lose it until replay.
//
// Eviction: CLOCK (second chance), not strict LRU or ARC. A hit only sets a reference bit under
// the lock it already holds: no list relinking, so lookups stay cheap and do not write shared
// list heads. The hand sweeps on insert when the shard is over budget: a referenced entry loses its
// bit and survives, an unreferenced clean one is evicted, a dirty one is skipped. A scan of cold
// objects (readdir + stat of a big directory) enters unreferenced and is evicted before the hot
// set, which gives most of ARC's scan resistance without its ghost lists (ARC would double the
// per-entry bookkeeping for an access pattern that CLOCK already handles).
//
// Concurrency: lock striping. Objects are spread over `shardCount` shards (Fibonacci hash of the
// object number); each shard is a `Mutex` with its own table, clock and counters, padded to its
// own cache lines, with `memoryBytesMax / shardCount` of the budget. Two threads contend only when
// they touch the same shard at the same instant (1 in 16 for random objects).
//
// Layout of a shard, for lookups over a million dnodes (where every access is a cache miss):
//   - an open-addressing table of 16-byte buckets (object number, slot), linear probing at a load
//     of at most 3/4, home bucket from the hash bits below the shard bits. A probe compares keys
//     in the bucket array only (four buckets per cache line), so a hit costs one miss there;
//     deletion shifts the rest of the cluster back, so no tombstones lengthen later probes. (A
//     Swift Dictionary hashed with SipHash and kept keys, values and its occupancy bitmap apart.)
//   - an array of `Entry` slots (state, reference bit, charge, dirty checkpoint, then the dnode,
//     so the bookkeeping shares a cache line with the dnode's fixed fields), with a free list
//     threaded through free slots. Free slots and tombstones hold a placeholder dnode with no heap
//     storage, so every slot is initialized and `withDnode` lends the stored dnode in place: no
//     copy, so no retain and release of its arrays (two more misses per lookup).
//   - both arrays, once 2 MiB or larger, 2 MiB-aligned and advised into transparent huge pages:
//     without that each miss also walks the page tables (nested in a VM).
// So a hit is two dependent misses (bucket, entry); `lookup`, which returns a copy, adds the
// retains of the dnode's arrays.
//
// What a lookup costs is mostly whether the misses of consecutive lookups overlap. Their
// addresses do not depend on each other, and on this hardware (AMD EPYC, measured) the lock's
// atomic compare-exchanges do not keep later loads from issuing, so the out-of-order core keeps
// several lookups' misses in flight as long as each lookup is short. `withDnode` is therefore
// `@inlinable`: specialized in the caller's module for its closure and result (unspecialized, a
// generic closure call, the result's value-witness calls and a 248-byte move out of the slot
// and back made each lookup long enough to run its misses one at a time: 2.6 M/s at 1M dnodes),
// with the probe in a small non-generic function (`Shard.presentDnode`) so the closure and the
// body inline and the optimizer drops the moves of the fields the body does not read. With that,
// 10–12 M lookups/s at 1M dnodes on one thread, 7–7.6 with a body that is not inlined
// (`strata-perf dnode-cache`; docs/perf.md).
//
// Memory bound: each entry is charged its slot (`Entry` stride), its share of the hash table, and
// the heap its dnode holds (`Dnode.residentBytes`). When dirty entries alone exceed a shard's
// share the bound is exceeded (they cannot go); `statistics.dirtyBytes` tells the checkpoint
// trigger to run, and `overBudgetInserts` counts those events.
//
// Crash safety: nothing here is durable. A crash loses the cache; dirty dnodes are rebuilt by log
// replay on the next import.

import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Settings of the dnode cache, each with its reason.
public struct DnodeCacheSettings: Sendable, Equatable {
    /// Memory for cached dnodes and their index. 256 MiB holds ~515k dnodes of the typical
    /// Lustre shape (LMA + PFID inline, 520 B charged each: the 264-byte entry, its share of the
    /// index, the SA and extent arrays; 526 B of resident memory each measured at 1M by
    /// `strata-perf dnode-cache`): the working set of a busy MDT without taking a large share of
    /// a server's memory. Bytes.
    public var memoryBytesMax: Int = 256 << 20
    /// Lock stripes, a power of two. 16 keeps two threads on one shard 1/16 of the time on random
    /// objects, for 16 × 128 bytes of shard headers.
    public var shardCount: Int = 16

    public init(memoryBytesMax: Int = 256 << 20, shardCount: Int = 16) {
        self.memoryBytesMax = memoryBytesMax
        self.shardCount = shardCount
    }
}

/// What the cache knows about an object.
public enum CachedDnode: Equatable, Sendable {
    case present(Dnode)
    /// Destroyed since the last durable checkpoint: the object does not exist (do not read disk).
    case destroyed
    /// Not cached: read its dnode-table block.
    case absent
}

/// A dnode (or a destroyed slot) that a checkpoint must write.
public struct DirtyDnode: Equatable, Sendable {
    public var objectNumber: UInt64
    /// nil: the object was destroyed, write a free (zero) slot.
    public var dnode: Dnode?
    public var checkpoint: UInt64
}

public struct DnodeCacheStatistics: Equatable, Sendable {
    public var hits: UInt64 = 0
    public var misses: UInt64 = 0
    public var evictions: UInt64 = 0
    public var insertions: UInt64 = 0
    /// Inserts after which the shard stayed over its budget (everything left was dirty).
    public var overBudgetInserts: UInt64 = 0
    public var cachedCount: Int = 0
    public var dirtyCount: Int = 0
    public var residentBytes: Int = 0
    public var dirtyBytes: Int = 0
}

public final class DnodeCache: @unchecked Sendable {
    // @unchecked: the shards live in raw memory owned by this object; each is only reached
    // through its Mutex.

    @usableFromInline
    enum EntryState: UInt8, Sendable {
        /// On the shard's free list.
        case free
        case present
        /// A destroyed-object tombstone.
        case destroyed
    }

    /// One slot of a shard's entry array. Every slot below `entryCount` is initialized: a free
    /// slot or a tombstone holds a placeholder dnode with no heap storage, so `withDnode` can
    /// borrow the stored dnode in place (no Optional to unwrap, no copy).
    @usableFromInline
    struct Entry: Sendable {
        // The bookkeeping comes first, in the same cache line as the dnode's fixed fields: a hit
        // reads `state`, sets `referenced` and usually reads a field or two, all in one line.
        @usableFromInline var state: EntryState
        @usableFromInline var referenced: Bool
        var chargedBytes: UInt32
        /// 0 when clean, else the checkpoint that must write this entry. On a free slot: the next
        /// free slot + 1 (0 ends the list).
        var dirtyCheckpoint: UInt64
        @usableFromInline var dnode: Dnode

        var objectNumber: UInt64 { dnode.objectNumber }

        static func free(next: Int) -> Entry {
            Entry(state: .free, referenced: false, chargedBytes: 0, dirtyCheckpoint: UInt64(next), dnode: Dnode(objectNumber: 0, type: .regular))
        }
    }

    /// A hash-table bucket: the object number (so a probe compares keys without touching the
    /// entry array) and its slot + 1; 0 marks an empty bucket. 16 bytes, four per cache line.
    @usableFromInline
    struct Bucket: Sendable {
        @usableFromInline var objectNumber: UInt64
        @usableFromInline var slotPlusOne: UInt32
    }

    /// One lock stripe: an open-addressing hash table (linear probing, backward-shift deletion,
    /// so no tombstones ever slow a probe) from object number to slot, the slots themselves, the
    /// CLOCK hand and the counters. Called with the shard's lock held.
    @usableFromInline
    struct Shard: ~Copyable {
        @usableFromInline var buckets: UnsafeMutablePointer<Bucket>
        /// log2 of the bucket count.
        @usableFromInline var bucketBits: Int
        /// The top `shardBits` of an object's hash pick its shard; the next `bucketBits` its home bucket.
        @usableFromInline let shardBits: Int
        @usableFromInline var entries: UnsafeMutablePointer<Entry>
        /// Slots initialized (in use or free); the CLOCK hand sweeps `0 ..< entryCount`.
        var entryCount = 0
        var entryCapacity: Int
        /// First free slot + 1; 0 when none.
        var freeHead = 0
        var hand = 0
        var budgetBytes: Int
        var residentBytes = 0
        var dirtyBytes = 0
        var dirtyCount = 0
        @usableFromInline var statistics = DnodeCacheStatistics()

        init(budgetBytes: Int, shardBits: Int) {
            self.shardBits = shardBits
            self.budgetBytes = budgetBytes
            bucketBits = Limits.initialBucketBits
            buckets = .allocate(capacity: 1 << bucketBits)
            buckets.initialize(repeating: Bucket(objectNumber: 0, slotPlusOne: 0), count: 1 << bucketBits)
            entryCapacity = Limits.initialEntryCapacity
            entries = .allocate(capacity: entryCapacity)
        }

        deinit {
            entries.deinitialize(count: entryCount)
            entries.deallocate()
            buckets.deallocate()
        }

        @inlinable var bucketMask: Int { (1 << bucketBits) - 1 }

        @inlinable @inline(__always)
        func homeBucket(_ object: UInt64) -> Int {
            Int(truncatingIfNeeded: (DnodeCache.hash(object) << UInt64(shardBits)) >> UInt64(64 - bucketBits))
        }

        /// The slot holding `object`, or -1. One probe sequence over the bucket array only.
        @inlinable @inline(__always)
        func slot(of object: UInt64) -> Int {
            let mask = (1 << bucketBits) - 1
            var index = homeBucket(object)
            while true {
                let bucket = buckets[index]
                if bucket.slotPlusOne == 0 { return -1 }
                if bucket.objectNumber == object { return Int(bucket.slotPlusOne) - 1 }
                index = (index + 1) & mask
            }
        }

        /// The dnode of `object` when it is cached and present, else nil; counts a hit or a miss
        /// and sets the entry's reference bit. The non-generic part of `withDnode`: one probe of
        /// the bucket array, one read of the entry.
        @usableFromInline
        mutating func presentDnode(_ object: UInt64) -> UnsafeMutablePointer<Dnode>? {
            guard let entry = cachedEntry(object), entry.pointee.state == .present else { return nil }
            return (UnsafeMutableRawPointer(entry) + DnodeCache.dnodeOffset).assumingMemoryBound(to: Dnode.self)
        }

        /// The entry of `object` (present or a tombstone), or nil; counts a hit or a miss and sets
        /// the entry's reference bit (only when clear: no store to the entry's line on most hits).
        @inline(__always)
        mutating func cachedEntry(_ object: UInt64) -> UnsafeMutablePointer<Entry>? {
            let slot = slot(of: object)
            guard slot >= 0 else {
                statistics.misses &+= 1
                return nil
            }
            statistics.hits &+= 1
            let entry = entries + slot
            precondition(entry.pointee.state != .free, "object \(object) maps to free dnode-cache slot \(slot)")
            if !entry.pointee.referenced { entry.pointee.referenced = true }
            return entry
        }

        /// Adds `object` → `slot`; `object` must not be in the table.
        mutating func insertBucket(_ object: UInt64, slot: Int) {
            if (statistics.cachedCount + 1) * Limits.loadDenominator > (1 << bucketBits) * Limits.loadNumerator {
                growBuckets()
            }
            let mask = bucketMask
            var index = homeBucket(object)
            while buckets[index].slotPlusOne != 0 {
                precondition(buckets[index].objectNumber != object, "object \(object) is already in the dnode cache table")
                index = (index + 1) & mask
            }
            buckets[index] = Bucket(objectNumber: object, slotPlusOne: UInt32(slot + 1))
            statistics.cachedCount += 1
        }

        /// Removes `object` (which must be present) and shifts the rest of its cluster back, so
        /// every key stays reachable from its home bucket without tombstones.
        mutating func removeBucket(_ object: UInt64) {
            let mask = bucketMask
            var hole = homeBucket(object)
            while buckets[hole].objectNumber != object || buckets[hole].slotPlusOne == 0 {
                precondition(buckets[hole].slotPlusOne != 0, "object \(object) is not in the dnode cache table")
                hole = (hole + 1) & mask
            }
            var next = (hole + 1) & mask
            while buckets[next].slotPlusOne != 0 {
                let home = homeBucket(buckets[next].objectNumber)
                // The key at `next` may fill the hole if the hole lies on its probe path [home, next).
                if (next &- home) & mask >= (next &- hole) & mask {
                    buckets[hole] = buckets[next]
                    hole = next
                }
                next = (next + 1) & mask
            }
            buckets[hole] = Bucket(objectNumber: 0, slotPlusOne: 0)
            statistics.cachedCount -= 1
        }

        private mutating func growBuckets() {
            let oldBuckets = buckets
            let oldCount = 1 << bucketBits
            precondition(bucketBits + shardBits < 63, "dnode cache shard table full")
            bucketBits += 1
            buckets = DnodeCache.allocateArray(of: Bucket.self, count: 1 << bucketBits)
            buckets.initialize(repeating: Bucket(objectNumber: 0, slotPlusOne: 0), count: 1 << bucketBits)
            let mask = bucketMask
            for old in 0 ..< oldCount where oldBuckets[old].slotPlusOne != 0 {
                var index = homeBucket(oldBuckets[old].objectNumber)
                while buckets[index].slotPlusOne != 0 { index = (index + 1) & mask }
                buckets[index] = oldBuckets[old]
            }
            oldBuckets.deallocate()
        }

        /// A slot for a new entry: the free list first, else the end of the array (doubled when full).
        mutating func allocateSlot() -> Int {
            if freeHead != 0 {
                let slot = freeHead - 1
                precondition(entries[slot].state == .free, "free dnode-cache slot \(slot) is in use")
                freeHead = Int(entries[slot].dirtyCheckpoint)
                return slot
            }
            if entryCount == entryCapacity {
                precondition(entryCapacity < Int(UInt32.max) / 2, "dnode cache shard full")
                let grown = DnodeCache.allocateArray(of: Entry.self, count: entryCapacity * 2)
                grown.moveInitialize(from: entries, count: entryCount)
                entries.deallocate()
                entries = grown
                entryCapacity *= 2
            }
            (entries + entryCount).initialize(to: .free(next: 0))
            entryCount += 1
            return entryCount - 1
        }

        mutating func releaseSlot(_ slot: Int) {
            entries[slot] = .free(next: freeHead)
            freeHead = slot + 1
        }
    }

    /// Memory for a shard's bucket or entry array. From 2 MiB up: 2 MiB-aligned and advised into
    /// transparent huge pages, so a lookup over a million dnodes does not also pay a TLB miss
    /// (a nested page walk in a VM) for the bucket and for the entry. Advisory: without THP the
    /// kernel uses ordinary pages.
    static func allocateArray<Element>(of: Element.Type, count: Int) -> UnsafeMutablePointer<Element> {
        let bytes = count * MemoryLayout<Element>.stride
        guard bytes >= Limits.hugePageBytes else { return .allocate(capacity: count) }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Limits.hugePageBytes)
        #if canImport(Glibc)
        _ = madvise(raw, bytes, MADV_HUGEPAGE)
        #endif
        return raw.bindMemory(to: Element.self, capacity: count)
    }

    /// Sizes of the per-shard structures, with their reasons.
    enum Limits {
        /// 64 buckets (1 KiB) per shard before the first insert: small caches stay small.
        static let initialBucketBits = 6
        static let initialEntryCapacity = 16
        /// Maximum load of the bucket array, 3/4: linear probing then averages 2.5 buckets per
        /// hit, almost always in the home bucket's cache line.
        static let loadNumerator = 3
        static let loadDenominator = 4
        /// x86-64 transparent huge page.
        static let hugePageBytes = 2 << 20
    }

    public let settings: DnodeCacheSettings
    @usableFromInline let shardBits: Int
    @usableFromInline let shardStride: Int
    @usableFromInline let shards: UnsafeMutableRawPointer

    /// Bytes charged per entry besides its dnode's heap: the slot and the hash table's share
    /// (a 16-byte bucket at a load between 3/8 and 3/4, so 21–43 bytes; 32 on average).
    static let entryOverheadBytes = MemoryLayout<Entry>.stride + 32
    /// Where the dnode starts in an `Entry`: after the 16 bytes of bookkeeping. A constant (not
    /// `MemoryLayout.offset(of:)`, a lazily initialized global) so the inlined hot path adds it
    /// directly; `init` checks it against the layout.
    @usableFromInline static var dnodeOffset: Int { 16 }

    public init(settings: DnodeCacheSettings = DnodeCacheSettings()) {
        precondition(settings.shardCount > 0 && settings.shardCount & (settings.shardCount - 1) == 0 && settings.shardCount <= 1024,
                     "shard count \(settings.shardCount) is not a power of two in 1...1024")
        precondition(settings.memoryBytesMax >= settings.shardCount * 4096, "dnode cache bound \(settings.memoryBytesMax) bytes is too small")
        precondition(MemoryLayout<Entry>.offset(of: \Entry.dnode) == Self.dnodeOffset, "DnodeCache.Entry layout changed: dnode not at offset \(Self.dnodeOffset)")
        self.settings = settings
        self.shardBits = settings.shardCount.trailingZeroBitCount
        self.shardStride = (MemoryLayout<Mutex<Shard>>.stride + 127) & ~127
        self.shards = UnsafeMutableRawPointer.allocate(byteCount: shardStride * settings.shardCount, alignment: 128)
        for index in 0 ..< settings.shardCount {
            (shards + index * shardStride).bindMemory(to: Mutex<Shard>.self, capacity: 1)
                .initialize(to: Mutex(Shard(budgetBytes: settings.memoryBytesMax / settings.shardCount, shardBits: shardBits)))
        }
    }

    deinit {
        for index in 0 ..< settings.shardCount {
            (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self).deinitialize(count: 1)
        }
        shards.deallocate()
    }

    /// Fibonacci hashing: the top bits of the product are well mixed even for sequential object
    /// numbers. The top `shardBits` pick the shard, the bits below them the bucket.
    @inlinable @inline(__always)
    static func hash(_ object: UInt64) -> UInt64 { object &* 0x9E37_79B9_7F4A_7C15 }

    @inlinable @inline(__always)
    func shard(for object: UInt64) -> UnsafeMutablePointer<Mutex<Shard>> {
        let index = shardBits == 0 ? 0 : Int(truncatingIfNeeded: Self.hash(object) >> UInt64(64 - shardBits))
        return (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self)
    }

    // MARK: Lookups (the hot path)

    /// The cached state of `object`, as a copy; counts a hit or a miss. Allocates nothing, but
    /// the copy retains (and the caller later releases) the dnode's arrays: prefer `withDnode`.
    public func lookup(_ object: UInt64) -> CachedDnode {
        shard(for: object).pointee.withLock { shard -> CachedDnode in
            guard let entry = shard.cachedEntry(object) else { return .absent }
            guard entry.pointee.state == .present else { return .destroyed }
            return .present(entry.pointee.dnode)
        }
    }

    /// The cached dnode of `object` (a copy), or nil (absent or destroyed).
    public func dnode(_ object: UInt64) -> Dnode? {
        if case .present(let dnode) = lookup(object) { return dnode }
        return nil
    }

    /// Runs `body` on the cached dnode in place, without copying it (no retain of its arrays),
    /// under the shard's lock (keep it short: no I/O, no other cache call). Nil when `object` is
    /// not cached or destroyed. The hot path: one lock, one probe of the bucket array, one read
    /// of the entry. Inlinable, so it is specialized for the caller's closure and result type
    /// in other modules too (unspecialized, the generic result and closure calls made a lookup
    /// several times longer than the lookup itself; see the theory comment).
    @inlinable
    public func withDnode<Result>(_ object: UInt64, _ body: (borrowing Dnode) -> Result) -> Result? {
        shard(for: object).pointee.withLock { shard -> Result? in
            guard let dnodePointer = shard.presentDnode(object) else { return nil }
            // `body(dnodePointer.pointee)` would copy (retain its arrays, release them after):
            // the compiler cannot prove the memory under an unsafe pointer stays put during the
            // call. Moving the dnode out into a local and back (bitwise, no reference counting)
            // lends `body` a value it can borrow; the lock keeps anyone from seeing the slot
            // while it is moved out. Once this closure and `body` are inlined into the caller
            // (this closure is kept small for that), the optimizer drops the moves of the fields
            // `body` does not read.
            let dnode = dnodePointer.move()
            defer { dnodePointer.initialize(to: dnode) }
            return body(dnode)
        }
    }

    // MARK: Changes

    /// Caches a dnode read from disk (clean). Keeps the cached entry when there is one: the cache
    /// is newer than the disk. Returns what is cached afterwards.
    @discardableResult
    public func insertClean(_ dnode: Dnode) -> CachedDnode {
        shard(for: dnode.objectNumber).pointee.withLock { shard -> CachedDnode in
            let slot = shard.slot(of: dnode.objectNumber)
            if slot >= 0 {
                let entry = shard.entries + slot
                return entry.pointee.state == .present ? .present(entry.pointee.dnode) : .destroyed
            }
            Self.insert(Entry(state: .present, referenced: false, chargedBytes: 0, dirtyCheckpoint: 0, dnode: dnode), into: &shard)
            return .present(dnode)
        }
    }

    /// Stores a changed (or created) dnode, dirty until checkpoint `checkpoint` is durable.
    public func update(_ dnode: Dnode, dirtyIn checkpoint: UInt64) {
        precondition(checkpoint > 0, "object \(dnode.objectNumber): dirty in checkpoint 0")
        store(object: dnode.objectNumber, dnode: dnode, checkpoint: checkpoint)
    }

    /// Records that `object` was destroyed; the checkpoint `checkpoint` writes its slot free.
    public func destroy(_ object: UInt64, dirtyIn checkpoint: UInt64) {
        precondition(checkpoint > 0, "object \(object): destroyed in checkpoint 0")
        store(object: object, dnode: nil, checkpoint: checkpoint)
    }

    private func store(object: UInt64, dnode: Dnode?, checkpoint: UInt64) {
        let newEntry = Entry(state: dnode == nil ? .destroyed : .present, referenced: true, chargedBytes: 0, dirtyCheckpoint: checkpoint,
                             dnode: dnode ?? Dnode(objectNumber: object, type: .regular))
        shard(for: object).pointee.withLock { shard in
            let slot = shard.slot(of: object)
            guard slot >= 0 else {
                Self.insert(newEntry, into: &shard)
                return
            }
            let previous = shard.entries[slot]
            precondition(checkpoint >= previous.dirtyCheckpoint,
                         "object \(object): dirtied in checkpoint \(checkpoint) after checkpoint \(previous.dirtyCheckpoint)")
            Self.uncharge(previous, from: &shard)
            var entry = newEntry
            Self.charge(&entry, to: &shard)
            shard.entries[slot] = entry
            Self.evictIfOverBudget(&shard, protecting: slot)
        }
    }

    /// Drops a clean entry (e.g. its table block was found stale); a dirty one is a programmer error.
    public func invalidate(_ object: UInt64) {
        shard(for: object).pointee.withLock { shard in
            let slot = shard.slot(of: object)
            guard slot >= 0 else { return }
            precondition(shard.entries[slot].dirtyCheckpoint == 0, "object \(object): invalidating a dirty dnode")
            Self.remove(slot: slot, from: &shard)
        }
    }

    // MARK: Checkpoint interface

    /// Every entry a checkpoint `checkpoint` must write (dirty in `checkpoint` or earlier), sorted
    /// by object number so the caller groups them by dnode-table block.
    public func dirtyDnodes(for checkpoint: UInt64) -> [DirtyDnode] {
        var result: [DirtyDnode] = []
        for index in 0 ..< settings.shardCount {
            (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self).pointee.withLock { shard in
                for slot in 0 ..< shard.entryCount {
                    let entry = shard.entries + slot
                    guard entry.pointee.state != .free, entry.pointee.dirtyCheckpoint != 0, entry.pointee.dirtyCheckpoint <= checkpoint else { continue }
                    result.append(DirtyDnode(objectNumber: entry.pointee.objectNumber,
                                             dnode: entry.pointee.state == .present ? entry.pointee.dnode : nil,
                                             checkpoint: entry.pointee.dirtyCheckpoint))
                }
            }
        }
        result.sort { $0.objectNumber < $1.objectNumber }
        return result
    }

    /// Checkpoint `checkpoint` is durable: entries dirty in it or earlier become clean (evictable);
    /// tombstones go. Entries dirtied again for a later checkpoint stay pinned.
    public func markClean(through checkpoint: UInt64) {
        for index in 0 ..< settings.shardCount {
            (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self).pointee.withLock { shard in
                for slot in 0 ..< shard.entryCount {
                    let entry = shard.entries + slot
                    guard entry.pointee.state != .free, entry.pointee.dirtyCheckpoint != 0, entry.pointee.dirtyCheckpoint <= checkpoint else { continue }
                    if entry.pointee.state == .destroyed {
                        Self.remove(slot: slot, from: &shard)
                        continue
                    }
                    Self.uncharge(entry.pointee, from: &shard)
                    entry.pointee.dirtyCheckpoint = 0
                    Self.charge(&entry.pointee, to: &shard)
                }
                Self.evictIfOverBudget(&shard, protecting: nil)
            }
        }
    }

    public var statistics: DnodeCacheStatistics {
        var total = DnodeCacheStatistics()
        for index in 0 ..< settings.shardCount {
            let part = (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self).pointee.withLock { $0.statistics }
            total.hits += part.hits
            total.misses += part.misses
            total.evictions += part.evictions
            total.insertions += part.insertions
            total.overBudgetInserts += part.overBudgetInserts
            total.cachedCount += part.cachedCount
            total.dirtyCount += part.dirtyCount
            total.residentBytes += part.residentBytes
            total.dirtyBytes += part.dirtyBytes
        }
        return total
    }

    // MARK: Shard internals (called with the shard's lock held)

    private static func charge(_ entry: inout Entry, to shard: inout Shard) {
        let bytes = entryOverheadBytes + (entry.state == .present ? entry.dnode.residentBytes - MemoryLayout<Dnode>.stride : 0)
        precondition(bytes > 0 && bytes <= Int(UInt32.max), "object \(entry.objectNumber): \(bytes) bytes to charge")
        entry.chargedBytes = UInt32(bytes)
        shard.residentBytes += bytes
        if entry.dirtyCheckpoint != 0 {
            shard.dirtyBytes += bytes
            shard.dirtyCount += 1
        }
        shard.statistics.residentBytes = shard.residentBytes
        shard.statistics.dirtyBytes = shard.dirtyBytes
        shard.statistics.dirtyCount = shard.dirtyCount
    }

    private static func uncharge(_ entry: borrowing Entry, from shard: inout Shard) {
        shard.residentBytes -= Int(entry.chargedBytes)
        if entry.dirtyCheckpoint != 0 {
            shard.dirtyBytes -= Int(entry.chargedBytes)
            shard.dirtyCount -= 1
        }
        precondition(shard.residentBytes >= 0 && shard.dirtyBytes >= 0 && shard.dirtyCount >= 0, "dnode cache accounting went negative")
        shard.statistics.residentBytes = shard.residentBytes
        shard.statistics.dirtyBytes = shard.dirtyBytes
        shard.statistics.dirtyCount = shard.dirtyCount
    }

    private static func insert(_ newEntry: Entry, into shard: inout Shard) {
        precondition(newEntry.state != .free, "object \(newEntry.objectNumber): inserting a free entry")
        var entry = newEntry
        charge(&entry, to: &shard)
        let slot = shard.allocateSlot()
        shard.entries[slot] = entry
        shard.insertBucket(entry.objectNumber, slot: slot)
        shard.statistics.insertions += 1
        evictIfOverBudget(&shard, protecting: slot)
    }

    private static func remove(slot: Int, from shard: inout Shard) {
        precondition(shard.entries[slot].state != .free, "removing free dnode-cache slot \(slot)")
        uncharge(shard.entries[slot], from: &shard)
        shard.removeBucket(shard.entries[slot].objectNumber)
        shard.releaseSlot(slot)
    }

    /// CLOCK sweep until the shard is within budget; at most two passes (the first clears
    /// reference bits). Dirty entries and `protecting` are skipped.
    private static func evictIfOverBudget(_ shard: inout Shard, protecting: Int?) {
        guard shard.residentBytes > shard.budgetBytes else { return }
        var steps = 2 * shard.entryCount
        while shard.residentBytes > shard.budgetBytes && steps > 0 {
            steps -= 1
            let slot = shard.hand
            shard.hand = (shard.hand + 1) % shard.entryCount
            let entry = shard.entries + slot
            guard slot != protecting, entry.pointee.state == .present, entry.pointee.dirtyCheckpoint == 0 else { continue }
            if entry.pointee.referenced {
                entry.pointee.referenced = false
                continue
            }
            remove(slot: slot, from: &shard)
            shard.statistics.evictions += 1
        }
        if shard.residentBytes > shard.budgetBytes { shard.statistics.overBudgetInserts += 1 }
    }
}
