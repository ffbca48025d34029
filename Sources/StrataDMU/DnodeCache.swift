// DnodeCache — the in-memory dnodes, keyed by object number, under a memory bound.
//
// Theory. Every operation on an object starts with its dnode, so the cache sits on the metadata
// hot path: a cached lookup must cost one uncontended lock, one hash probe and a copy, and allocate
// nothing. The cache holds two kinds of entries:
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
// Memory bound: each entry is charged its slot (`Entry` stride), its share of the hash table, and
// the heap its dnode holds (`Dnode.residentBytes`). When dirty entries alone exceed a shard's
// share the bound is exceeded (they cannot go); `statistics.dirtyBytes` tells the checkpoint
// trigger to run, and `overBudgetInserts` counts those events.
//
// Crash safety: nothing here is durable. A crash loses the cache; dirty dnodes are rebuilt by log
// replay on the next import.

import Synchronization

/// Settings of the dnode cache, each with its reason.
public struct DnodeCacheSettings: Sendable, Equatable {
    /// Memory for cached dnodes and their index. 256 MiB holds ~900k dnodes of the typical
    /// Lustre shape (LMA + layout inline, ~290 B each): the working set of a busy MDT without
    /// taking a large share of a server's memory. Bytes.
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

    /// A slot. Stored non-optional, with the dnode inline and flags for "vacant" and
    /// "tombstone": a lookup then touches the slot in place and lends the dnode to `withDnode`
    /// without a copy (an `Entry?` slot is copied whole on access, retaining the dnode's arrays:
    /// a cache miss each, which dominated lookups at 100k+ dnodes).
    struct Entry {
        var objectNumber: UInt64
        /// The dnode; `Entry.placeholder` for a tombstone or a vacant slot.
        var dnode: Dnode
        /// 0 when clean, else the checkpoint that must write this entry.
        var dirtyCheckpoint: UInt64
        var chargedBytes: Int
        var referenced: Bool
        /// A destroyed-object tombstone.
        var isDestroyed: Bool
        var isOccupied: Bool

        static let placeholder = Dnode(objectNumber: 0, type: .regular)
        static let vacant = Entry(objectNumber: 0, dnode: nil, dirtyCheckpoint: 0, chargedBytes: 0, referenced: false, isOccupied: false)

        init(objectNumber: UInt64, dnode: Dnode?, dirtyCheckpoint: UInt64, chargedBytes: Int, referenced: Bool, isOccupied: Bool = true) {
            self.objectNumber = objectNumber
            self.dnode = dnode ?? Entry.placeholder
            self.isDestroyed = dnode == nil
            self.dirtyCheckpoint = dirtyCheckpoint
            self.chargedBytes = chargedBytes
            self.referenced = referenced
            self.isOccupied = isOccupied
        }

        /// The dnode, or nil for a tombstone (a copy: not for the hot path).
        var storedDnode: Dnode? { isDestroyed ? nil : dnode }

        mutating func set(_ newDnode: Dnode?) {
            dnode = newDnode ?? Entry.placeholder
            isDestroyed = newDnode == nil
        }
    }

    struct Shard {
        var index = DnodeIndexTable()
        var slots: [Entry] = []
        var freeSlots: [Int32] = []
        var hand = 0
        var budgetBytes: Int
        var residentBytes = 0
        var dirtyBytes = 0
        var dirtyCount = 0
        var statistics = DnodeCacheStatistics()
    }

    public let settings: DnodeCacheSettings
    private let shardBits: Int
    private let shardStride: Int
    private let shards: UnsafeMutableRawPointer

    /// Bytes charged per entry besides its dnode's heap: the slot and the hash table's share
    /// (key + value at a load factor of at most 3/4, plus growth slack).
    static let entryOverheadBytes = MemoryLayout<Entry?>.stride + 32

    public init(settings: DnodeCacheSettings = DnodeCacheSettings()) {
        precondition(settings.shardCount > 0 && settings.shardCount & (settings.shardCount - 1) == 0 && settings.shardCount <= 1024,
                     "shard count \(settings.shardCount) is not a power of two in 1...1024")
        precondition(settings.memoryBytesMax >= settings.shardCount * 4096, "dnode cache bound \(settings.memoryBytesMax) bytes is too small")
        self.settings = settings
        self.shardBits = settings.shardCount.trailingZeroBitCount
        self.shardStride = (MemoryLayout<Mutex<Shard>>.stride + 127) & ~127
        self.shards = UnsafeMutableRawPointer.allocate(byteCount: shardStride * settings.shardCount, alignment: 128)
        for index in 0 ..< settings.shardCount {
            (shards + index * shardStride).bindMemory(to: Mutex<Shard>.self, capacity: 1)
                .initialize(to: Mutex(Shard(budgetBytes: settings.memoryBytesMax / settings.shardCount)))
        }
    }

