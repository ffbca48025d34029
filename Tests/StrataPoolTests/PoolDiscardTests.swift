// Discards of freed space (`Pool.discardsFreedSpace`): a freed extent is discarded only once it
// is reusable (the checkpoint after the one that freed it is durable) and never while anything
// an import could read still names it; off by default; a device that does not support discard
// is skipped after its first refusal and the commit goes on; files get a punched hole.

import Foundation
import StrataIO
import Testing
@testable import StrataPool

#if canImport(Glibc)
import Glibc
#endif

/// A ReviewMemoryDevice that records discards, zeroes what it discards, and can refuse discard
/// as a device without support does (EOPNOTSUPP).
final class DiscardRecordingDevice: BlockStorage, @unchecked Sendable {
    let inner: ReviewMemoryDevice
    let refuses: Bool
    private let lock = NSLock()
    private var recorded: [Range<UInt64>] = []
    private var attempts = 0

    init(path: String, sizeBytes: UInt64, refuses: Bool = false) {
        inner = ReviewMemoryDevice(path: path, sizeBytes: sizeBytes)
        self.refuses = refuses
    }

    var path: String { inner.path }
    var sizeBytes: UInt64 { inner.sizeBytes }
    var blockSizeBytes: Int { inner.blockSizeBytes }
    var isReadOnly: Bool { inner.isReadOnly }
    var discarded: [Range<UInt64>] { lock.lock(); defer { lock.unlock() }; return recorded }
    var discardAttempts: Int { lock.lock(); defer { lock.unlock() }; return attempts }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) { try inner.read(into: buffer, at: offset) }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) { try inner.write(buffer, at: offset, fua: fua) }
    func flush() throws(IOError) {}

    func discard(offset: UInt64, length: UInt64) throws(IOError) {
        lock.lock()
        attempts += 1
        lock.unlock()
        if refuses { throw .system(path: path, operation: "BLKDISCARD", errno: EOPNOTSUPP) }
        let zeros = allocateAlignedBuffer(byteCount: Int(length))
        defer { zeros.deallocate() }
        try inner.write(UnsafeRawBufferPointer(zeros), at: offset, fua: false)
        lock.lock()
        recorded.append(offset ..< offset + length)
        lock.unlock()
    }
}

@Suite struct PoolDiscardTests {
    typealias S = PoolTestSupport

