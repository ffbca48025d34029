// IndexTree — a key-value index object: a copy-on-write B+tree of byte-string keys (the ZAP
// analogue). It backs the object index (FID → dnode), directories (name → FID + type, so readdir
// needs no dnode reads) and Lustre's other indexes (quota, FLD, nodemap, user indexes).
//
// Theory.
// What it stores: entries (key, value) with keys of 0...255 bytes ordered as memcmp orders them
// and values of 0...1,024 bytes, in 4 KiB nodes (IndexNode.swift has the byte layout). Leaves
// hold entries; branches hold (separator, child pointer) pairs, where a separator is the lowest
// key its child may hold and a branch's first separator is its own lower bound.
//
// Invariants (checked by `verify()`, and in part on every read and in debug builds on every
// change): keys are strictly increasing within a node and across nodes; every key of child i
// lies in [separator i, separator i+1); every leaf is at level 0 and every branch at level
// n has children at level n-1, so all leaves are at the same depth; every node but the root
// holds at least `IndexNodeFormat.fillBytesMin` bytes (34 % of the payload) and a root branch
// has at least two children; the root's header holds the tree's entry count.
//
// Changes: an insert that does not fit splits the node into two halves (balanced, or, for an
// append at the end of a node, leaving the right half just above the minimum, so sequential
// keys such as FIDs fill nodes to ~2/3 instead of 1/2) and inserts the new right node's first key
// into the parent, up to a new root. A delete that leaves a node below the minimum merges it
// with a neighbour when both fit in one node, and otherwise redistributes the two evenly and
// replaces the separator in the parent (which can in turn split or underflow the parent). Every
// operation does all of its reads (the path, and the neighbours a rebalance may need) before
// its first change, so a read error leaves the tree unchanged.
//
// Crash safety: copy-on-write. A node changed since the last checkpoint is dirty and only in
// memory; the blocks of the last checkpoint are never written. `flush()` writes every dirty
// node bottom-up to a newly allocated place (`MetadataStore.writeNew`), stores each child's new
// pointer — with its crc32c — in the parent, frees the places the old versions occupied, and
// returns the root pointer for the checkpoint's uberblock or parent dnode. A crash before the
// checkpoint commits leaves the previous checkpoint's tree intact (its blocks are freed only
// in the pool's deferred way); the intent log carries the operations in between. A read checks
// the block against the checksum in its parent's pointer and then against the node format.
//
// Concurrency: a tree is used by one thread at a time (the OSD holds the object's lock); one
// IndexTree per index object. Several trees can share an IndexNodeCache.

import StrataIO
import StrataPool

/// Whether `insert` may replace an existing entry (Lustre's DT_IND_UPDATE).
public enum IndexInsertMode: Sendable {
    /// Fail with `IndexTreeError.keyExists` when the key is present.
    case mustNotExist
    /// Insert, or replace the value of the present key.
    case upsert
}

public final class IndexTree {
    // MARK: Limits

    /// Longest key: 255 bytes, a file name (NAME_MAX) and Lustre's `ddp_max_name_len`; the key
    /// length is one byte in the node format.
    public static let keyBytesMax = 255
    /// Longest value: 1 KiB. The records Lustre keeps in indexes are small (an OI record and a
    /// directory entry's FID + type are under 32 bytes, quota and FLD records under 64, nodemap
    /// records a few hundred); anything bigger belongs in an object whose FID the value holds.
    /// With 255-byte keys a leaf still takes three maximal entries, which is what lets every
    /// split and merge keep all nodes above the minimum fill (34 %).
    public static let valueBytesMax = 1024
    /// Node size: 4 KiB, the metadata block size of the pool (DESIGN.md) and the device's
    /// logical block. Copy-on-write rewrites a whole node per checkpoint in which it changed, so
    /// small nodes keep the write amplification of scattered updates (directory entries, OI
    /// inserts from many clients) low; with 40-byte keys a branch still fans out ~60–90 ways,
    /// so a million entries are 4 levels deep and the upper levels stay cached.
    public static let nodeBytes = 4096

    // MARK: State

    /// Names the tree in errors (for example "oi.3" or a directory's FID).
    public let name: String
    public let store: any MetadataStore
    public let cache: IndexNodeCache
    var root: IndexNode
    /// Entries in the tree.
    public private(set) var count: Int
    /// The root pointer of the last flush (or of the load); null for a tree never flushed.
    public private(set) var rootPointer: BlockPointer
    /// Places of nodes dropped since the last flush (merged away, collapsed roots), freed by it.
    var pendingFrees: [BlockPointer] = []
    /// Nodes this tree pins in the cache: its root and every dirty node.
    var pinnedNodeCount = 0
    var isIterating = false
    /// Bumped by every change (iterators and debug checks).
    public private(set) var changeCount: UInt64 = 0

