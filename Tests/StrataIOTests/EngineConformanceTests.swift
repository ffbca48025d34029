// The engine conformance suite: every test runs over both engines (io_uring and libaio).

import Foundation
import Testing
@testable import StrataIO

@Suite("IOEngine conformance")
struct EngineConformanceTests {
    static let kinds: [IOEngineKind] = [.ioUring, .libaio]

    /// Writes then reads back requests of every size class at random aligned offsets.
    @Test(arguments: kinds)
    func writeReadBackAtSizesAndRandomOffsets(kind: IOEngineKind) throws {
        let seed: UInt64 = 0x5EED_0001
        var random = SeededGenerator(seed: seed)
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 256 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = try EngineFixture.makeEngine(kind, devices: [device])
        let pool = try AlignedBufferPool(budgetBytes: 64 << 20)
        engine.register(pool)
        let sizes = [4096, 8192, 16384, 65536, 131072, 262144, 524288, 1 << 20, 12288, 1 << 20 - 4096]
        var written: [(offset: UInt64, size: Int)] = []
        // Non-overlapping random offsets: one request per 2 MiB stripe, placed randomly within it.
        for (index, size) in (sizes + sizes.shuffled(using: &random)).enumerated() {
            let stripe = UInt64(index) * (2 << 20)
            let slack = UInt64((2 << 20) - size) / 4096
            let offset = stripe + UInt64.random(in: 0...slack, using: &random) * 4096
            let buffer = try pool.allocate(byteCount: size)
            EngineFixture.fill(buffer.bytes, seed: seed, offset: offset)
            try engine.submit(.write, deviceIndex: 0, offset: offset, buffer: buffer, tag: UInt64(index))
            written.append((offset, size))
        }
        var failures = 0
        while engine.outstandingCount > 0 {
            try engine.reap(minimum: 1) { completion, _ in if !completion.succeeded { failures += 1 } }
        }
        #expect(failures == 0, "seed \(seed)")
        #expect(pool.buffersInUse == 0, "every buffer came back with its completion")
        for (index, request) in written.enumerated() {
            let buffer = try pool.allocate(byteCount: request.size)
            try engine.submit(.read, deviceIndex: 0, offset: request.offset, buffer: buffer, tag: UInt64(index))
        }
        var mismatches: [Int] = []
        while engine.outstandingCount > 0 {
            try engine.reap(minimum: 1) { completion, buffer in
                let request = written[Int(completion.tag)]
                #expect(completion.succeeded)
                #expect(completion.length == request.size && completion.offset == request.offset)
                if let buffer, !EngineFixture.matches(buffer.bytes, seed: seed, offset: request.offset) {
                    mismatches.append(Int(completion.tag))
                }
            }
        }
        #expect(mismatches.isEmpty, "seed \(seed): mismatched requests \(mismatches)")
    }

