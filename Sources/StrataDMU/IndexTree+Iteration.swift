// IndexTree+Iteration — ordered iteration and resumable cookies (Lustre's dt_it ops, readdir).
//
// Theory. An iteration walks the leaves in key order from a position: the first key, the first
// key ≥ a given key, or the first key > a cookie's key. It keeps the path from the root to the
// current leaf on a local stack (copy-on-write trees have no sibling links: linking leaves would
// make every change copy its neighbours too), and reads nodes through the cache as it goes.
//
// A cookie is the last key the caller consumed, encoded (a version byte, then the key). It is a
// position in the key space, not in the tree, so it survives any change between calls, flushes
// and reloads included: resuming returns exactly the keys greater than the cookie's key, in
// order, as they are when the walk reaches them. The readdir contract follows: an entry present
// for the whole iteration is returned exactly once; an entry inserted or deleted during it is
// returned at most once (once if it is present when the walk passes its place); nothing is ever
// returned twice, even if it is deleted and inserted again behind the walk. (A directory that
// needs Lustre's 64-bit telldir cookies keys its entries by hash(name) ‖ name, so a cookie's
// first 8 bytes are the hash.)
//
// The tree must not change during one `iterate` call (a trap): between calls it may.

import StrataPool

/// Where an iteration starts.
public enum IndexPosition: Sendable, Equatable {
    /// At the smallest key.
    case first
    /// At the smallest key ≥ the given key.
    case atOrAfter([UInt8])
    /// At the smallest key > the cookie's key: resuming after the last entry consumed.
    case after(IndexCookie)
}

/// A resumable iteration position: the last key consumed. Opaque to callers; `encoded` is what
/// travels (to a client as a readdir cookie, into the intent log), `init(encoded:)` reads it back.
public struct IndexCookie: Hashable, Sendable, CustomStringConvertible {
    static let formatVersion: UInt8 = 1
    /// The key of the last entry consumed.
    public let lastKey: [UInt8]

    public init(lastKey: [UInt8]) {
        precondition(lastKey.count <= IndexTree.keyBytesMax, "cookie key of \(lastKey.count) bytes")
        self.lastKey = lastKey
    }

    /// Version byte (1), then the key.
    public var encoded: [UInt8] { [IndexCookie.formatVersion] + lastKey }

    public init(encoded: [UInt8], tree: String = "") throws(IndexTreeError) {
        guard let version = encoded.first else { throw .invalidCookie(tree: tree, reason: "empty") }
        guard version == IndexCookie.formatVersion else { throw .invalidCookie(tree: tree, reason: "version \(version), expected \(IndexCookie.formatVersion)") }
        guard encoded.count - 1 <= IndexTree.keyBytesMax else {
            throw .invalidCookie(tree: tree, reason: "key of \(encoded.count - 1) bytes exceeds \(IndexTree.keyBytesMax)")
        }
        lastKey = Array(encoded.dropFirst())
    }

    public var description: String { "cookie after \(IndexTreeError.show(lastKey))" }
}

/// One entry, copied out of the tree.
public struct IndexEntry: Equatable, Sendable {
    public var key: [UInt8]
    public var value: [UInt8]
    public init(key: [UInt8], value: [UInt8]) {
        self.key = key
        self.value = value
    }
}

/// What one `iterate` call did.
public struct IndexScan: Equatable, Sendable {
    /// Resumes after the last entry consumed; nil when none was.
    public var cookie: IndexCookie?
    /// Entries consumed.
    public var consumedCount: Int
    /// True when the walk reached the end of the tree (nothing left after the cookie).
    public var reachedEnd: Bool
}

/// A batch of entries and where to resume.
public struct IndexBatch: Equatable, Sendable {
    public var entries: [IndexEntry]
    public var cookie: IndexCookie?
    public var reachedEnd: Bool
}

extension IndexTree {
    /// Visits entries in key order from `position`. `body` gets each key and value (valid only
    /// during the call) and returns true to consume the entry and go on, or false to stop
    /// without consuming it (readdir's "buffer full": that entry comes first on resume).
    @discardableResult
    public func iterate(from position: IndexPosition,
                        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Bool) throws(IndexTreeError) -> IndexScan {
        precondition(!isIterating, "index \(name): nested iteration of one tree")
        var startKey: [UInt8]? = nil
        var exclusive = false
        switch position {
        case .first: break
        case .atOrAfter(let key):
            try checkKey(key)
            startKey = key
        case .after(let cookie):
            startKey = cookie.lastKey
            exclusive = true
        }
        isIterating = true
        defer { isIterating = false }

        // Descend to the leaf holding the start, remembering the path.
        var stack: [(node: IndexNode, slot: Int)] = []
        stack.reserveCapacity(root.level)
        var node = root
        var slot = 0
        let key = startKey.map { stage($0) }
        while node.level > 0 {
            let childSlot = key.map { node.page.childIndex(for: $0) } ?? 0
            stack.append((node, childSlot))
            node = try child(of: node, at: childSlot)
        }
        if let key {
            let (index, found) = node.page.lowerBound(key)
            slot = found && exclusive ? index + 1 : index
        }

        var consumed = 0
        var lastLeaf: IndexNode? = nil
        var lastSlot = 0
        while true {
            while slot < node.page.count {
                if !body(node.page.key(slot), node.page.value(slot)) {
                    return IndexScan(cookie: lastLeaf.map { IndexCookie(lastKey: [UInt8]($0.page.key(lastSlot))) } ?? startCookie(position, consumed),
                                     consumedCount: consumed, reachedEnd: false)
                }
                consumed += 1
                lastLeaf = node
                lastSlot = slot
                slot += 1
            }
            // The next leaf: up to the nearest ancestor with a next child, then leftmost down.
            while let top = stack.last, top.slot + 1 >= top.node.page.count { stack.removeLast() }
            guard !stack.isEmpty else { break }
            stack[stack.count - 1].slot += 1
            node = try child(of: stack[stack.count - 1].node, at: stack[stack.count - 1].slot)
            while node.level > 0 {
                stack.append((node, 0))
                node = try child(of: node, at: 0)
            }
            assert(node.page.count > 0, "empty non-root leaf")
            slot = 0
        }
        return IndexScan(cookie: lastLeaf.map { IndexCookie(lastKey: [UInt8]($0.page.key(lastSlot))) } ?? startCookie(position, consumed),
                         consumedCount: consumed, reachedEnd: true)
    }

    private func startCookie(_ position: IndexPosition, _ consumed: Int) -> IndexCookie? {
        assert(consumed == 0, "no last entry after consuming some")
        if case .after(let cookie) = position { return cookie }
        return nil
    }

    /// Up to `limit` entries from `position`, copied, with the cookie to resume from.
    public func entries(from position: IndexPosition = .first, limit: Int = .max) throws(IndexTreeError) -> IndexBatch {
        precondition(limit >= 0, "negative limit")
        var entries: [IndexEntry] = []
        let scan = try iterate(from: position) { key, value in
            guard entries.count < limit else { return false }
            entries.append(IndexEntry(key: [UInt8](key), value: [UInt8](value)))
            return true
        }
        return IndexBatch(entries: entries, cookie: scan.cookie, reachedEnd: scan.reachedEnd)
    }
}
