// SeededRandom — the one source of randomness in the harness.
//
// Theory. Every choice the harness makes (which writes a crash image keeps, where a write is
// torn, which bit a FaultyDevice flips, what a random workload does) comes from a generator
// seeded by a number that is printed with every failure, so one number replays the run. The
// generator is SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, full period, good
// enough statistics for test-case generation, and trivially reproducible on every platform
// (unlike `SystemRandomNumberGenerator`). Nothing here is persisted; nothing survives a crash.

/// A small, fast, reproducible random number generator (SplitMix64).
///
/// Two generators created with the same seed produce the same sequence on every platform.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// A generator whose sequence is fixed by `seed`.
    public init(seed: UInt64) {
        state = seed
    }

    /// A generator for a sub-stream: the same `seed` with different `stream` values gives
    /// independent sequences (used to give each crash point its own stream).
    public init(seed: UInt64, stream: UInt64) {
        var mixer = SeededRandom(seed: seed ^ (stream &* 0x9E37_79B9_7F4A_7C15))
        state = mixer.next()
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }

    /// True with probability `probability` (0 never, 1 always).
    public mutating func chance(_ probability: Double) -> Bool {
        precondition(probability >= 0 && probability <= 1, "probability \(probability) outside 0...1")
        if probability == 0 { return false }
        if probability == 1 { return true }
        return Double(next() >> 11) / Double(1 << 53) < probability
    }
}