    /// Writes a byte pattern over `extent`.
    static func fill(_ device: any BlockStorage, _ extent: Extent, byte: UInt8) throws {
        let buffer = allocateAlignedBuffer(byteCount: Int(extent.lengthBytes))
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: byte)
        try device.write(UnsafeRawBufferPointer(buffer), at: extent.offsetBytes, fua: false)
    }

    /// Whether every byte of `extent` is `byte`.
    static func holds(_ device: any BlockStorage, _ extent: Extent, byte: UInt8) throws -> Bool {
        let buffer = allocateAlignedBuffer(byteCount: Int(extent.lengthBytes))
        defer { buffer.deallocate() }
        try device.read(into: buffer, at: extent.offsetBytes)
        return buffer.allSatisfy { $0 == byte }
    }

    static func overlaps(_ ranges: [Range<UInt64>], _ extent: Extent) -> Bool {
        ranges.contains { $0.overlaps(extent.offsetBytes ..< extent.endBytes) }
    }

    @Test func freedSpaceIsDiscardedOnlyOnceReusable() throws {
        let device = DiscardRecordingDevice(path: "d0", sizeBytes: 64 * S.mib)
        let pool = try Pool.create(name: "trim", devices: [(device, .data)])
        #expect(!pool.discardsFreedSpace, "off by default")
        pool.discardsFreedSpace = true
        let kept = try pool.allocator.allocate(.data, lengthBytes: 1 << 20)[0]
        let victims = [try pool.allocator.allocate(.data, lengthBytes: 1 << 20)[0],
                       try pool.allocator.allocate(.data, lengthBytes: 64 << 10)[0]]
        try Self.fill(device, kept, byte: 0xA5)
        for victim in victims { try Self.fill(device, victim, byte: 0x5A) }
        try pool.commitCheckpoint()                                   // 2: all three durable
        for victim in victims { pool.allocator.free(victim) }         // freed in checkpoint 3
        try pool.commitCheckpoint()                                   // 3 durable: 2 still names them
        #expect(device.discarded.isEmpty, "discarded while checkpoint 2, the fallback, names them: \(device.discarded)")
        for victim in victims { #expect(try Self.holds(device, victim, byte: 0x5A)) }
        try pool.commitCheckpoint()                                   // 4 durable: reusable, discarded first
        for victim in victims {
            #expect(Self.overlaps(device.discarded, victim), "\(victim) not discarded: \(device.discarded)")
            #expect(try Self.holds(device, victim, byte: 0))
        }
        #expect(!Self.overlaps(device.discarded, kept), "a referenced extent was discarded")
        #expect(try Self.holds(device, kept, byte: 0xA5))
        let statistics = pool.discardStatistics
        #expect(statistics.bytes == victims.reduce(0) { $0 + $1.lengthBytes } && statistics.ranges == device.discarded.count)
        #expect(statistics.failures == 0 && statistics.unsupportedDevices.isEmpty)
        // Discarded space is allocatable again.
        #expect(pool.allocator.statistics().devices[0].deferredBytes == 0)
    }

    @Test func adjacentFreesAreDiscardedAsOneRange() throws {
        let device = DiscardRecordingDevice(path: "d0", sizeBytes: 64 * S.mib)
        let pool = try Pool.create(name: "trim", devices: [(device, .data)])
        pool.discardsFreedSpace = true
        var blocks: [Extent] = []
        for _ in 0..<8 { blocks.append(try pool.allocator.allocate(.metadata, lengthBytes: 4096)[0]) }
        try pool.commitCheckpoint()
        let sorted = blocks.sorted { $0.offsetBytes < $1.offsetBytes }
        #expect(zip(sorted, sorted.dropFirst()).allSatisfy { $0.endBytes == $1.offsetBytes }, "the test needs adjacent blocks: \(sorted)")
        for block in blocks.reversed() { pool.allocator.free(block) }  // freed out of order
        try pool.commitCheckpoint()
        try pool.commitCheckpoint()
        #expect(device.discarded == [sorted.first!.offsetBytes ..< sorted.last!.endBytes])
    }

    @Test func withoutTheSettingNothingIsDiscarded() throws {
        let device = DiscardRecordingDevice(path: "d0", sizeBytes: 64 * S.mib)
        let pool = try Pool.create(name: "trim", devices: [(device, .data)])
        let victim = try pool.allocator.allocate(.data, lengthBytes: 1 << 20)[0]
        try Self.fill(device, victim, byte: 0x5A)
        try pool.commitCheckpoint()
        pool.allocator.free(victim)
        try pool.commitCheckpoint()
        try pool.commitCheckpoint()
        #expect(device.discardAttempts == 0)
        #expect(try Self.holds(device, victim, byte: 0x5A))
        #expect(pool.allocator.statistics().devices[0].deferredBytes == 0, "released all the same")
    }

    @Test func aDeviceWithoutDiscardIsSkippedAndTheCommitGoesOn() throws {
        let refusing = DiscardRecordingDevice(path: "d0", sizeBytes: 64 * S.mib, refuses: true)
        let pool = try Pool.create(name: "trim", devices: [(refusing, .data)])
        pool.discardsFreedSpace = true
        for round in 0..<3 {
            let extents = [try pool.allocator.allocate(.data, lengthBytes: 1 << 20)[0], try pool.allocator.allocate(.data, lengthBytes: 8192)[0]]
            try pool.commitCheckpoint()
            for extent in extents { pool.allocator.free(extent) }
            try pool.commitCheckpoint()
            try pool.commitCheckpoint()
            #expect(refusing.discardAttempts == 1, "round \(round): asked again after refusing")
        }
        let statistics = pool.discardStatistics
        #expect(statistics.unsupportedDevices == [0] && statistics.failures == 0 && statistics.bytes == 0)
        #expect(pool.allocator.statistics().devices[0].deferredBytes == 0, "the frees were released")
    }

    /// On a file the discard is a punched hole: the file's allocated blocks shrink, reads give zeros.
    @Test func aFileGetsAHolePunched() throws {
        try S.withDirectory { directory in
            let path = directory + "/d0"
            let pool = try Pool.create(name: "trim", members: [.init(path: path, role: .data, createSizeBytes: 64 * S.mib)])
            pool.discardsFreedSpace = true
            let victim = try pool.allocator.allocate(.data, lengthBytes: 4 << 20)
            try Self.fill(pool.devices[0], victim[0], byte: 0x5A)
            try pool.commitCheckpoint()
            func allocatedBytes() -> Int64 {
                var info = stat()
                precondition(stat(path, &info) == 0)
                return Int64(info.st_blocks) * 512
            }
            let before = allocatedBytes()
            pool.allocator.free(victim)
            try pool.commitCheckpoint()
            try pool.commitCheckpoint()
            if pool.discardStatistics.unsupportedDevices == [0] {
                // The file system under /tmp has no punch-hole: nothing to check here (the
                // unsupported path has its own test).
                print("aFileGetsAHolePunched: /tmp does not support punching holes; skipped")
                return
            }
            let after = allocatedBytes()
            #expect(before - after >= 4 << 20, "file allocation \(before) → \(after) bytes")
            #expect(try Self.holds(pool.devices[0], victim[0], byte: 0))
            #expect(pool.discardStatistics.bytes == 4 << 20)
            try pool.export()
        }
    }

    @Test func limitsSkipShortRangesAndCapEachCommit() throws {
        let device = DiscardRecordingDevice(path: "d0", sizeBytes: 64 * S.mib)
        let pool = try Pool.create(name: "trim", devices: [(device, .data)])
        pool.discardsFreedSpace = true
        var limits = DiscardLimits()
        limits.bytesMin = 64 << 10
        limits.rangesPerCommitMax = 2
        pool.discardLimits = limits
        // Three 1 MiB extents apart from each other (so they stay three ranges) and one 4 KiB block.
        var large: [Extent] = []
        var spacers: [Extent] = []
        for _ in 0..<3 {
            large.append(try pool.allocator.allocate(.data, lengthBytes: 1 << 20)[0])
            spacers.append(try pool.allocator.allocate(.data, lengthBytes: 1 << 20)[0])
        }
        let small = try pool.allocator.allocate(.metadata, lengthBytes: 4096)[0]
        try pool.commitCheckpoint()
        for extent in large + [small] { pool.allocator.free(extent) }
        try pool.commitCheckpoint()
        try pool.commitCheckpoint()
        #expect(device.discarded.count == 2, "the cap allows two ranges: \(device.discarded)")
        #expect(device.discarded.allSatisfy { $0.upperBound - $0.lowerBound >= 64 << 10 }, "a range under bytesMin was discarded")
        let statistics = pool.discardStatistics
        #expect(statistics.ranges == 2 && statistics.skippedRanges == 2 && statistics.bytes == 2 << 20, "\(statistics)")
        #expect(pool.allocator.statistics().devices[0].deferredBytes == 0, "skipped ranges are released all the same")
    }

    /// While the callback discards, the space it is given cannot be allocated: an allocation
    /// made from inside the callback lands elsewhere.
    @Test func spaceBeingDiscardedIsNotAllocatable() throws {
        let allocator = PoolAllocator(devices: [AllocatorDevice(index: 0, path: "d0", role: .data, sizeBytes: 8 << 20)],
                                      policy: PoolPolicy())
        var all: [Extent] = []
        while let copies = try? allocator.allocate(.data, lengthBytes: 1 << 20) { all += copies }
        #expect(all.count == 8)
        allocator.checkpointDurable(allocator.beginCheckpoint().checkpoint)          // 1
        let victim = all.removeLast()
        allocator.free(victim)                                                       // freed in 2
        allocator.checkpointDurable(allocator.beginCheckpoint().checkpoint)          // 2
        var seen: [Range<UInt64>] = []
        var allocatedInside: Result<ExtentCopies, AllocationError>? = nil
        let third = allocator.beginCheckpoint().checkpoint
        allocator.checkpointDurableHoldingFrees(third)
        allocator.releaseHeldFrees(of: third) { index, ranges in                     // 3: 2's frees
            #expect(index == 0)
            seen += ranges
            allocatedInside = Result { () throws(AllocationError) in try allocator.allocate(.data, lengthBytes: 1 << 20) }
        }
        #expect(seen == [victim.offsetBytes ..< victim.endBytes])
        guard case .failure = allocatedInside else {
            Issue.record("allocated \(String(describing: allocatedInside)) while the only free space was being discarded")
            return
        }
        #expect(try allocator.allocate(.data, lengthBytes: 1 << 20)[0] == victim, "released once the callback returned")
    }

    /// The object store's two-phase commit leaves the discards to `finishPendingDiscards`: until
    /// then the released frees are neither discarded nor allocatable; the next cut finishes them
    /// if nobody did.
    @Test func twoPhaseCommitsDiscardWhenAsked() throws {
        let device = DiscardRecordingDevice(path: "d0", sizeBytes: 64 * S.mib)
        let pool = try Pool.create(name: "trim", devices: [(device, .data)])
        pool.discardsFreedSpace = true
        var all: [Extent] = []
        while let copies = try? pool.allocator.allocate(.data, lengthBytes: 1 << 20) { all += copies }
        try pool.commitPrepared(pool.prepareCheckpoint())
        let first = all.removeLast(), second = all.removeLast()
        pool.allocator.free(first)                                      // freed in the next checkpoint (N)
        try pool.commitPrepared(pool.prepareCheckpoint())               // N durable
        try pool.commitPrepared(pool.prepareCheckpoint())               // N+1 durable: N's frees held
        #expect(device.discarded.isEmpty, "discarded inside commitPrepared")
        #expect(pool.allocator.checkpointWithHeldFrees != nil)
        #expect(throws: AllocationError.self) { try pool.allocator.allocate(.data, lengthBytes: 1 << 20) }
        pool.finishPendingDiscards()
        #expect(device.discarded == [first.offsetBytes ..< first.endBytes])
        #expect(pool.allocator.checkpointWithHeldFrees == nil)
        #expect(try pool.allocator.allocate(.data, lengthBytes: 1 << 20)[0] == first)
        pool.finishPendingDiscards()                                    // nothing pending: nothing happens
        #expect(device.discarded.count == 1)
        // Nobody asks: the next prepare finishes them before it cuts.
        pool.allocator.free(second)
        try pool.commitPrepared(pool.prepareCheckpoint())
        try pool.commitPrepared(pool.prepareCheckpoint())
        #expect(device.discarded.count == 1)
        _ = try pool.prepareCheckpoint()
        #expect(device.discarded.count == 2 && device.discarded.last == second.offsetBytes ..< second.endBytes)
    }
}
