// Shared fixtures for the engine suites: a temp-file device, engines of each kind, patterns.

import Foundation
import Testing
@testable import StrataIO

enum EngineFixture {
    /// A fresh sparse file device of `sizeBytes` in its own temp directory.
    static func makeDevice(sizeBytes: UInt64 = 64 << 20) throws -> (BlockDevice, String) {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("strata-engine-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let device = try BlockDevice.open("\(directory)/device", options: .init(createSizeBytes: sizeBytes))
        return (device, directory)
    }

    static func makeEngine(_ kind: IOEngineKind, devices: [BlockDevice],
                           configuration: IOEngineConfiguration = IOEngineConfiguration()) throws -> any IOEngine {
        try IOEngineFactory.makeEngine(devices: devices, choice: kind == .ioUring ? .ioUring : .libaio,
                                       configuration: configuration)
    }

    /// Deterministic bytes for (seed, offset): a write can be checked after reading back.
    static func fill(_ bytes: UnsafeMutableRawBufferPointer, seed: UInt64, offset: UInt64) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ offset
        let words = bytes.bindMemory(to: UInt64.self)
        for index in words.indices {
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            words[index] = state &* 0x2545_F491_4F6C_DD1D
        }
    }

    static func matches(_ bytes: UnsafeMutableRawBufferPointer, seed: UInt64, offset: UInt64) -> Bool {
        let expected = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 4096)
        defer { expected.deallocate() }
        fill(expected, seed: seed, offset: offset)
        return memcmp(expected.baseAddress!, bytes.baseAddress!, bytes.count) == 0
    }
}

/// Seeded xorshift generator: failures print the seed and replay from it.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 0x1234_5678 : seed }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
}
