// FaultyDevice — a BlockStorage wrapper that injects the read and device faults of the crash
// model: latent sector errors, flipped bits, misdirected writes, a vanishing device.
//
// Theory. Checksums, retries and self-healing are only tested if the device misbehaves in the
// ways real ones do (TigerBeetle's storage fault model, Ceph's bdev injection options):
//
//   - `readErrorRanges` / `writeErrorRanges`: any request touching a range fails with EIO
//     (a latent sector error);
//   - `bitFlipProbability`: each block a read returns has that chance of one flipped bit —
//     in the returned buffer only; the media stays intact (the fault is in transit);
//   - `misdirectProbability`: a write lands at another block-aligned offset of the same
//     device instead of its own (the intended target keeps its old bytes);
//   - `vanishAfterRequests`: from that many requests on, every request fails with EIO, as if
//     the device was pulled (or call `vanish()`).
//
// All choices come from one SeededRandom advanced per request, so the same request sequence
// with the same seed sees the same faults. Counters say what was injected. Thread-safe (state
// behind a `Mutex`); reproducibility needs a deterministic request order.

import StrataIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Injects seeded, reproducible device faults into the requests it passes on.
public final class FaultyDevice: BlockStorage {
    /// What to inject.
    public struct Faults: Sendable {
        /// Byte ranges whose reads fail with EIO.
        public var readErrorRanges: [Range<UInt64>]
        /// Byte ranges whose writes fail with EIO.
        public var writeErrorRanges: [Range<UInt64>]
        /// Chance per returned block of one flipped bit.
        public var bitFlipProbability: Double
        /// Chance per write of landing at another offset.
        public var misdirectProbability: Double
        /// Every request from this (0-based) request index on fails with EIO.
        public var vanishAfterRequests: Int?
        public var seed: UInt64

        public init(readErrorRanges: [Range<UInt64>] = [], writeErrorRanges: [Range<UInt64>] = [],
                    bitFlipProbability: Double = 0, misdirectProbability: Double = 0,
                    vanishAfterRequests: Int? = nil, seed: UInt64 = 0) {
            precondition((0...1).contains(bitFlipProbability) && (0...1).contains(misdirectProbability),
                         "fault probabilities must be in 0...1")
            self.readErrorRanges = readErrorRanges
            self.writeErrorRanges = writeErrorRanges
            self.bitFlipProbability = bitFlipProbability
            self.misdirectProbability = misdirectProbability
            self.vanishAfterRequests = vanishAfterRequests
            self.seed = seed
        }
    }

    /// What has been injected so far.
    public struct Counters: Sendable, Equatable {
        public var requests = 0
        public var readErrors = 0
        public var writeErrors = 0
        public var flippedBits = 0
        public var misdirectedWrites = 0
        public var vanishedRequests = 0
    }

    public let device: any BlockStorage
    public let faults: Faults
    public var path: String { device.path }
    public var sizeBytes: UInt64 { device.sizeBytes }
    public var blockSizeBytes: Int { device.blockSizeBytes }
    public var isReadOnly: Bool { device.isReadOnly }

    private struct State {
        var random: SeededRandom
        var counters = Counters()
        var vanished = false
    }
    private let state: Mutex<State>

    public init(wrapping device: any BlockStorage, faults: Faults) {
        self.device = device
        self.faults = faults
        self.state = Mutex(State(random: SeededRandom(seed: faults.seed)))
    }

    public var counters: Counters { state.withLock { $0.counters } }

    /// Makes every later request fail with EIO.
    public func vanish() {
        state.withLock { $0.vanished = true }
    }

    /// Counts the request; true when the device has vanished.
    private func admit() -> Bool {
        state.withLock { state in
            let index = state.counters.requests
            state.counters.requests += 1
            if let limit = faults.vanishAfterRequests, index >= limit { state.vanished = true }
            if state.vanished { state.counters.vanishedRequests += 1 }
            return !state.vanished
        }
    }

    private static func overlaps(_ ranges: [Range<UInt64>], offset: UInt64, length: UInt64) -> Bool {
        ranges.contains { $0.overlaps(offset..<(offset + length)) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        guard admit() else { throw .device(path: path, operation: "read (device vanished)", offset: offset, length: UInt64(buffer.count), errno: EIO) }
        if Self.overlaps(faults.readErrorRanges, offset: offset, length: UInt64(buffer.count)) {
            state.withLock { $0.counters.readErrors += 1 }
            throw .device(path: path, operation: "read (injected latent sector error)", offset: offset, length: UInt64(buffer.count), errno: EIO)
        }
        try device.read(into: buffer, at: offset)
        guard faults.bitFlipProbability > 0 else { return }
        let blockSize = blockSizeBytes
        state.withLock { state in
            for block in 0..<(buffer.count / blockSize) where state.random.chance(faults.bitFlipProbability) {
                let bit = Int(state.random.next() % UInt64(blockSize * 8))
                buffer[block * blockSize + bit / 8] ^= UInt8(1 << (bit % 8))
                state.counters.flippedBits += 1
            }
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) {
        guard admit() else { throw .device(path: path, operation: "write (device vanished)", offset: offset, length: UInt64(buffer.count), errno: EIO) }
        if Self.overlaps(faults.writeErrorRanges, offset: offset, length: UInt64(buffer.count)) {
            state.withLock { $0.counters.writeErrors += 1 }
            throw .device(path: path, operation: "write (injected error)", offset: offset, length: UInt64(buffer.count), errno: EIO)
        }
        var target = offset
        if faults.misdirectProbability > 0 {
            let blockSize = UInt64(blockSizeBytes)
            let slots = (sizeBytes - UInt64(buffer.count)) / blockSize + 1
            state.withLock { state in
                guard state.random.chance(faults.misdirectProbability) else { return }
                target = (state.random.next() % slots) * blockSize
                if target == offset { target = (target + blockSize) % (slots * blockSize) }
                state.counters.misdirectedWrites += 1
            }
        }
        try device.write(buffer, at: target, fua: fua)
    }

    public func flush() throws(IOError) {
        guard admit() else { throw .device(path: path, operation: "flush (device vanished)", offset: 0, length: 0, errno: EIO) }
        try device.flush()
    }

    public func discard(offset: UInt64, length: UInt64) throws(IOError) {
        guard admit() else { throw .device(path: path, operation: "discard (device vanished)", offset: offset, length: length, errno: EIO) }
        try device.discard(offset: offset, length: length)
    }
}
