// IndexTree+Rebalance — splits, merges and redistributions: how the tree keeps its shape.
//
// Theory. Sizes are in bytes (slots + entries), not entries, because keys and values vary in
// length. A node overflows when an entry does not fit its 4,072-byte payload: the node's
// entries plus the new one (at most payload + one maximal entry) are cut into two nodes, and
// the right node's first key goes to the parent as its separator. A node other than the root
// underflows when it holds less than `fillBytesMin`: with a neighbour it either merges (when
// both fit in one node; the parent loses an entry) or redistributes (the two are cut evenly
// again; the parent's separator for the right node is replaced, which may grow or shrink the
// parent). Because entry 0 of a branch carries the branch's lower bound, the right node's first
// key is always the right separator, at every level, and a merge is a plain concatenation.
//
// The cut: among the cuts that leave both halves within [fillBytesMin, payload], the one
// closest to the target (half of the bytes; or, for an insert at the end of a node, a right
// half just above the minimum). Both halves of the balanced cut differ by at most one entry,
// so a valid cut always exists: an overflowing total is at most payload + entryMax and a
// redistributed total at most fillBytesMin + payload, and (payload − entryMax) / 2 ≥
// fillBytesMin, (payload + 2·entryMax) / 2 ≤ payload.
//
// These run after all reads are done (`holdNeighbours` reads the neighbours beforehand), so
// none of them throws: a change is whole or not started. Nothing here touches the disk; the
// dropped nodes' places are freed by the next flush.

import StrataPool

extension IndexTree {
    /// Inserts the encoded `entry` (with `child`, for a branch) at `slot` of the node at `depth`
    /// of the path, splitting up the path as needed. Returns whether the node split.
    @discardableResult
    func insertEntry(_ entry: UnsafeRawBufferPointer, child: IndexNode?, depth: Int, slot: Int) -> Bool {
        let node = pathNodes[depth]
        precondition(node.isDirty && (node.level == 0) == (child == nil), "insert into a clean node, or a child for a leaf")
        if node.page.insert(entry, at: slot, scratch: scratchPage) {
            if node.level > 0 { node.children.insert(child, at: slot) }
            assert(slot == 0 || compareKeys(node.page.key(slot - 1), node.page.key(slot)) < 0, "insert out of order")
            assert(slot + 1 == node.page.count || compareKeys(node.page.key(slot), node.page.key(slot + 1)) < 0, "insert out of order")
            return false
        }
        let right = split(node, inserting: entry, child: child, at: slot)
        let separator = IndexNodePage.encodeBranchEntry(key: right.page.key(0), pointer: .null, into: separatorScratch)
        if depth == 0 {
            growRoot(left: node, right: right, separator: separator)
        } else {
            insertEntry(separator, child: right, depth: depth - 1, slot: pathSlots[depth] + 1)
        }
        return true
    }

    /// Splits `node`, with `entry` inserted at `slot`, into itself (left) and a new right node.
    private func split(_ node: IndexNode, inserting entry: UnsafeRawBufferPointer, child: IndexNode?, at slot: Int) -> IndexNode {
        var entries: [UnsafeRawBufferPointer] = []
        entries.reserveCapacity(node.page.count + 1)
        for index in 0..<node.page.count { entries.append(node.page.entry(index)) }
        entries.insert(entry, at: slot)
        let appending = slot == node.page.count
        let cut = chooseCut(entries, appending: appending)
        let right = IndexNode(level: node.level)
        pin(1)
        right.page.fill(with: entries[cut...])
        let left = IndexNodePage(scratchPage2)
        left.initialize(level: node.level)
        left.fill(with: entries[..<cut])
        node.page.bytes.copyMemory(from: UnsafeRawBufferPointer(scratchPage2))
        if node.level > 0 {
            var children = node.children
            children.insert(child, at: slot)
            node.children = Array(children[..<cut])
            right.children = Array(children[cut...])
        }
        assert(compareKeys(node.page.key(node.page.count - 1), right.page.key(0)) < 0, "split halves out of order")
        return right
    }

