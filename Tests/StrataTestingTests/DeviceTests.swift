// Tests of the harness's devices: MemoryDevice, OverlayDevice, RecordingDevice (multi-device
// sessions, flush coverage, FUA, memory budget), FaultyDevice.

import Foundation
import StrataIO
import Testing
@testable import StrataTesting

func block(_ byte: UInt8, count: Int = 1) -> [UInt8] { [UInt8](repeating: byte, count: 4096 * count) }

func write(_ device: any BlockStorage, _ bytes: [UInt8], at offset: UInt64, fua: Bool = false) throws {
    try bytes.withUnsafeBytes { try device.write($0, at: offset, fua: fua) }
}

func read(_ device: any BlockStorage, at offset: UInt64, count: Int = 1) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0xEE, count: 4096 * count)
    try bytes.withUnsafeMutableBytes { try device.read(into: $0, at: offset) }
    return bytes
}

@Suite struct MemoryAndOverlayDeviceTests {
    @Test func memoryDeviceIsSparseAndZeroFilled() throws {
        let device = MemoryDevice(path: "m", sizeBytes: 1 << 20)
        #expect(try read(device, at: 8192) == block(0))
        try write(device, block(7, count: 2), at: 4096)
        #expect(try read(device, at: 0, count: 3) == block(0) + block(7, count: 2))
        #expect(device.storedBlockCount == 2)
        try device.discard(offset: 4096, length: 4096)
        #expect(try read(device, at: 4096) == block(0))
    }

    @Test func memoryDeviceRefusesBadRequests() throws {
        let device = MemoryDevice(path: "m", sizeBytes: 1 << 20)
        #expect(throws: IOError.misaligned(path: "m", what: "offset", value: 100, alignment: 4096)) { try write(device, block(1), at: 100) }
        #expect(throws: IOError.outOfRange(path: "m", offset: 1 << 20, length: 4096, sizeBytes: 1 << 20)) { try write(device, block(1), at: 1 << 20) }
        let frozen = device.snapshot()
        #expect(throws: IOError.readOnly(path: "m")) { try write(frozen, block(1), at: 0) }
    }

    @Test func snapshotsAndOverlaysNeverChangeTheirBase() throws {
        let device = MemoryDevice(path: "m", sizeBytes: 1 << 20)
        try write(device, block(1), at: 0)
        let base = device.snapshot()
        try write(device, block(2), at: 0)
        #expect(try read(base, at: 0) == block(1))
        let overlay = OverlayDevice(base: base)
        try write(overlay, block(3), at: 4096)
        #expect(try read(overlay, at: 0, count: 2) == block(1) + block(3))
        #expect(try read(base, at: 4096) == block(0))
        #expect(overlay.overlayBlockCount == 1)
        let nested = OverlayDevice(base: overlay)
        try nested.discard(offset: 0, length: 4096)
        #expect(try read(nested, at: 0, count: 2) == block(0) + block(3))
        #expect(try read(overlay, at: 0) == block(1))
    }
}

@Suite struct RecordingDeviceTests {
    @Test func flushCoversOnlyItsOwnDevicesCompletedWrites() throws {
        let recorder = CrashRecorder()
        let a = recorder.record(MemoryDevice(path: "a", sizeBytes: 1 << 20))
        let b = recorder.record(MemoryDevice(path: "b", sizeBytes: 1 << 20))
        try write(a, block(1), at: 0)        // w0 on a
        try write(b, block(2), at: 0)        // w1 on b
        try a.flush()                        // covers w0 only
        try write(b, block(3), at: 4096, fua: true)   // w2, durable at completion
        let recording = recorder.recording()
        #expect(recording.writes.count == 3)
        #expect(recording.writes[0].durableSequence != nil)
        #expect(recording.writes[1].durableSequence == nil)
        #expect(recording.writes[2].durableSequence == recording.writes[2].completeSequence)
        #expect(recording.flushes.count == 1 && recording.flushes[0].coveredWrites == [0])
        #expect(recording.pendingWrites(at: recording.endSequence) == [1])
        #expect(recording.durabilityBoundaries.count == 2)
    }