    // The path of the current operation: nodes from the root down, and each node's slot in its
    // parent; the neighbours a rebalance will need, by depth. Reused, so that an operation
    // allocates nothing.
    var pathNodes: [IndexNode] = []
    var pathSlots: [Int] = []
    var heldNeighbours: [IndexNode?] = []
    // Scratch: a node page (compaction, splits), a second page (redistribution), an entry.
    let scratchPage: UnsafeMutableRawBufferPointer
    let scratchPage2: UnsafeMutableRawBufferPointer
    let entryScratch: UnsafeMutableRawBufferPointer
    let separatorScratch: UnsafeMutableRawBufferPointer
    let keyScratch: UnsafeMutableRawBufferPointer

    /// A new, empty tree (a dirty, empty root leaf; the first `flush` writes it).
    public init(store: any MetadataStore, name: String, cache: IndexNodeCache = IndexNodeCache()) {
        self.store = store
        self.name = name
        self.cache = cache
        root = IndexNode(level: 0)
        count = 0
        rootPointer = .null
        (scratchPage, scratchPage2, entryScratch, separatorScratch, keyScratch) = IndexTree.allocateScratch()
        pin(1)
    }

    /// The tree whose root is at `root` (a pointer a previous `flush` returned). Reads the root
    /// node now and every other node when an operation first needs it. A null pointer opens a
    /// new, empty tree.
    public init(root: BlockPointer, store: any MetadataStore, name: String, cache: IndexNodeCache = IndexNodeCache()) throws(IndexTreeError) {
        self.store = store
        self.name = name
        self.cache = cache
        (scratchPage, scratchPage2, entryScratch, separatorScratch, keyScratch) = IndexTree.allocateScratch()
        if root.isNull {
            self.root = IndexNode(level: 0)
            count = 0
            rootPointer = .null
        } else {
            let node = try IndexTree.read(root, level: nil, isRoot: true, store: store, name: name)
            self.root = node
            count = Int(node.page.treeEntryCount)
            rootPointer = root
        }
        pin(1)
    }

    deinit {
        cache.pin(nodes: -pinnedNodeCount)
        for buffer in [scratchPage, scratchPage2, entryScratch, separatorScratch, keyScratch] { buffer.deallocate() }
    }

