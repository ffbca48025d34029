// IndexNodeCache — the index trees' nodes in memory, under one memory budget.
//
// Theory. Index nodes in memory are of two kinds. Dirty nodes (changed since the last
// checkpoint) and each tree's root are pinned: they exist nowhere else until `flush` writes
// them, so they cannot be dropped. Clean nodes are copies of blocks on disk, found by block
// pointer, and evictable in least-recently-used order. Many trees (the object index, every
// directory, user indexes) share one cache, so one budget bounds them all; a tree reports its
// pinned nodes here, and every insertion of a clean node evicts the oldest clean nodes until
// clean + pinned bytes are within the budget (or no clean node is left: pinned bytes are bounded
// by the checkpoint's dirty-data bound, not by this cache).
//
// Keys are block addresses (device, offset). A cached node's full pointer (length, birth,
// checksum) must match the one asked for, so a block freed and reused can never be served from
// a stale entry; trees also remove a node from the cache the moment they dirty it. Nothing here
// is on disk; after a crash the cache starts empty.
//
// Not thread-safe: the trees sharing a cache are used from one thread at a time (the DMU
// serializes index operations per pool, as it does checkpoints).

import StrataPool

/// The clean index-tree nodes in memory, evicted least recently used first to stay within a
/// memory budget shared by every tree that uses the cache.
public final class IndexNodeCache {
    /// Default budget: 64 MiB, 16,384 nodes of 4 KiB. The interior of a 10-million-entry object
    /// index (about 2 % of its nodes) plus the working set of the leaves fit with room to spare,
    /// so a cached lookup costs no read; the dnode cache and the ARC-like data cache get the rest
    /// of the memory.
    public static let budgetBytesDefault = 64 << 20

    /// What each node counts against the budget: its page (the object and slot bookkeeping,
    /// about 100 bytes, are not counted).
    public static let nodeBytes = IndexTree.nodeBytes

    public struct Statistics: Equatable, Sendable, CustomStringConvertible {
        public var hits: Int
        public var misses: Int
        public var evictions: Int
        public var cleanBytes: Int
        public var pinnedBytes: Int
        public var budgetBytes: Int
        public var residentBytes: Int { cleanBytes + pinnedBytes }

        public var description: String {
            "index node cache: \(hits) hits, \(misses) misses, \(evictions) evictions, \(cleanBytes) clean + \(pinnedBytes) pinned bytes of a \(budgetBytes)-byte budget"
        }
    }

    struct NodeAddress: Hashable {
        var deviceIndex: Int
        var offsetBytes: UInt64
        init(_ pointer: BlockPointer) {
            deviceIndex = pointer.deviceIndex
            offsetBytes = pointer.offsetBytes
        }
    }

    public let budgetBytes: Int
    public private(set) var hits = 0
    public private(set) var misses = 0
    public private(set) var evictions = 0
    public private(set) var cleanBytes = 0
    public private(set) var pinnedBytes = 0
    var nodes: [NodeAddress: IndexNode] = [:]
    unowned(unsafe) var newest: IndexNode? = nil
    unowned(unsafe) var oldest: IndexNode? = nil

    public init(budgetBytes: Int = IndexNodeCache.budgetBytesDefault) {
        precondition(budgetBytes >= 0, "negative cache budget \(budgetBytes)")
        self.budgetBytes = budgetBytes
    }

    public var statistics: Statistics {
        Statistics(hits: hits, misses: misses, evictions: evictions, cleanBytes: cleanBytes,
                   pinnedBytes: pinnedBytes, budgetBytes: budgetBytes)
    }

    public var residentBytes: Int { cleanBytes + pinnedBytes }
    public var cleanNodeCount: Int { nodes.count }

    /// The cached clean node at `pointer` (made most recently used), or nil (a miss).
    @inline(__always)
    func lookup(_ pointer: BlockPointer) -> IndexNode? {
        guard let node = nodes[NodeAddress(pointer)], node.pointer == pointer else {
            misses += 1
            return nil
        }
        assert(node.isCached && !node.isDirty, "cached node must be clean")
        hits += 1
        if newest !== node {
            unlink(node)
            linkNewest(node)
        }
        return node
    }

    /// Adds a clean node (just read or just written) and evicts down to the budget.
    func insert(_ node: IndexNode) {
        precondition(!node.isDirty && !node.isCached && !node.pointer.isNull, "only clean, uncached nodes with a place enter the cache")
        let address = NodeAddress(node.pointer)
        if let previous = nodes[address] { remove(previous) }
        nodes[address] = node
        node.isCached = true
        linkNewest(node)
        cleanBytes += IndexNodeCache.nodeBytes
        evictToBudget()
        assert(cleanBytes == nodes.count * IndexNodeCache.nodeBytes, "clean byte accounting")
    }

    /// Takes a node out of the cache (it is being dirtied or dropped).
    func remove(_ node: IndexNode) {
        precondition(node.isCached, "removing an uncached node")
        let address = NodeAddress(node.pointer)
        precondition(nodes[address] === node, "cache entry does not match its node")
        nodes[address] = nil
        unlink(node)
        node.isCached = false
        cleanBytes -= IndexNodeCache.nodeBytes
    }

    /// Drops every clean node (tests, and a pool export).
    public func removeAll() {
        while let node = oldest { remove(node) }
        assert(nodes.isEmpty && cleanBytes == 0, "cache not empty after removeAll")
    }

    /// Trees report pinned nodes (dirty nodes and their roots) so that the budget sees them.
    func pin(nodes count: Int) {
        pinnedBytes += count * IndexNodeCache.nodeBytes
        precondition(pinnedBytes >= 0, "pinned bytes below zero")
        if count > 0 { evictToBudget() }
    }

    func evictToBudget() {
        while cleanBytes + pinnedBytes > budgetBytes, let victim = oldest {
            remove(victim)
            evictions += 1
        }
    }

    private func linkNewest(_ node: IndexNode) {
        node.lruOlder = newest
        node.lruNewer = nil
        if let newest { newest.lruNewer = node } else { oldest = node }
        newest = node
    }

    private func unlink(_ node: IndexNode) {
        if let newer = node.lruNewer { newer.lruOlder = node.lruOlder } else { newest = node.lruOlder }
        if let older = node.lruOlder { older.lruNewer = node.lruNewer } else { oldest = node.lruNewer }
        node.lruNewer = nil
        node.lruOlder = nil
    }
}