    /// A new root above the old root (`left`) and its new sibling.
    private func growRoot(left: IndexNode, right: IndexNode, separator: UnsafeRawBufferPointer) {
        precondition(left === root, "growing the root from a non-root node")
        let newRoot = IndexNode(level: left.level + 1)
        precondition(newRoot.level <= IndexNodeFormat.levelMax, "index \(name): tree higher than \(IndexNodeFormat.levelMax) levels")
        // Entry 0 carries the root's lower bound, the empty key. (Roots grow rarely: a small
        // allocation here is fine, and it leaves the caller's entry scratch alone.)
        var lowerBound = [UInt8](repeating: 0, count: IndexNodeFormat.branchEntryHeaderBytes + IndexNodeFormat.pointerBytes)
        lowerBound.withUnsafeMutableBytes { bytes in
            let entry = IndexNodePage.encodeBranchEntry(key: UnsafeRawBufferPointer(start: nil, count: 0), pointer: left.pointer, into: bytes)
            newRoot.page.fill(with: [entry, separator])
        }
        newRoot.children = [left, right]
        root = newRoot
        pin(1)  // the old root stays pinned as a dirty node; the new root is pinned as the root
        assert(newRoot.page.count == 2 && left.isDirty && right.isDirty, "new root must hold two dirty children")
    }

    /// Picks where to cut `entries` (in order) into two nodes; see the theory above.
    func chooseCut(_ entries: [UnsafeRawBufferPointer], appending: Bool) -> Int {
        var total = 0
        for entry in entries { total += entry.count + IndexNodeFormat.slotBytes }
        let fillMin = IndexNodeFormat.fillBytesMin
        let payload = IndexNodeFormat.payloadBytes
        let target = appending ? total - fillMin - IndexNodeFormat.slotBytes : total / 2
        var best = -1
        var bestDistance = Int.max
        var left = 0
        for cut in 1..<entries.count {
            left += entries[cut - 1].count + IndexNodeFormat.slotBytes
            let right = total - left
            guard left >= fillMin, left <= payload, right >= fillMin, right <= payload else { continue }
            let distance = abs(left - target)
            if distance < bestDistance { best = cut; bestDistance = distance }
        }
        precondition(best > 0, "index \(name): no cut of \(entries.count) entries (\(total) bytes) keeps both halves within \(fillMin)...\(payload)")
        return best
    }

    /// Reads (and holds) the neighbours a delete that removes `leafLossBytes` from the leaf could
    /// need to rebalance, before anything changes. A level that stays above the minimum stops
    /// the cascade; a branch loses at most one maximal branch entry per level.
    func holdNeighbours(leafLossBytes: Int) throws(IndexTreeError) {
        heldNeighbours.removeAll(keepingCapacity: true)
        for _ in 0..<pathNodes.count { heldNeighbours.append(nil) }
        var loss = leafLossBytes
        var depth = pathNodes.count - 1
        while depth > 0 {
            if pathNodes[depth].page.usedBytes - loss >= IndexNodeFormat.fillBytesMin { break }
            let parent = pathNodes[depth - 1]
            let slot = pathSlots[depth]
            precondition(parent.page.count >= 2, "index \(name): a branch with one child")
            heldNeighbours[depth] = try child(of: parent, at: slot + 1 < parent.page.count ? slot + 1 : slot - 1)
            loss = IndexNodeFormat.branchEntryBytesMax
            depth -= 1
        }
    }

