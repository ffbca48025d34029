// Read priority (ZFS vdev-queue table): queued reads overtake a write backlog, and writes still
// progress under a read flood because they keep `writeInFlightMin` slots.

import Foundation
import Testing
@testable import StrataIO

@Suite("Read priority")
struct ReadPriorityTests {
    /// 400 writes are queued first, then 16 reads. With QD 4 most writes wait in the backlog;
    /// the reads must be dispatched ahead of them.
    @Test(arguments: EngineConformanceTests.kinds)
    func readsOvertakeAWriteBacklog(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 128 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 4)
        configuration.writeInFlightMin = 1
        configuration.backlogMax = 512
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: configuration)
        let pool = try AlignedBufferPool(budgetBytes: 64 << 20)
        for index in 0..<400 {
            try engine.submit(.write, deviceIndex: 0, offset: UInt64(index) * 65536, buffer: try pool.allocate(byteCount: 65536),
                              tag: UInt64(index))
        }
        for index in 0..<16 {
            try engine.submit(.read, deviceIndex: 0, offset: UInt64(index) * 4096, buffer: try pool.allocate(byteCount: 4096),
                              tag: 1000 + UInt64(index))
        }
        var order: [UInt64] = []
        while engine.outstandingCount > 0 {
            try engine.reap(minimum: 1) { completion, _ in
                #expect(completion.succeeded)
                order.append(completion.tag)
            }
        }
        let lastRead = order.lastIndex(where: { $0 >= 1000 })!
        let writesBeforeLastRead = order[..<lastRead].filter { $0 < 1000 }.count
        // Without priority the reads would complete after all 400 writes. With it, they wait only
        // for the writes already in the kernel and for the write share (min 1) as slots free up.
        #expect(writesBeforeLastRead < 40, "reads finished after \(writesBeforeLastRead) of 400 queued writes")
    }

    /// A continuous read flood (the read backlog is topped up after every completion) must not
    /// starve 20 writes submitted after it.
    @Test(arguments: EngineConformanceTests.kinds)
    func writesProgressUnderAReadFlood(kind: IOEngineKind) throws {
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 64 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 4)
        configuration.writeInFlightMin = 1
        configuration.backlogMax = 256
        let engine = try EngineFixture.makeEngine(kind, devices: [device], configuration: configuration)
        let pool = try AlignedBufferPool(budgetBytes: 8 << 20)
        // Overwrites, not first writes into holes (which cost a file-system allocation each).
        let prefill = try pool.allocate(byteCount: 1 << 20)
        try device.write(UnsafeRawBufferPointer(prefill.bytes), at: 32 << 20)
        _ = consume prefill
        var readsSubmitted = 0
        func topUpReads() throws {
            while engine.outstandingCount < 200 {
                try engine.submit(.read, deviceIndex: 0, offset: UInt64(readsSubmitted % 4096) * 4096,
                                  buffer: try pool.allocate(byteCount: 4096), tag: 1_000_000 + UInt64(readsSubmitted))
                readsSubmitted += 1
            }
        }
        try topUpReads()
        for index in 0..<20 {
            try engine.submit(.write, deviceIndex: 0, offset: (32 << 20) + UInt64(index) * 4096,
                              buffer: try pool.allocate(byteCount: 4096), tag: UInt64(index))
        }
        var writesDone = 0
        var readsDone = 0
        // The flood lasts for 200,000 read completions; every write must be done before it ends
        // (with reads strictly first and no write reserve, none would be).
        while writesDone < 20 && readsDone < 200_000 {
            try engine.reap(minimum: 1) { completion, _ in
                #expect(completion.succeeded)
                if completion.tag >= 1_000_000 { readsDone += 1 } else { writesDone += 1 }
            }
            try topUpReads()
        }
        #expect(writesDone == 20, "only \(writesDone) of 20 writes completed during \(readsDone) read completions")
        while engine.outstandingCount > 0 { try engine.reap(minimum: engine.outstandingCount) { _, _ in } }
    }
}
