// DnodeIndexTable — the dnode cache's object number → slot map: open addressing, linear
// probing, one 16-byte bucket per entry.
//
// Theory. Once the cache outgrows the CPU caches (100k–1M dnodes) a lookup costs its cache
// misses. Swift's Dictionary hashes with SipHash and keeps keys and values in separate arrays:
// two misses per probe plus the hash. Here a bucket holds key and slot together, the home bucket
// is a multiplicative (Fibonacci) hash of the object number, and probing walks adjacent buckets
// (four per cache line): a hit costs about one miss. The load factor stays at most 1/2, so
// probes stay short; deletion shifts the later members of the cluster back (no tombstones), so
// lookups do not slow down as entries come and go.
//
// Invariant: every stored key is reachable from its home bucket without crossing an empty
// bucket (`problems()` checks it). Not thread-safe: each cache shard owns one, under its lock.

struct DnodeIndexTable {
    struct Bucket {
        var key: UInt64 = 0
        var slot: Int32 = 0
        var isUsed = false
    }

    private(set) var buckets: [Bucket]
    private(set) var count = 0
    private var mask: Int

    init(capacity: Int = 16) {
        var size = 16
        while size < capacity { size *= 2 }
        buckets = Array(repeating: Bucket(), count: size)
        mask = size - 1
    }

    /// Bits 20... of the multiplicative hash: independent of the top bits that pick the shard.
    @inline(__always)
    private func home(_ key: UInt64) -> Int { Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 20) & mask }

    subscript(key: UInt64) -> Int32? {
        @inline(__always) get {
            var index = home(key)
            while buckets[index].isUsed {
                if buckets[index].key == key { return buckets[index].slot }
                index = (index + 1) & mask
            }
            return nil
        }
        set {
            if let newValue { insert(key, newValue) } else { remove(key) }
        }
    }

    private mutating func insert(_ key: UInt64, _ slot: Int32) {
        if (count + 1) * 2 > buckets.count { grow() }
        var index = home(key)
        while buckets[index].isUsed {
            if buckets[index].key == key {
                buckets[index].slot = slot
                return
            }
            index = (index + 1) & mask
        }
        buckets[index] = Bucket(key: key, slot: slot, isUsed: true)
        count += 1
    }

    private mutating func remove(_ key: UInt64) {
        var index = home(key)
        while buckets[index].isUsed && buckets[index].key != key { index = (index + 1) & mask }
        guard buckets[index].isUsed else { return }
        // Backward shift: a later member of the cluster moves into the hole unless its home
        // lies cyclically after the hole (then moving it would make it unreachable).
        var hole = index
        var next = (hole + 1) & mask
        while buckets[next].isUsed {
            let wanted = home(buckets[next].key)
            let movable = hole <= next ? (wanted <= hole || wanted > next) : (wanted <= hole && wanted > next)
            if movable {
                buckets[hole] = buckets[next]
                hole = next
            }
            next = (next + 1) & mask
        }
        buckets[hole] = Bucket()
        count -= 1
    }

    private mutating func grow() {
        let old = buckets
        buckets = Array(repeating: Bucket(), count: old.count * 2)
        mask = buckets.count - 1
        count = 0
        for bucket in old where bucket.isUsed { insert(bucket.key, bucket.slot) }
    }

    /// Invariant violations (tests): unreachable keys, a wrong count.
    func problems() -> [String] {
        var result: [String] = []
        var seen = 0
        for (index, bucket) in buckets.enumerated() where bucket.isUsed {
            seen += 1
            var probe = home(bucket.key)
            while probe != index {
                if !buckets[probe].isUsed {
                    result.append("key \(bucket.key) at \(index) unreachable from its home \(home(bucket.key))")
                    break
                }
                probe = (probe + 1) & mask
            }
        }
        if seen != count { result.append("\(seen) used buckets, count \(count)") }
        return result
    }
}