    /// Restores the minimum fill from `depth` up, after entries left the node at `depth`.
    func rebalance(fromDepth startDepth: Int) {
        var depth = startDepth
        while depth > 0 {
            let node = pathNodes[depth]
            if node.page.usedBytes >= IndexNodeFormat.fillBytesMin { return }
            let parent = pathNodes[depth - 1]
            let slot = pathSlots[depth]
            let neighbourIsRight = slot + 1 < parent.page.count
            let neighbourSlot = neighbourIsRight ? slot + 1 : slot - 1
            guard let neighbour = heldNeighbours[depth] else {
                preconditionFailure("index \(name): rebalance at depth \(depth) without its neighbour read")
            }
            markDirty(neighbour, parent: parent, slot: neighbourSlot)
            let left = neighbourIsRight ? node : neighbour
            let right = neighbourIsRight ? neighbour : node
            let leftSlot = neighbourIsRight ? slot : neighbourSlot
            assert(parent.children[leftSlot] === left && parent.children[leftSlot + 1] === right, "rebalance pair not held by the parent")
            if left.page.usedBytes + right.page.usedBytes <= IndexNodeFormat.payloadBytes {
                merge(left, right)
                parent.page.remove(at: leftSlot + 1)
                parent.children.remove(at: leftSlot + 1)
            } else {
                redistribute(left, right)
                parent.page.remove(at: leftSlot + 1)
                parent.children.remove(at: leftSlot + 1)
                let separator = IndexNodePage.encodeBranchEntry(key: right.page.key(0), pointer: right.pointer, into: separatorScratch)
                if insertEntry(separator, child: right, depth: depth - 1, slot: leftSlot + 1) { return }
            }
            depth -= 1
        }
        // The root: a branch left with one child hands the root to that child.
        while root.level > 0 && root.page.count == 1 {
            guard let only = root.children[0] else { preconditionFailure("index \(name): root's only child is not dirty") }
            let old = root
            root = only
            discard(old)
        }
    }

    /// Moves every entry of `right` to the end of `left` and drops `right`.
    private func merge(_ left: IndexNode, _ right: IndexNode) {
        precondition(left.level == right.level && left.isDirty && right.isDirty, "merge of unlike or clean nodes")
        var entries: [UnsafeRawBufferPointer] = []
        entries.reserveCapacity(left.page.count + right.page.count)
        for index in 0..<left.page.count { entries.append(left.page.entry(index)) }
        for index in 0..<right.page.count { entries.append(right.page.entry(index)) }
        let merged = IndexNodePage(scratchPage2)
        merged.initialize(level: left.level)
        merged.fill(with: entries)
        left.page.bytes.copyMemory(from: UnsafeRawBufferPointer(scratchPage2))
        if left.level > 0 { left.children += right.children }
        discard(right)
        assert(left.level == 0 || left.children.count == left.page.count, "children out of step after merge")
    }

    /// Cuts the entries of `left` and `right` evenly between them.
    private func redistribute(_ left: IndexNode, _ right: IndexNode) {
        precondition(left.level == right.level && left.isDirty && right.isDirty, "redistribution of unlike or clean nodes")
        var entries: [UnsafeRawBufferPointer] = []
        entries.reserveCapacity(left.page.count + right.page.count)
        for index in 0..<left.page.count { entries.append(left.page.entry(index)) }
        for index in 0..<right.page.count { entries.append(right.page.entry(index)) }
        let cut = chooseCut(entries, appending: false)
        let newLeft = IndexNodePage(scratchPage)
        newLeft.initialize(level: left.level)
        newLeft.fill(with: entries[..<cut])
        let newRight = IndexNodePage(scratchPage2)
        newRight.initialize(level: left.level)
        newRight.fill(with: entries[cut...])
        left.page.bytes.copyMemory(from: UnsafeRawBufferPointer(scratchPage))
        right.page.bytes.copyMemory(from: UnsafeRawBufferPointer(scratchPage2))
        if left.level > 0 {
            let children = left.children + right.children
            left.children = Array(children[..<cut])
            right.children = Array(children[cut...])
        }
        assert(left.page.usedBytes >= IndexNodeFormat.fillBytesMin && right.page.usedBytes >= IndexNodeFormat.fillBytesMin, "redistribution left a node underfull")
    }
}