    /// The test device splits every transfer into 4 KiB pieces: the engine must resubmit the
    /// remainder of each short completion and deliver exactly one whole completion.
    @Test(arguments: kinds)
    func shortTransfersAreResubmitted(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 8)
        configuration.faults = IOFaultInjection(shortTransferBytesMax: 4096)
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: configuration)
        let pool = try AlignedBufferPool(budgetBytes: 16 << 20)
        engine.register(pool)
        for index in 0..<6 {
            let buffer = try pool.allocate(byteCount: 256 << 10)
            EngineFixture.fill(buffer.bytes, seed: 7, offset: UInt64(index) << 20)
            try engine.submit(.write, deviceIndex: 0, offset: UInt64(index) << 20, buffer: buffer, tag: UInt64(index))
        }
        var completions = 0
        while engine.outstandingCount > 0 {
            try engine.reap(minimum: 1) { completion, _ in
                #expect(completion.succeeded && completion.length == 256 << 10)
                completions += 1
            }
        }
        #expect(completions == 6)
        #expect(engine.statistics.shortTransfersResubmitted == 6 * 63, "each 256 KiB request needs 63 resubmissions")
        // Read back without the fault: the bytes are all there.
        let verify = try EngineFixture.makeEngine(kind, devices: [device])
        for index in 0..<6 {
            try verify.submit(.read, deviceIndex: 0, offset: UInt64(index) << 20, buffer: try pool.allocate(byteCount: 256 << 10),
                              tag: UInt64(index))
        }
        while verify.outstandingCount > 0 {
            try verify.reap(minimum: 1) { completion, buffer in
                #expect(EngineFixture.matches(buffer!.bytes, seed: 7, offset: completion.offset))
            }
        }
    }

    @Test(arguments: kinds)
    func eagainCompletionsAreRetried(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 4)
        configuration.faults = IOFaultInjection(eagainEvery: 3)
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: configuration)
        let pool = try AlignedBufferPool(budgetBytes: 4 << 20)
        for index in 0..<30 {
            let buffer = try pool.allocate(byteCount: 4096)
            EngineFixture.fill(buffer.bytes, seed: 3, offset: UInt64(index) * 4096)
            try engine.submit(.write, deviceIndex: 0, offset: UInt64(index) * 4096, buffer: buffer, tag: UInt64(index))
        }
        var succeeded = 0
        while engine.outstandingCount > 0 {
            try engine.reap(minimum: 1) { completion, _ in if completion.succeeded { succeeded += 1 } }
        }
        #expect(succeeded == 30)
        #expect(engine.statistics.retriesAfterEINTRorEAGAIN >= 10)
    }

    /// Latent sector errors: requests overlapping the bad range fail with EIO naming the range;
    /// the others succeed.
    @Test(arguments: kinds)
    func injectedEIOFailsOnlyOverlappingRequests(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 8)
        configuration.faults = IOFaultInjection(failingRanges: [.init(deviceIndex: 0, range: 40960..<45056, operation: .read)])
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: configuration)
        let pool = try AlignedBufferPool(budgetBytes: 4 << 20)
        for index in 0..<16 {
            try engine.submit(.read, deviceIndex: 0, offset: UInt64(index) * 8192, buffer: try pool.allocate(byteCount: 8192),
                              tag: UInt64(index))
        }
        var failed: [UInt64] = []
        while engine.outstandingCount > 0 {
            try engine.reap(minimum: 1) { completion, _ in
                if !completion.succeeded {
                    #expect(completion.errno == EIO)
                    failed.append(completion.tag)
                }
            }
        }
        #expect(failed == [5], "only the request covering 40960..<45056 fails")
        let error = IOError.device(path: device.path, operation: "read", offset: 40960, length: 8192, errno: EIO)
        #expect(error.description.contains(device.path) && error.description.contains("EIO"))
    }

    @Test(arguments: kinds)
    func misalignedAndOutOfRangeRequestsAreRefused(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 1 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = try EngineFixture.makeEngine(kind, devices: [device])
        let pool = try AlignedBufferPool(budgetBytes: 2 << 20)
        #expect(throws: IOError.misaligned(path: device.path, what: "offset", value: 100, alignment: 4096)) {
            try engine.submit(.write, deviceIndex: 0, offset: 100, buffer: try pool.allocate(byteCount: 4096), tag: 0)
        }
        #expect(throws: IOError.misaligned(path: device.path, what: "length", value: 5000, alignment: 4096)) {
            try engine.submit(.read, deviceIndex: 0, offset: 0, buffer: try pool.allocate(byteCount: 5000), tag: 0)
        }
        #expect(throws: IOError.outOfRange(path: device.path, offset: 1 << 20, length: 4096, sizeBytes: 1 << 20)) {
            try engine.submit(.read, deviceIndex: 0, offset: 1 << 20, buffer: try pool.allocate(byteCount: 4096), tag: 0)
        }
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192 + 512, alignment: 4096)
        defer { raw.deallocate() }
        let misaligned = UnsafeMutableRawBufferPointer(rebasing: raw[512..<(512 + 4096)])
        #expect(throws: IOError.self) {
            try engine.submit(.write, deviceIndex: 0, offset: 0, buffer: IOBuffer(unmanaged: misaligned), tag: 0)
        }
        #expect(throws: IOError.self) {
            try engine.submit(.flush, deviceIndex: 3, offset: 0, buffer: nil, tag: 0)
        }
        #expect(engine.outstandingCount == 0, "a refused request leaves nothing queued")
        #expect(pool.buffersInUse == 0, "a refused request's buffer goes back to its pool")
    }

    /// write →(link) flush →(link) FUA write completes in that order; when the first write fails,
    /// the linked successors are cancelled instead of running.
    @Test(arguments: kinds)
    func linkedRequestsRunInOrderAndCancelAfterFailure(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 16)
        configuration.faults = IOFaultInjection(failingRanges: [.init(deviceIndex: 0, range: 8 << 20..<(8 << 20) + 4096, operation: .write)])
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: configuration)
        let pool = try AlignedBufferPool(budgetBytes: 8 << 20)
        var order: [UInt64] = []
        var errnos: [UInt64: Int32] = [:]
        for round in 0..<20 {
            let base = UInt64(round) * 3
            try engine.submit(.write, deviceIndex: 0, offset: UInt64(round) << 16, buffer: try pool.allocate(byteCount: 65536),
                              tag: base, linkNext: true)
            try engine.submit(.flush, deviceIndex: 0, offset: 0, buffer: nil, tag: base + 1, linkNext: true)
            try engine.submit(.writeFUA, deviceIndex: 0, offset: (4 << 20) + (UInt64(round) << 12),
                              buffer: try pool.allocate(byteCount: 4096), tag: base + 2)
        }
        // The failing chain: its first write hits the bad range.
        try engine.submit(.write, deviceIndex: 0, offset: 8 << 20, buffer: try pool.allocate(byteCount: 4096), tag: 100, linkNext: true)
        try engine.submit(.flush, deviceIndex: 0, offset: 0, buffer: nil, tag: 101, linkNext: true)
        try engine.submit(.writeFUA, deviceIndex: 0, offset: 12 << 20, buffer: try pool.allocate(byteCount: 4096), tag: 102)
        while engine.outstandingCount > 0 {
            try engine.reap(minimum: 1) { completion, _ in
                order.append(completion.tag)
                errnos[completion.tag] = completion.errno
            }
        }
        for round in 0..<20 {
            let base = UInt64(round) * 3
            let positions = (0..<3).map { order.firstIndex(of: base + UInt64($0))! }
            #expect(positions[0] < positions[1] && positions[1] < positions[2], "chain \(round) out of order: \(positions)")
            #expect(errnos[base] == 0 && errnos[base + 1] == 0 && errnos[base + 2] == 0)
        }
        #expect(errnos[100] == EIO)
        #expect(errnos[101] == ECANCELED && errnos[102] == ECANCELED)
    }

    @Test(arguments: kinds)
    func backlogIsBounded(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 2)
        configuration.backlogMax = 3
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: configuration)
        let pool = try AlignedBufferPool(budgetBytes: 1 << 20)
        for index in 0..<5 {
            try engine.submit(.read, deviceIndex: 0, offset: UInt64(index) * 4096, buffer: try pool.allocate(byteCount: 4096),
                              tag: UInt64(index))
        }
        #expect(throws: IOError.backlogFull(slots: 5)) {
            try engine.submit(.read, deviceIndex: 0, offset: 0, buffer: try pool.allocate(byteCount: 4096), tag: 9)
        }
        var count = 0
        while engine.outstandingCount > 0 { count += try engine.reap(minimum: 5) { _, _ in } }
        #expect(count == 5)
    }

    /// Sixteen threads, each with its own engine on the same device, write disjoint regions
    /// concurrently; everything reads back intact.
    @Test(arguments: kinds)
    func sixteenThreadsWithTheirOwnEngines(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 64 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let threadCount = 16
        let regionBytes: UInt64 = 4 << 20
        let errors = ErrorBox()
        let done = DispatchSemaphore(value: 0)
        for thread in 0..<threadCount {
            let worker = Thread {
                defer { done.signal() }
                do {
                    let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: IOEngineConfiguration(queueDepth: 4))
                    let pool = try AlignedBufferPool(budgetBytes: 4 << 20)
                    engine.register(pool)
                    let base = UInt64(thread) * regionBytes
                    /// Round 0 writes, round 1 reads back: every completion succeeds, reads match.
                    func check(_ completion: IOCompletion, _ buffer: consuming IOBuffer?, _ round: Int) {
                        if !completion.succeeded { errors.add("thread \(thread): errno \(completion.errno)") }
                        if round == 1, let buffer, !EngineFixture.matches(buffer.bytes, seed: UInt64(thread), offset: completion.tag) {
                            errors.add("thread \(thread): mismatch at \(completion.tag)")
                        }
                    }
                    for round in 0..<2 {
                        for piece in 0..<64 {
                            let offset = base + UInt64(piece) * 65536
                            if round == 0 {
                                let buffer = try pool.allocate(byteCount: 65536)
                                EngineFixture.fill(buffer.bytes, seed: UInt64(thread), offset: offset)
                                try engine.submit(.write, deviceIndex: 0, offset: offset, buffer: buffer, tag: offset)
                            } else {
                                try engine.submit(.read, deviceIndex: 0, offset: offset, buffer: try pool.allocate(byteCount: 65536), tag: offset)
                            }
                            if engine.outstandingCount >= 4 {
                                try engine.reap(minimum: 1) { check($0, $1, round) }
                            }
                        }
                        while engine.outstandingCount > 0 {
                            try engine.reap(minimum: 1) { check($0, $1, round) }
                        }
                    }
                } catch {
                    errors.add("thread \(thread): \(error)")
                }
            }
            worker.start()
        }
        for _ in 0..<threadCount { done.wait() }
        #expect(errors.messages.isEmpty, "\(errors.messages)")
    }
}

final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func add(_ message: String) { lock.lock(); storage.append(message); lock.unlock() }
    var messages: [String] { lock.lock(); defer { lock.unlock() }; return storage }
}
