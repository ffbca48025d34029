// The I/O hot path allocates nothing after warm-up: submit + reap of reads and writes, on
// both engines, counted by the AllocCounter malloc interposer linked into this test binary.

import AllocCounter
import Foundation
import Testing
@testable import StrataIO

@Suite("Hot path allocations")
struct HotPathAllocationTests {
    @Test(arguments: EngineConformanceTests.kinds)
    func submitAndReapAllocateNothingAfterWarmUp(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 64 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: IOEngineConfiguration(queueDepth: 16))
        let pool = try AlignedBufferPool(budgetBytes: 16 << 20)
        engine.register(pool)
        // A generic function, as a caller on the hot path would write it (no existential per I/O).
        func run<E: IOEngine>(_ engine: E, requests: Int) throws -> Int {
            var submitted = 0
            var failures = 0
            while submitted < requests || engine.outstandingCount > 0 {
                while submitted < requests && engine.outstandingCount < 16 {
                    let size = submitted % 3 == 0 ? 1 << 20 : 4096
                    let operation: IOOperation = submitted % 2 == 0 ? .write : .read
                    let buffer = try pool.allocate(byteCount: size)
                    try engine.submit(operation, deviceIndex: 0, offset: UInt64(submitted % 48) << 20, buffer: buffer,
                                      tag: UInt64(submitted), linkNext: false)
                    submitted += 1
                }
                try engine.reap(minimum: 1) { completion, _ in if !completion.succeeded { failures += 1 } }
            }
            return failures
        }
        func measure<E: IOEngine>(_ engine: E) throws -> (UInt64, Int) {
            _ = try run(engine, requests: 2_000)   // warm-up
            let before = AllocCounter_thread()
            let failures = try run(engine, requests: 5_000)
            return (AllocCounter_thread() - before, failures)
        }
        let (allocations, failures) = try measure(engine)
        #expect(failures == 0)
        #expect(allocations == 0, "\(allocations) allocations in 5,000 I/Os on the \(kind) hot path")
        // The counter itself works (the test would be meaningless otherwise).
        let before = AllocCounter_thread()
        let array = [Int](repeating: 1, count: Int.random(in: 100...200))
        #expect(AllocCounter_thread() > before && array.count >= 100)
    }
}