    @Test func writeInFlightDuringAFlushIsNotCovered() throws {
        // A device whose write blocks until released: the flush is issued while it is in flight.
        final class SlowDevice: BlockStorage, @unchecked Sendable {
            let inner = MemoryDevice(path: "slow", sizeBytes: 1 << 20)
            let entered = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            var path: String { inner.path }
            var sizeBytes: UInt64 { inner.sizeBytes }
            var blockSizeBytes: Int { inner.blockSizeBytes }
            var isReadOnly: Bool { false }
            func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) { try inner.read(into: buffer, at: offset) }
            func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) {
                entered.signal()
                release.wait()
                try inner.write(buffer, at: offset, fua: fua)
            }
            func flush() throws(IOError) {}
            func discard(offset: UInt64, length: UInt64) throws(IOError) {}
        }
        let slow = SlowDevice()
        let recorder = CrashRecorder()
        let device = recorder.record(slow, base: slow.inner.snapshot())
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            try? write(device, block(9), at: 0)
            done.signal()
        }
        slow.entered.wait()
        try device.flush()
        slow.release.signal()
        done.wait()
        let recording = recorder.recording()
        #expect(recording.flushes[0].coveredWrites.isEmpty)
        #expect(recording.writes[0].durableSequence == nil)
    }

    @Test func memoryBudgetIsEnforcedWithAClearError() throws {
        let recorder = CrashRecorder(memoryBudgetBytes: 10_000)
        let device = recorder.record(MemoryDevice(path: "a", sizeBytes: 1 << 20))
        try write(device, block(1), at: 0)
        do {
            try write(device, block(2, count: 2), at: 4096)
            Issue.record("write past the budget was accepted")
        } catch let error as IOError {
            #expect(error.description.contains("memory budget of 10000 bytes exceeded"))
        }
        #expect(recorder.budgetExceeded != nil)
        #expect(recorder.recording().writes.count == 1)
        #expect(try read(device, at: 4096) == block(0), "a refused write must not reach the device")
    }

    @Test func arenaKeepsEveryPayloadExactly() throws {
        // Sizes from one block to 3 MiB: payloads share chunks, straddle nothing, and open
        // new chunks (1 MiB, 2 MiB, … doubling) when the current one is full.
        let budget = 24 << 20
        let recorder = CrashRecorder(memoryBudgetBytes: budget)
        let memory = MemoryDevice(path: "a", sizeBytes: 64 << 20)
        let device = recorder.record(memory)
        let counts = [1, 3, 256, 1, 768, 200, 1, 512, 17, 640, 64, 1]
        var expected: [[UInt8]] = []
        var offset: UInt64 = 0
        var early: Recording? = nil
        for (index, count) in counts.enumerated() {
            var bytes = [UInt8](repeating: 0, count: 4096 * count)
            for position in bytes.indices { bytes[position] = UInt8(truncatingIfNeeded: position &* 7 &+ index &* 131) }
            try write(device, bytes, at: offset)
            expected.append(bytes)
            offset += UInt64(bytes.count)
            if index == 4 { early = recorder.recording() }
        }
        try device.discard(offset: offset, length: 8192)
        try device.flush()
        let recording = recorder.recording()
        #expect(recording.writes.count == counts.count + 1)
        for (index, bytes) in expected.enumerated() {
            #expect(recording.writes[index].payload == bytes, "payload of write \(index)")
        }
        #expect(recording.writes[counts.count].payload == nil, "a discard has no payload")
        for index in 0...4 {
            #expect(early!.writes[index].payload == expected[index], "a recording taken mid-session keeps its bytes")
        }
        let payloadBytes = expected.reduce(0) { $0 + $1.count }
        #expect(recording.payloadBytes == payloadBytes)
        #expect(recorder.usedBytes == payloadBytes + (counts.count + 1) * CrashRecorder.recordOverheadBytes)
        #expect(recorder.arenaChunkBytes <= budget + (4 << 20), "arena chunks stay within the budget")
        // The durable image built from the arena reads back every write.
        let image = try CrashImageMaterializer(recording: recording)
            .devices(for: CrashImage(crashPoint: recording.endSequence, kind: .boundary, persisted: []))[0]
        var check: UInt64 = 0
        for bytes in expected {
            #expect(try read(image, at: check, count: bytes.count / 4096) == bytes)
            check += UInt64(bytes.count)
        }
    }

    @Test func smallSessionsKeepASmallArena() throws {
        let recorder = CrashRecorder()
        let device = recorder.record(MemoryDevice(path: "a", sizeBytes: 1 << 20))
        for index in 0..<16 { try write(device, block(UInt8(index)), at: UInt64(index) * 4096) }
        #expect(recorder.arenaChunkBytes == 1 << 20)
        #expect(recorder.recording().writes.map { $0.payload?.first } == (0..<16).map { UInt8($0) })
    }

    @Test func concurrentWritersKeepTheirOwnBytes() throws {
        let recorder = CrashRecorder(memoryBudgetBytes: 64 << 20)
        let devices = (0..<4).map { recorder.record(MemoryDevice(path: "d\($0)", sizeBytes: 8 << 20)) }
        DispatchQueue.concurrentPerform(iterations: devices.count) { lane in
            for step in 0..<64 {
                let bytes = block(UInt8(lane * 64 + step), count: 1 + step % 5)
                try! write(devices[lane], bytes, at: UInt64(step) * 5 * 4096)
            }
        }
        let recording = recorder.recording()
        #expect(recording.writes.count == 4 * 64)
        for recorded in recording.writes {
            let step = Int(recorded.offset / (5 * 4096))
            #expect(recorded.payload == block(UInt8(recorded.device * 64 + step), count: 1 + step % 5))
        }
    }

    @Test func refusedRequestsAreNotRecorded() throws {
        let recorder = CrashRecorder()
        let device = recorder.record(MemoryDevice(path: "a", sizeBytes: 1 << 20))
        #expect(throws: IOError.self) { try write(device, block(1), at: 10) }
        #expect(recorder.recording().writes.isEmpty)
    }
}