    private static func allocateScratch() -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer,
                                              UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        (.allocate(byteCount: nodeBytes, alignment: 64), .allocate(byteCount: nodeBytes, alignment: 64),
         .allocate(byteCount: IndexNodeFormat.leafEntryBytesMax, alignment: 8),
         .allocate(byteCount: IndexNodeFormat.branchEntryBytesMax, alignment: 8),
         .allocate(byteCount: keyBytesMax, alignment: 8))
    }

    /// True when something changed since the last flush.
    public var isDirty: Bool { root.isDirty }

    /// Levels of the tree: 1 for a lone root leaf.
    public var depth: Int { root.level + 1 }

    func pin(_ nodes: Int) {
        pinnedNodeCount += nodes
        precondition(pinnedNodeCount >= 1, "tree \(name) pins \(pinnedNodeCount) nodes")
        cache.pin(nodes: nodes)
    }

    // MARK: Reading nodes

    /// Reads and checks the node at `pointer` from the store (not through the cache).
    static func read(_ pointer: BlockPointer, level: Int?, isRoot: Bool, store: any MetadataStore, name: String) throws(IndexTreeError) -> IndexNode {
        if let problem = pointer.formatProblem { throw .store(tree: name, pointer: pointer, .unreadablePointer(pointer: pointer, problem: problem)) }
        guard pointer.lengthBytes == UInt64(nodeBytes) else {
            throw .malformedNode(tree: name, pointer: pointer, reason: "pointer length \(pointer.lengthBytes), nodes are \(nodeBytes) bytes")
        }
        let node = IndexNode(loadingFrom: pointer)
        do {
            try store.read(pointer, into: node.page.bytes)
        } catch {
            if case .checksumMismatch(_, _, let found) = error { throw .checksumMismatch(tree: name, pointer: pointer, found: found) }
            throw .store(tree: name, pointer: pointer, error)
        }
        if let problem = node.page.formatProblem(expectedLevel: level, isRoot: isRoot) {
            throw .malformedNode(tree: name, pointer: pointer, reason: problem)
        }
        return node
    }

    /// Child `slot` of branch `node`: its dirty child, else the cached or freshly read node.
    @inline(__always)
    func child(of node: IndexNode, at slot: Int) throws(IndexTreeError) -> IndexNode {
        if node.isDirty, let child = node.children[slot] { return child }
        let pointer = node.page.childPointer(slot)
        if let cached = cache.lookup(pointer) {
            assert(cached.level == node.level - 1, "cached child at the wrong level")
            return cached
        }
        let loaded = try IndexTree.read(pointer, level: node.level - 1, isRoot: false, store: store, name: name)
        cache.insert(loaded)
        return loaded
    }

    /// Fills the path from the root to the leaf whose range holds `key`.
    func descend(to key: UnsafeRawBufferPointer) throws(IndexTreeError) {
        pathNodes.removeAll(keepingCapacity: true)
        pathSlots.removeAll(keepingCapacity: true)
        var node = root
        pathNodes.append(node)
        pathSlots.append(0)
        while node.level > 0 {
            let slot = node.page.childIndex(for: key)
            node = try child(of: node, at: slot)
            pathNodes.append(node)
            pathSlots.append(slot)
            precondition(pathNodes.count <= IndexNodeFormat.levelMax + 1, "index \(name): descent deeper than \(IndexNodeFormat.levelMax) levels")
        }
        assert(pathNodes.count == root.level + 1, "path length \(pathNodes.count) for a tree of depth \(root.level + 1)")
    }

    /// Copies a caller's key into the key scratch buffer.
    func stage(_ key: [UInt8]) -> UnsafeRawBufferPointer {
        precondition(key.count <= IndexTree.keyBytesMax, "staging an oversized key")
        let target = UnsafeMutableRawBufferPointer(rebasing: keyScratch[0..<key.count])
        target.copyBytes(from: key)
        return UnsafeRawBufferPointer(target)
    }

    func checkKey(_ key: [UInt8]) throws(IndexTreeError) {
        guard key.count <= IndexTree.keyBytesMax else {
            throw .keyTooLong(tree: name, keyBytes: key.count, keyBytesMax: IndexTree.keyBytesMax)
        }
    }

    // MARK: Lookup

    /// The value stored under `key`, or nil when there is none (Lustre's dio_lookup, -ENOENT).
    public func lookup(_ key: [UInt8]) throws(IndexTreeError) -> [UInt8]? {
        try withValue(forKey: key) { value in value.map { [UInt8]($0) } }
    }

    /// Calls `body` with the value stored under `key` (nil when there is none) without copying
    /// it; the buffer is valid only during the call.
    public func withValue<Result>(forKey key: [UInt8], _ body: (UnsafeRawBufferPointer?) -> Result) throws(IndexTreeError) -> Result {
        try checkKey(key)
        let keyBytes = stage(key)
        var node = root
        while node.level > 0 {
            node = try child(of: node, at: node.page.childIndex(for: keyBytes))
        }
        let (slot, found) = node.page.lowerBound(keyBytes)
        return body(found ? node.page.value(slot) : nil)
    }

    /// Whether `key` is present.
    public func contains(_ key: [UInt8]) throws(IndexTreeError) -> Bool {
        try withValue(forKey: key) { $0 != nil }
    }

    // MARK: Insert and delete

    /// Inserts `value` under `key`; with `.mustNotExist` a present key fails with `keyExists`,
    /// with `.upsert` its value is replaced. Nothing changes when it throws.
    public func insert(_ key: [UInt8], _ value: [UInt8], mode: IndexInsertMode = .mustNotExist) throws(IndexTreeError) {
        precondition(!isIterating, "index \(name): insert while iterating")
        try checkKey(key)
        guard value.count <= IndexTree.valueBytesMax else {
            throw .valueTooLong(tree: name, key: key, valueBytes: value.count, valueBytesMax: IndexTree.valueBytesMax)
        }
        let entry = IndexNodePage.encodeLeafEntry(key: key, value: value, into: entryScratch)
        let keyBytes = UnsafeRawBufferPointer(rebasing: entry[IndexNodeFormat.leafEntryHeaderBytes..<(IndexNodeFormat.leafEntryHeaderBytes + key.count)])
        try descend(to: keyBytes)
        let leaf = pathNodes[pathNodes.count - 1]
        let (slot, found) = leaf.page.lowerBound(keyBytes)
        var shrinkBytes = 0
        if found {
            guard mode == .upsert else { throw .keyExists(tree: name, key: key) }
            let old = leaf.page.value(slot)
            if old.elementsEqual(value) { return }                 // an unchanged tree writes nothing
            shrinkBytes = Swift.max(0, old.count - value.count)
            if shrinkBytes > 0 { try holdNeighbours(leafLossBytes: shrinkBytes) }
        }
        // No I/O from here on: the change cannot fail half-way.
        dirtyPath()
        changeCount &+= 1
        if found {
            leaf.page.remove(at: slot)
        } else {
            count += 1
        }
        let split = insertEntry(entry, child: nil, depth: pathNodes.count - 1, slot: slot)
        assert(split || compareKeys(leaf.page.key(slot), keyBytes) == 0, "inserted key not at its slot")
        if !split && shrinkBytes > 0 { rebalance(fromDepth: pathNodes.count - 1) }
    }

    /// Removes `key` and its value; `keyNotFound` when absent (nothing changes).
    public func delete(_ key: [UInt8]) throws(IndexTreeError) {
        precondition(!isIterating, "index \(name): delete while iterating")
        try checkKey(key)
        let keyBytes = stage(key)
        try descend(to: keyBytes)
        let leaf = pathNodes[pathNodes.count - 1]
        let (slot, found) = leaf.page.lowerBound(keyBytes)
        guard found else { throw .keyNotFound(tree: name, key: key) }
        try holdNeighbours(leafLossBytes: leaf.page.entry(slot).count + IndexNodeFormat.slotBytes)
        dirtyPath()
        changeCount &+= 1
        leaf.page.remove(at: slot)
        count -= 1
        rebalance(fromDepth: pathNodes.count - 1)
        assert(count >= 0, "negative entry count")
    }

    // MARK: Dirtying

    /// Makes `node` dirty: out of the cache, pinned, and held by its (dirty) parent at `slot`.
    func markDirty(_ node: IndexNode, parent: IndexNode?, slot: Int) {
        guard !node.isDirty else {
            assert(parent == nil || parent!.children[slot] === node, "dirty child not held by its parent")
            return
        }
        precondition(parent == nil || parent!.isDirty, "dirtying a node under a clean parent")
        if node.isCached { cache.remove(node) }
        node.isDirty = true
        if node !== root { pin(1) }
        if node.level > 0 { node.children = Array(repeating: nil, count: node.page.count) }
        parent?.children[slot] = node
    }

    /// Dirties the current path from the root down.
    func dirtyPath() {
        for depth in 0..<pathNodes.count {
            markDirty(pathNodes[depth], parent: depth > 0 ? pathNodes[depth - 1] : nil, slot: pathSlots[depth])
        }
    }

    /// Drops a dirty node that is no longer in the tree; its old place is freed at the flush.
    func discard(_ node: IndexNode) {
        precondition(node.isDirty && node !== root, "discarding a clean node or the root")
        if !node.pointer.isNull { pendingFrees.append(node.pointer) }
        node.children = []
        node.isDirty = false
        node.pointer = .null
        pin(-1)
    }

    // MARK: Flush

    /// Writes every dirty node to a new place, bottom-up, frees the places of their previous
    /// versions and of dropped nodes, and returns the root pointer. An unchanged tree writes
    /// nothing and returns the same root pointer. After a store error the tree is still whole and
    /// dirty where not yet written; flushing again continues.
    @discardableResult
    public func flush() throws(IndexTreeError) -> BlockPointer {
        precondition(!isIterating, "index \(name): flush while iterating")
        guard root.isDirty else {
            assert(pendingFrees.isEmpty, "frees pending in a clean tree")
            return rootPointer
        }
        let pinnedBefore = pinnedNodeCount
        rootPointer = try write(root, isRoot: true)
        for pointer in pendingFrees { store.free(pointer) }
        pendingFrees.removeAll()
        assert(pinnedNodeCount == 1 && pinnedBefore >= 1, "dirty nodes left after a flush")
        return rootPointer
    }

    private func write(_ node: IndexNode, isRoot: Bool) throws(IndexTreeError) -> BlockPointer {
        precondition(node.isDirty, "writing a clean node")
        if node.level > 0 {
            for slot in 0..<node.page.count {
                guard let child = node.children[slot] else { continue }
                let pointer = try write(child, isRoot: false)
                node.page.setChildPointer(slot, pointer)
                node.children[slot] = nil
                pin(-1)
                cache.insert(child)
            }
        }
        node.page.compact(scratch: scratchPage)
        node.page.treeEntryCount = isRoot ? UInt64(count) : 0
        assert(node.page.formatProblem(expectedLevel: node.level, isRoot: isRoot) == nil,
               "index \(name): writing a malformed node: \(node.page.formatProblem(expectedLevel: node.level, isRoot: isRoot) ?? "")")
        let written: BlockPointer
        do {
            written = try store.writeNew(UnsafeRawBufferPointer(node.page.bytes))
        } catch {
            throw .store(tree: name, pointer: nil, error)
        }
        precondition(written.lengthBytes == UInt64(IndexTree.nodeBytes), "store wrote \(written.lengthBytes) bytes for a node")
        if !node.pointer.isNull { store.free(node.pointer) }
        node.pointer = written
        node.isDirty = false
        node.children = []
        return written
    }
}