    deinit {
        for index in 0 ..< settings.shardCount {
            (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self).deinitialize(count: 1)
        }
        shards.deallocate()
    }

    @inline(__always)
    private func shard(for object: UInt64) -> UnsafeMutablePointer<Mutex<Shard>> {
        let index = shardBits == 0 ? 0 : Int(truncatingIfNeeded: (object &* 0x9E37_79B9_7F4A_7C15) >> UInt64(64 - shardBits))
        return (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self)
    }

    // MARK: Lookups (the hot path)

    /// The cached state of `object`; counts a hit or a miss. Allocates nothing.
    public func lookup(_ object: UInt64) -> CachedDnode {
        shard(for: object).pointee.withLock { shard -> CachedDnode in
            guard let slot = shard.index[object] else {
                shard.statistics.misses &+= 1
                return .absent
            }
            shard.statistics.hits &+= 1
            shard.slots[Int(slot)].referenced = true
            if shard.slots[Int(slot)].isDestroyed { return .destroyed }
            return .present(shard.slots[Int(slot)].dnode)
        }
    }

    /// The cached dnode of `object`, or nil (absent or destroyed).
    public func dnode(_ object: UInt64) -> Dnode? {
        if case .present(let dnode) = lookup(object) { return dnode }
        return nil
    }

    /// Runs `body` on the cached dnode without copying it, under the shard's lock (keep it short:
    /// no I/O, no other cache call). Nil when `object` is not cached or destroyed.
    public func withDnode<Result>(_ object: UInt64, _ body: (borrowing Dnode) -> Result) -> Result? {
        shard(for: object).pointee.withLock { shard -> Result? in
            guard let slot = shard.index[object] else {
                shard.statistics.misses &+= 1
                return nil
            }
            shard.statistics.hits &+= 1
            shard.slots[Int(slot)].referenced = true
            if shard.slots[Int(slot)].isDestroyed { return nil }
            return body(shard.slots[Int(slot)].dnode)
        }
    }

    // MARK: Changes

