// LatencyHistogram — fixed-size log-linear histogram of nanosecond latencies.
//
// Every power of two [2^e, 2^(e+1)) is split into 64 equal buckets, so a recorded value is
// known to within 1/64 (about 1.6 %) of itself; values below 64 ns get one bucket each. The
// counts live in one array allocated at init, so `record` is a few integer instructions and
// never allocates (it runs once per I/O on the hot path). Values at or above 2^40 ns (about
// 18 minutes) land in the last bucket.

#if canImport(Glibc)
import Glibc
#endif

final class LatencyHistogram {
    static let subBucketBits = 6
    static let subBuckets = 1 << subBucketBits              // 64
    static let exponentMax = 40                             // 2^40 ns
    static let bucketCount = (exponentMax - subBucketBits + 2) * subBuckets

    let counts: UnsafeMutablePointer<UInt64>
    private(set) var total: UInt64 = 0

    init() {
        counts = .allocate(capacity: LatencyHistogram.bucketCount)
        counts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
    }

    deinit { counts.deallocate() }

    @inline(__always)
    static func bucket(of nanoseconds: UInt64) -> Int {
        if nanoseconds < UInt64(subBuckets) { return Int(nanoseconds) }
        let exponent = 63 - nanoseconds.leadingZeroBitCount          // >= subBucketBits
        if exponent > exponentMax { return bucketCount - 1 }
        let sub = Int(truncatingIfNeeded: nanoseconds >> UInt64(exponent - subBucketBits)) & (subBuckets - 1)
        return (exponent - subBucketBits + 1) * subBuckets + sub
    }

    /// The value range [low, high) a bucket stands for.
    static func range(of bucket: Int) -> (low: UInt64, high: UInt64) {
        if bucket < subBuckets { return (UInt64(bucket), UInt64(bucket) + 1) }
        let exponent = bucket / subBuckets + subBucketBits - 1
        let sub = UInt64(bucket % subBuckets)
        let width = UInt64(1) << UInt64(exponent - subBucketBits)
        let low = (UInt64(1) << UInt64(exponent)) + sub * width
        return (low, low + width)
    }

    @inline(__always)
    func record(_ nanoseconds: UInt64) {
        counts[LatencyHistogram.bucket(of: nanoseconds)] &+= 1
        total &+= 1
    }

    func reset() {
        counts.update(repeating: 0, count: LatencyHistogram.bucketCount)
        total = 0
    }

    func merge(_ other: LatencyHistogram) {
        for i in 0..<LatencyHistogram.bucketCount { counts[i] &+= other.counts[i] }
        total &+= other.total
    }

    /// The value below which `fraction` of the recorded values lie (bucket midpoint), in ns.
    /// Same convention as fio: the smallest recorded value v with rank >= fraction * total.
    func percentile(_ fraction: Double) -> Double {
        guard total > 0 else { return 0 }
        let rank = max(UInt64(1), UInt64((fraction * Double(total)).rounded(.up)))
        var seen: UInt64 = 0
        for i in 0..<LatencyHistogram.bucketCount {
            seen &+= counts[i]
            if seen >= rank {
                let (low, high) = LatencyHistogram.range(of: i)
                return Double(low) + Double(high - low - 1) / 2
            }
        }
        return Double(LatencyHistogram.range(of: LatencyHistogram.bucketCount - 1).low)
    }
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
