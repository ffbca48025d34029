// CRC32C tests: published vectors, the hardware path against the table path and against a
// bit-at-a-time reference written here from the definition, and the continuation convention
// crc(a+b) == crc(b, continuing: crc(a)).

import Foundation
import StrataIO
import Testing

@Suite("CRC32C")
struct CRC32CTests {
    /// The definition, one bit at a time: reflected polynomial 0x82F63B78, initial value and
    /// final xor ~0. Slow, obviously right, and shares no code with CShims.
    static func referenceChecksum(_ bytes: some Sequence<UInt8>, continuing previous: UInt32 = 0) -> UInt32 {
        var crc = ~previous
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return ~crc
    }

    struct Vector: CustomStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var checksum: UInt32
        var description: String { name }
    }

    /// RFC 3720 (iSCSI) appendix B.4, plus the common "123456789" check value.
    static let vectors: [Vector] = [
        Vector(name: "\"123456789\"", bytes: Array("123456789".utf8), checksum: 0xE306_9283),
        Vector(name: "32 x 0x00", bytes: [UInt8](repeating: 0x00, count: 32), checksum: 0x8A91_36AA),
        Vector(name: "32 x 0xFF", bytes: [UInt8](repeating: 0xFF, count: 32), checksum: 0x62A8_AB43),
        Vector(name: "0...31 ascending", bytes: (0..<32).map { UInt8($0) }, checksum: 0x46DD_794E),
        Vector(name: "31...0 descending", bytes: (0..<32).reversed().map { UInt8($0) }, checksum: 0x113F_DB5C),
    ]

    @Test("published test vectors, every entry point", arguments: vectors)
    func publishedVectors(vector: Vector) {
        #expect(CRC32C.checksum(vector.bytes) == vector.checksum)
        vector.bytes.withUnsafeBytes { raw in
            #expect(CRC32C.checksum(raw) == vector.checksum)
            #expect(CRC32C.portableChecksum(raw) == vector.checksum)
        }
        // A sequence without contiguous storage takes the copying path of the generic overload.
        #expect(CRC32C.checksum(vector.bytes.lazy.map { $0 }) == vector.checksum)
        // The reference implementation is itself checked against the published values.
        #expect(Self.referenceChecksum(vector.bytes) == vector.checksum)
    }

    @Test("the same vectors at every misaligned start address")
    func vectorsAtMisalignedAddresses() {
        for vector in Self.vectors {
            var storage = [UInt8](repeating: 0xA5, count: vector.bytes.count + 16)
            for shift in 0..<16 {
                storage.replaceSubrange(shift..<(shift + vector.bytes.count), with: vector.bytes)
                storage.withUnsafeBytes { raw in
                    let slice = UnsafeRawBufferPointer(rebasing: raw[shift..<(shift + vector.bytes.count)])
                    #expect(CRC32C.checksum(slice) == vector.checksum, "\(vector) at shift \(shift)")
                    #expect(CRC32C.portableChecksum(slice) == vector.checksum, "\(vector) at shift \(shift)")
                }
                storage = [UInt8](repeating: 0xA5, count: vector.bytes.count + 16)
            }
        }
    }

    @Test("empty input is 0, and continuing over nothing changes nothing")
    func emptyInput() {
        #expect(CRC32C.checksum([UInt8]()) == 0)
        #expect(CRC32C.checksum(UnsafeRawBufferPointer(start: nil, count: 0)) == 0)
        #expect(CRC32C.portableChecksum(UnsafeRawBufferPointer(start: nil, count: 0)) == 0)
        for previous: UInt32 in [0xE306_9283, 1, 0xFFFF_FFFF, 0x8000_0000] {
            #expect(CRC32C.checksum([UInt8](), continuing: previous) == previous)
            #expect(CRC32C.portableChecksum(UnsafeRawBufferPointer(start: nil, count: 0), continuing: previous) == previous)
        }
    }

    @Test("a single flipped bit changes the checksum")
    func singleBitFlips() {
        var bytes = Array("The quick brown fox jumps over the lazy dog".utf8)
        let original = CRC32C.checksum(bytes)
        #expect(original == 0x2262_0404)
        for index in bytes.indices {
            for bit in 0..<8 {
                bytes[index] ^= 1 << bit
                #expect(CRC32C.checksum(bytes) != original, "flip of bit \(bit) of byte \(index) went unnoticed")
                bytes[index] ^= 1 << bit
            }
        }
    }

    @Test("the hardware path is in use when the CPU has SSE4.2")
    func hardwarePathSelected() throws {
        #if arch(x86_64)
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        let hasSSE42 = flags.split(separator: " ").contains("sse4_2")
        #expect(CRC32C.usesHardware == hasSSE42, "cpuinfo sse4_2 = \(hasSSE42)")
        #else
        #expect(!CRC32C.usesHardware)
        #endif
    }

    @Test("hardware, table and reference paths agree on random inputs", arguments: TestSupport.seeds(fixed: [1, 0xC0FFEE]))
    func pathsAgree(seed: UInt64) {
        var random = TestSupport.SeededGenerator(seed: seed)
        // Past 3 × 1024 + 3 × 256 + 8: every stage of the three-stream hardware path.
        let lengthMax = 8000
        // 16 spare bytes so a slice can start at any of the misaligned addresses base+0...base+15.
        let storage = (0..<(lengthMax + 16)).map { _ in UInt8.random(in: 0...255, using: &random) }
        var failures = 0
        storage.withUnsafeBytes { raw in
            for length in 0...lengthMax where failures < 5 {
                let shift = Int.random(in: 0..<16, using: &random)
                let previous: UInt32 = length % 3 == 0 ? 0 : UInt32.random(in: 0...UInt32.max, using: &random)
                let slice = UnsafeRawBufferPointer(rebasing: raw[shift..<(shift + length)])
                let hardware = CRC32C.checksum(slice, continuing: previous)
                let portable = CRC32C.portableChecksum(slice, continuing: previous)
                if hardware != portable {
                    failures += 1
                    Issue.record("seed \(seed): length \(length) shift \(shift) previous \(previous): hardware \(hardware) != portable \(portable)")
                }
                // The bit-at-a-time reference is slow: check it on a sample of lengths.
                if length < 300 || length % 97 == 0 {
                    let reference = Self.referenceChecksum(slice, continuing: previous)
                    if portable != reference {
                        failures += 1
                        Issue.record("seed \(seed): length \(length) shift \(shift) previous \(previous): portable \(portable) != reference \(reference)")
                    }
                }
            }
        }
    }

    @Test("continuation: crc(a+b) == crc(b, continuing: crc(a))", arguments: TestSupport.seeds(fixed: [2, 0xDEC0DE]))
    func continuation(seed: UInt64) {
        var random = TestSupport.SeededGenerator(seed: seed)
        var failedRounds = 0
        for round in 0..<400 where failedRounds < 3 {
            let length = Int.random(in: 0...3000, using: &random)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
            let whole = CRC32C.checksum(bytes)
            let split = Int.random(in: 0...length, using: &random)
            let head = Array(bytes[..<split])
            let tail = Array(bytes[split...])
            var results: [(path: String, value: UInt32)] = []
            results.append(("hardware", CRC32C.checksum(tail, continuing: CRC32C.checksum(head))))
            head.withUnsafeBytes { headRaw in
                tail.withUnsafeBytes { tailRaw in
                    results.append(("portable", CRC32C.portableChecksum(tailRaw, continuing: CRC32C.portableChecksum(headRaw))))
                    // Mixed: start on one path and continue on the other.
                    results.append(("hardware then portable", CRC32C.portableChecksum(tailRaw, continuing: CRC32C.checksum(headRaw))))
                }
            }
            // Many pieces: a running checksum fed in irregular chunks (as a streaming writer would).
            var running: UInt32 = 0
            var start = 0
            while start < length {
                let end = min(length, start + Int.random(in: 1...600, using: &random))
                running = CRC32C.checksum(bytes[start..<end], continuing: running)
                start = end
            }
            results.append(("chunked", running))
            for result in results where result.value != whole {
                Issue.record("seed \(seed) round \(round): length \(length) split at \(split): \(result.path) continuation gave \(result.value), whole input \(whole)")
            }
            if results.contains(where: { $0.value != whole }) { failedRounds += 1 }
        }
    }

    @Test("a shift combines crc(a) and crc(b) into crc(a + b) for any a and any b of its length")
    func shiftCombinesChecksums() {
        var generator = SystemRandomNumberGenerator()
        for length in [1, 7, 20, 4096, 5000] {
            let shift = length == 4096 ? CRC32C.shift4096 : CRC32C.Shift(lengthBytes: length)
            #expect(shift.lengthBytes == length)
            for trial in 0..<50 {
                let a = (0..<(trial % 3 == 0 ? 0 : Int.random(in: 1...64, using: &generator))).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let b = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let whole = Self.referenceChecksum(a + b)
                #expect(shift.combine(Self.referenceChecksum(a), Self.referenceChecksum(b)) == whole, "length \(length), |a| = \(a.count)")
            }
        }
        // A wrong length gives a wrong answer: the shift is specific to its length.
        let a: [UInt8] = [1, 2, 3], b = [UInt8](repeating: 9, count: 4095)
        #expect(CRC32C.shift4096.combine(Self.referenceChecksum(a), Self.referenceChecksum(b)) != Self.referenceChecksum(a + b))
    }
}
