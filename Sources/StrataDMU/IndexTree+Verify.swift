// IndexTree+Verify — the full structural check `strata pool check` runs on every index.
//
// Theory. `verify()` walks the whole tree depth first, reading every on-disk node straight from
// the store (not from the cache, so each block's checksum is verified against its parent's
// pointer now, not when it was cached) and the dirty nodes from memory. It checks, per node:
// the format (as every read does), the level (children one level below their parent, leaves at
// level 0, so all leaves are at the same depth), keys strictly increasing, every key inside the
// bounds its parent's separators give, a branch's first separator equal to its lower bound, the
// minimum fill for every node but the root, and at least two children for a root branch; and
// for the tree, that the leaves hold as many entries as the root's count says. It returns every
// block pointer the tree references, so the pool checker can count each block's references
// across all structures, and every problem found (it keeps going past a bad subtree).
// It changes nothing and does not disturb the cache.

import StrataPool

/// The result of `IndexTree.verify()`.
public struct IndexTreeCheck: Sendable {
    /// Every block the tree references (clean nodes; dirty nodes have no place yet), root first.
    public var blockPointers: [BlockPointer] = []
    /// Entries found in the leaves.
    public var entryCount = 0
    public var nodeCount = 0
    public var leafCount = 0
    /// Levels, counting the leaves.
    public var depth = 0
    /// Slot and entry bytes over all nodes, as a fraction of their payload.
    public var fillRatio = 0.0
    public var problems: [IndexTreeError] = []
    public var isClean: Bool { problems.isEmpty }
}

extension IndexTree {
    /// Checks every invariant of the tree; see the theory above.
    public func verify() -> IndexTreeCheck {
        var check = IndexTreeCheck()
        check.depth = root.level + 1
        if !root.isDirty { check.blockPointers.append(rootPointer) }
        var usedBytes = 0
        var seen = Set<IndexNodeCache.NodeAddress>()
        verifyNode(root, pointer: root.isDirty ? nil : rootPointer, level: root.level, lower: [], upper: nil,
                   isRoot: true, check: &check, usedBytes: &usedBytes, seen: &seen)
        if root.page.treeEntryCount != UInt64(count) && !root.isDirty {
            check.problems.append(.invariant(tree: name, pointer: rootPointer, message: "root says \(root.page.treeEntryCount) entries, the tree counts \(count)"))
        }
        if check.entryCount != count {
            check.problems.append(.invariant(tree: name, pointer: nil, message: "leaves hold \(check.entryCount) entries, the tree counts \(count)"))
        }
        if check.nodeCount > 0 { check.fillRatio = Double(usedBytes) / Double(check.nodeCount * IndexNodeFormat.payloadBytes) }
        return check
    }

    private func verifyNode(_ node: IndexNode, pointer: BlockPointer?, level: Int, lower: [UInt8], upper: [UInt8]?, isRoot: Bool,
                            check: inout IndexTreeCheck, usedBytes: inout Int, seen: inout Set<IndexNodeCache.NodeAddress>) {
        func problem(_ message: String) { check.problems.append(.invariant(tree: name, pointer: pointer, message: message)) }
        let page = node.page
        check.nodeCount += 1
        usedBytes += page.usedBytes
        if node.isDirty {
            // Dirty nodes are not canonical (garbage, stale child pointers): check what they mean.
            if page.level != level { problem("level \(page.level), expected \(level)") }
            if page.level > 0 && node.children.count != page.count { problem("\(node.children.count) dirty-child slots for \(page.count) entries") }
        } else if let formatProblem = page.formatProblem(expectedLevel: level, isRoot: isRoot) {
            problem(formatProblem)
            return
        }
        if !isRoot && page.usedBytes < IndexNodeFormat.fillBytesMin {
            problem("holds \(page.usedBytes) bytes, below the minimum fill of \(IndexNodeFormat.fillBytesMin)")
        }
        if isRoot && page.level > 0 && page.count < 2 { problem("root branch with \(page.count) children") }
        lower.withUnsafeBytes { lowerBytes in
            for slot in 0..<page.count {
                let key = page.key(slot)
                if slot > 0 && compareKeys(page.key(slot - 1), key) >= 0 { problem("keys of slots \(slot - 1) and \(slot) out of order") }
                if compareKeys(key, lowerBytes) < 0 { problem("key \(IndexTreeError.show([UInt8](key))) below the node's lower bound \(IndexTreeError.show(lower))") }
                if let upper, upper.withUnsafeBytes({ compareKeys(key, $0) >= 0 }) {
                    problem("key \(IndexTreeError.show([UInt8](key))) not below the node's upper bound \(IndexTreeError.show(upper))")
                }
            }
            if page.level > 0, page.count > 0, compareKeys(page.key(0), lowerBytes) != 0 {
                problem("first separator \(IndexTreeError.show([UInt8](page.key(0)))) is not the node's lower bound \(IndexTreeError.show(lower))")
            }
        }
        if page.level == 0 {
            check.leafCount += 1
            check.entryCount += page.count
            return
        }
        for slot in 0..<page.count {
            let childLower = [UInt8](page.key(slot))
            let childUpper = slot + 1 < page.count ? [UInt8](page.key(slot + 1)) : upper
            if node.isDirty, let child = node.children[slot] {
                verifyNode(child, pointer: nil, level: level - 1, lower: childLower, upper: childUpper, isRoot: false,
                           check: &check, usedBytes: &usedBytes, seen: &seen)
                continue
            }
            let childPointer = page.childPointer(slot)
            if !seen.insert(IndexNodeCache.NodeAddress(childPointer)).inserted {
                problem("child \(slot) at offset \(childPointer.offsetBytes) is referenced twice")
                continue
            }
            check.blockPointers.append(childPointer)
            let child: IndexNode
            do {
                child = try IndexTree.read(childPointer, level: nil, isRoot: false, store: store, name: name)
            } catch {
                check.problems.append(error)
                continue
            }
            verifyNode(child, pointer: childPointer, level: level - 1, lower: childLower, upper: childUpper, isRoot: false,
                       check: &check, usedBytes: &usedBytes, seen: &seen)
        }
    }

    /// Debug check of the in-memory bookkeeping: pinned nodes are the root and the dirty nodes,
    /// and every dirty node's parent is dirty. Cost: one walk over the dirty nodes.
    func checkPinnedAccounting() -> Bool {
        func dirtyCount(_ node: IndexNode) -> Int {
            guard node.isDirty else { return 0 }
            var total = 1
            for child in node.children { if let child { total += dirtyCount(child) } }
            return total
        }
        let dirty = dirtyCount(root)
        return pinnedNodeCount == (root.isDirty ? dirty : 1)
    }
}
