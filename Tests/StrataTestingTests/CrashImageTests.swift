// Tests of crash-image generation and materialisation: boundaries, exhaustive subsets, tears at
// 4 KiB, determinism, newest-wins, cheap overlays.

import StrataIO
import Testing
@testable import StrataTesting

@Suite struct CrashImageTests {
    /// Two devices: a durable write on each, then two un-flushed writes on device a (one of
    /// two units), a flush of b, and nothing else.
    func sampleRecording() throws -> Recording {
        let recorder = CrashRecorder()
        let a = recorder.record(MemoryDevice(path: "a", sizeBytes: 1 << 20))
        let b = recorder.record(MemoryDevice(path: "b", sizeBytes: 1 << 20))
        try write(a, block(1), at: 0)
        try a.flush()
        try write(b, block(2), at: 0, fua: true)
        try write(a, block(3, count: 2), at: 4096)   // pending, 2 units
        try write(a, block(4), at: 0)                // pending, overwrites a durable block
        try b.flush()                                // covers nothing on a
        return recorder.recording()
    }

    @Test func boundariesAndExhaustiveSubsets() throws {
        let recording = try sampleRecording()
        #expect(recording.durabilityBoundaries.count == 2)
        let images = CrashImageGenerator(options: .init(randomImagesPerEpoch: 0)).images(for: recording, seed: 1)
        #expect(images.filter { $0.kind == .boundary }.count == 2)
        // At the end: 2 pending writes; outcomes 4 (absent, whole, 2 tears) × 2 (absent, whole),
        // less "both lost", which is the same state and acknowledgement log as the FUA boundary.
        let atEnd = images.filter { $0.crashPoint == recording.endSequence }
        #expect(atEnd.count == 7)
        #expect(Set(atEnd.map(\.persisted)).count == 7)
        #expect(!atEnd.contains { $0.persisted.isEmpty })
    }

    @Test func materialisedImagesFollowTheCrashModel() throws {
        let recording = try sampleRecording()
        let materializer = try CrashImageMaterializer(recording: recording)
        let end = recording.endSequence
        let lost = materializer.devices(for: CrashImage(crashPoint: end, kind: .exhaustive))
        #expect(try read(lost[0], at: 0, count: 3) == block(1) + block(0, count: 2))
        #expect(try read(lost[1], at: 0) == block(2))
        let torn = materializer.devices(for: CrashImage(crashPoint: end, kind: .random, persisted: [
            .init(writeIndex: 2, keptUnits: [1]), .init(writeIndex: 3),
        ]))
        #expect(try read(torn[0], at: 0, count: 3) == block(4) + block(0) + block(3))
        #expect(torn[0].overlayBlockCount == 2)
        // Before anything was durable: everything reads as the base (zeros).
        let first = materializer.devices(for: CrashImage(crashPoint: 1, kind: .random))
        #expect(try read(first[0], at: 0) == block(0))
    }

    @Test func generationIsDeterministicPerSeed() throws {
        let recording = try sampleRecording()
        let generator = CrashImageGenerator(options: .init(randomImagesPerEpoch: 20))
        #expect(generator.images(for: recording, seed: 5) == generator.images(for: recording, seed: 5))
    }

    @Test func replayAddressParsing() throws {
        let address = try ReplayAddress(parsing: "42:7:113.4")
        #expect(address.seed == 42 && address.step == 7 && address.image == ImageAddress(image: 113, recoveryImage: 4))
        #expect(address.description == "42:7:113.4")
        for bad in ["", "1:2", "a:1:2", "1:2:x", "1:2:3.4.5", "1:-2:3"] {
            #expect(throws: CrashTestError.self) { _ = try ReplayAddress(parsing: bad) }
        }
    }
}