    /// Caches a dnode read from disk (clean). Keeps the cached entry when there is one: the cache
    /// is newer than the disk. Returns what is cached afterwards.
    @discardableResult
    public func insertClean(_ dnode: Dnode) -> CachedDnode {
        shard(for: dnode.objectNumber).pointee.withLock { shard -> CachedDnode in
            if let slot = shard.index[dnode.objectNumber] {
                let entry = shard.slots[Int(slot)]
                return entry.isDestroyed ? .destroyed : .present(entry.dnode)
            }
            Self.insert(Entry(objectNumber: dnode.objectNumber, dnode: dnode, dirtyCheckpoint: 0, chargedBytes: 0, referenced: false),
                        into: &shard)
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
        shard(for: object).pointee.withLock { shard in
            if let slot = shard.index[object] {
                var entry = shard.slots[Int(slot)]
                precondition(checkpoint >= entry.dirtyCheckpoint,
                             "object \(object): dirtied in checkpoint \(checkpoint) after checkpoint \(entry.dirtyCheckpoint)")
                Self.uncharge(entry, from: &shard)
                entry.set(dnode)
                entry.dirtyCheckpoint = checkpoint
                entry.referenced = true
                Self.charge(&entry, to: &shard)
                shard.slots[Int(slot)] = entry
                Self.evictIfOverBudget(&shard, protecting: Int(slot))
            } else {
                Self.insert(Entry(objectNumber: object, dnode: dnode, dirtyCheckpoint: checkpoint, chargedBytes: 0, referenced: true),
                            into: &shard)
            }
        }
    }

    /// Drops a clean entry (e.g. its table block was found stale); a dirty one is a programmer error.
    public func invalidate(_ object: UInt64) {
        shard(for: object).pointee.withLock { shard in
            guard let slot = shard.index[object] else { return }
            precondition(shard.slots[Int(slot)].dirtyCheckpoint == 0, "object \(object): invalidating a dirty dnode")
            Self.remove(slot: Int(slot), from: &shard)
        }
    }

    // MARK: Checkpoint interface

    /// Every entry a checkpoint `checkpoint` must write (dirty in `checkpoint` or earlier), sorted
    /// by object number so the caller groups them by dnode-table block.
    public func dirtyDnodes(for checkpoint: UInt64) -> [DirtyDnode] {
        var result: [DirtyDnode] = []
        for index in 0 ..< settings.shardCount {
            (shards + index * shardStride).assumingMemoryBound(to: Mutex<Shard>.self).pointee.withLock { shard in
                for entry in shard.slots where entry.isOccupied && entry.dirtyCheckpoint != 0 && entry.dirtyCheckpoint <= checkpoint {
                    result.append(DirtyDnode(objectNumber: entry.objectNumber, dnode: entry.storedDnode, checkpoint: entry.dirtyCheckpoint))
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
                for slot in shard.slots.indices {
                    guard shard.slots[slot].isOccupied, shard.slots[slot].dirtyCheckpoint != 0,
                          shard.slots[slot].dirtyCheckpoint <= checkpoint else { continue }
                    var entry = shard.slots[slot]
                    if entry.isDestroyed {
                        Self.remove(slot: slot, from: &shard)
                        continue
                    }
                    Self.uncharge(entry, from: &shard)
                    entry.dirtyCheckpoint = 0
                    Self.charge(&entry, to: &shard)
                    shard.slots[slot] = entry
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
        entry.chargedBytes = entryOverheadBytes + (entry.isDestroyed ? 0 : entry.dnode.residentBytes - MemoryLayout<Dnode>.stride)
        shard.residentBytes += entry.chargedBytes
        if entry.dirtyCheckpoint != 0 {
            shard.dirtyBytes += entry.chargedBytes
            shard.dirtyCount += 1
        }
        shard.statistics.residentBytes = shard.residentBytes
        shard.statistics.dirtyBytes = shard.dirtyBytes
        shard.statistics.dirtyCount = shard.dirtyCount
    }

    private static func uncharge(_ entry: Entry, from shard: inout Shard) {
        shard.residentBytes -= entry.chargedBytes
        if entry.dirtyCheckpoint != 0 {
            shard.dirtyBytes -= entry.chargedBytes
            shard.dirtyCount -= 1
        }
        precondition(shard.residentBytes >= 0 && shard.dirtyBytes >= 0 && shard.dirtyCount >= 0, "dnode cache accounting went negative")
        shard.statistics.residentBytes = shard.residentBytes
        shard.statistics.dirtyBytes = shard.dirtyBytes
        shard.statistics.dirtyCount = shard.dirtyCount
    }

    private static func insert(_ newEntry: Entry, into shard: inout Shard) {
        var entry = newEntry
        charge(&entry, to: &shard)
        let slot: Int
        if let free = shard.freeSlots.popLast() {
            slot = Int(free)
            precondition(!shard.slots[slot].isOccupied, "free dnode-cache slot \(slot) is occupied")
            shard.slots[slot] = entry
        } else {
            slot = shard.slots.count
            precondition(slot < Int(Int32.max), "dnode cache shard full")
            shard.slots.append(entry)
        }
        shard.index[entry.objectNumber] = Int32(slot)
        shard.statistics.insertions += 1
        shard.statistics.cachedCount = shard.index.count
        evictIfOverBudget(&shard, protecting: slot)
    }

    private static func remove(slot: Int, from shard: inout Shard) {
        let entry = shard.slots[slot]
        precondition(entry.isOccupied, "removing vacant dnode-cache slot \(slot)")
        uncharge(entry, from: &shard)
        shard.index[entry.objectNumber] = nil
        shard.slots[slot] = Entry.vacant
        shard.freeSlots.append(Int32(slot))
        shard.statistics.cachedCount = shard.index.count
    }

    /// CLOCK sweep until the shard is within budget; at most two passes (the first clears
    /// reference bits). Dirty entries and `protecting` are skipped.
    private static func evictIfOverBudget(_ shard: inout Shard, protecting: Int?) {
        guard shard.residentBytes > shard.budgetBytes else { return }
        var steps = 2 * shard.slots.count
        while shard.residentBytes > shard.budgetBytes && steps > 0 {
            steps -= 1
            let slot = shard.hand
            shard.hand = (shard.hand + 1) % shard.slots.count
            guard slot != protecting, shard.slots[slot].isOccupied, shard.slots[slot].dirtyCheckpoint == 0 else { continue }
            if shard.slots[slot].referenced {
                shard.slots[slot].referenced = false
                continue
            }
            remove(slot: slot, from: &shard)
            shard.statistics.evictions += 1
        }
        if shard.residentBytes > shard.budgetBytes { shard.statistics.overBudgetInserts += 1 }
    }
}