@Suite struct FaultyDeviceTests {
    @Test func latentSectorErrorsAndVanishing() throws {
        let inner = MemoryDevice(path: "f", sizeBytes: 1 << 20)
        let device = FaultyDevice(wrapping: inner, faults: .init(readErrorRanges: [8192..<12288], vanishAfterRequests: 4))
        #expect(try read(device, at: 0) == block(0))
        #expect(throws: IOError.self) { try read(device, at: 8192) }
        #expect(try read(device, at: 12288) == block(0))
        try write(device, block(1), at: 0)
        #expect(throws: IOError.self) { try read(device, at: 0) }
        #expect(device.counters.readErrors == 1 && device.counters.vanishedRequests == 1)
    }

    @Test func bitFlipsAndMisdirectionAreSeededAndReproducible() throws {
        func run(seed: UInt64) throws -> ([UInt8], FaultyDevice.Counters, Int) {
            let inner = MemoryDevice(path: "f", sizeBytes: 1 << 20)
            let device = FaultyDevice(wrapping: inner, faults: .init(bitFlipProbability: 0.5, misdirectProbability: 0.5, seed: seed))
            for index in 0..<8 { try write(device, block(UInt8(index + 1)), at: UInt64(index) * 4096) }
            let bytes = try read(device, at: 0, count: 8)
            return (bytes, device.counters, inner.storedBlockCount)
        }
        let first = try run(seed: 7)
        let second = try run(seed: 7)
        #expect(first.0 == second.0 && first.1 == second.1)
        #expect(first.1.flippedBits > 0 && first.1.misdirectedWrites > 0)
    }

    @Test func fixtureStoreNeverReturnsFlippedBits() throws {
        let meta = MemoryDevice(path: "meta", sizeBytes: FixtureStore.metaSizeBytes)
        let data = MemoryDevice(path: "data", sizeBytes: FixtureStore.dataSizeBytes)
        try FixtureStore.format(meta: meta, data: data)
        let store = try FixtureStore.open(meta: meta, data: data)
        let value = FixtureStoreSystem.value(seed: 1, tag: 1, size: .large)
        try store.put("k0", value)
        try store.sync()
        let faulty = FaultyDevice(wrapping: data, faults: .init(bitFlipProbability: 1, seed: 3))
        let reopened = try FixtureStore.open(meta: meta, data: faulty)
        #expect(throws: FixtureStoreError.self) { _ = try reopened.get("k0") }
        #expect(try FixtureStore.open(meta: meta, data: data).get("k0") == value)
    }
}
