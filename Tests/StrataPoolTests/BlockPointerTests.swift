// BlockPointer's two on-disk forms: golden bytes of each (the one-address form is the original
// layout, unchanged), round trips, flags this build does not know refused (not misread), and
// decoding total on any 32 bytes.

import Testing
import StrataIO
@testable import StrataPool

@Suite struct BlockPointerTests {
    static func encoded(_ pointer: BlockPointer) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: BlockPointer.encodedByteCount)
        bytes.withUnsafeMutableBytes { pointer.encode(into: $0, at: 0) }
        return bytes
    }

    static func decoded(_ bytes: [UInt8]) -> BlockPointer {
        bytes.withUnsafeBytes { BlockPointer.decode(from: $0, at: 0) }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.withUnsafeBytes { GoldenFixtures.hex($0, 0 ..< bytes.count) }
    }

    static let twoCopies = BlockPointer(deviceIndex: 1, offsetBytes: 0x1234_5000, lengthBytes: 16384, birthCheckpoint: 0x0102_0304_0506_0708,
                                        checksum: 0xDEAD_BEEF, secondCopy: BlockAddress(deviceIndex: 3, offsetBytes: 0x10_0000_0000))

    @Test func oneAddressFormIsTheOriginalLayout() {
        let pointer = BlockPointer(deviceIndex: 1, offsetBytes: 0x10_0000, lengthBytes: 4096, birthCheckpoint: 41, checksum: 0xDEAD_BEEF)
        let bytes = Self.encoded(pointer)
        // offset, length, birth, device 1, flags 0, crc32c
        #expect(Self.hex(bytes) == "0000100000000000" + "0010000000000000" + "2900000000000000" + "0100" + "0000" + "efbeadde")
        #expect(Self.decoded(bytes) == pointer)
        #expect(pointer.copyCount == 1 && pointer.secondCopy == nil && pointer.formatProblem == nil)
        #expect(Self.encoded(.null).allSatisfy { $0 == 0 })
        #expect(Self.decoded([UInt8](repeating: 0, count: 32)).isNull)
        // An unaligned one-copy pointer (the log's) stays expressible.
        let odd = BlockPointer(deviceIndex: 7, offsetBytes: 12_345, lengthBytes: 999, birthCheckpoint: 2, checksum: 5)
        #expect(Self.decoded(Self.encoded(odd)) == odd)
    }

    @Test func twoAddressFormGoldenBytes() {
        let bytes = Self.encoded(Self.twoCopies)
        // copy 0 offset 0x12345 units (u48), copy 1 offset 0x1000000 units, copy 1 device 3,
        // length 4 units, birth, copy 0 device 1, flags 0x0001, crc32c
        #expect(Self.hex(bytes) == "452301000000" + "000000010000" + "0300" + "0400" + "0807060504030201" + "0100" + "0100" + "efbeadde")
        let back = Self.decoded(bytes)
        #expect(back == Self.twoCopies)
        #expect(back.copyCount == 2 && !back.isNull && back.formatProblem == nil)
        #expect(back.address(ofCopy: 0) == BlockAddress(deviceIndex: 1, offsetBytes: 0x1234_5000))
        #expect(back.address(ofCopy: 1) == BlockAddress(deviceIndex: 3, offsetBytes: 0x10_0000_0000))
        #expect(Array(back.copies) == [Extent(deviceIndex: 1, offsetBytes: 0x1234_5000, lengthBytes: 16384),
                                       Extent(deviceIndex: 3, offsetBytes: 0x10_0000_0000, lengthBytes: 16384)])
        #expect(back.pointer(toCopy: 1) == BlockPointer(deviceIndex: 3, offsetBytes: 0x10_0000_0000, lengthBytes: 16384,
                                                         birthCheckpoint: 0x0102_0304_0506_0708, checksum: 0xDEAD_BEEF))
    }

    @Test func pointersOfAnAllocationRoundTrip() {
        var random = SeededRandom(seed: 77)
        for _ in 0 ..< 2000 {
            let units = 1 + random.next() % 256
            let a = Extent(deviceIndex: Int(random.next() % 64), offsetBytes: (random.next() >> 20) * 4096, lengthBytes: units * 4096)
            var b = Extent(deviceIndex: Int(random.next() % 64), offsetBytes: (random.next() >> 4) & ~UInt64(4095), lengthBytes: units * 4096)
            if b.deviceIndex == a.deviceIndex { b.deviceIndex = (b.deviceIndex + 1) % 64 }
            let birth = random.next(), checksum = UInt32(truncatingIfNeeded: random.next())
            for copies in [ExtentCopies([a]), ExtentCopies([a, b])] {
                let pointer = BlockPointer(copies: copies, birthCheckpoint: birth, checksum: checksum)
                #expect(pointer.copies == copies)
                let bytes = Self.encoded(pointer)
                #expect(bytes[26] == (copies.count == 2 ? 1 : 0) && bytes[27] == 0, "flags")
                #expect(Self.decoded(bytes) == pointer)
            }
        }
        // The largest offset the packed form holds: 2^48 − 1 units.
        let far = BlockPointer(deviceIndex: 65535, offsetBytes: ((1 << 48) - 1) * 4096, lengthBytes: 65535 * 4096, birthCheckpoint: .max,
                               checksum: .max, secondCopy: BlockAddress(deviceIndex: 0, offsetBytes: 0))
        #expect(Self.decoded(Self.encoded(far)) == far)
    }

    @Test func flagsThisBuildDoesNotKnowAreRefusedNotMisread() {
        var bytes = Self.encoded(Self.twoCopies)
        for flags: UInt16 in [0x0002, 0x0003, 0x8000, 0x8001, 0xFFFF] {
            bytes[26] = UInt8(flags & 0xFF)
            bytes[27] = UInt8(flags >> 8)
            let pointer = Self.decoded(bytes)
            #expect(pointer.undecodedFlags == flags)
            #expect(pointer.formatProblem?.contains("does not know") == true, "\(flags)")
            #expect(!pointer.isNull && pointer.secondCopy == nil)
            #expect(Self.encoded(pointer) == bytes, "written back as read")
        }
        // The two-address form with a zero length, or both copies at one place: corrupt.
        var zeroLength = Self.encoded(Self.twoCopies)
        zeroLength[14] = 0
        zeroLength[15] = 0
        var samePlace = Self.twoCopies
        samePlace.secondCopy = BlockAddress(deviceIndex: 2, offsetBytes: 0)
        var samePlaceBytes = Self.encoded(samePlace)
        samePlaceBytes.replaceSubrange(0 ..< 6, with: [0, 0, 0, 0, 0, 0])
        samePlaceBytes.replaceSubrange(24 ..< 26, with: [2, 0])
        for bytes in [zeroLength, samePlaceBytes] {
            let pointer = Self.decoded(bytes)
            #expect(pointer.undecodedFlags == 1)
            #expect(pointer.formatProblem?.contains("malformed") == true)
            #expect(!pointer.isNull)
            #expect(Self.encoded(pointer) == bytes)
        }
        // All zero but the flags: not null either.
        var flagsOnly = [UInt8](repeating: 0, count: 32)
        flagsOnly[26] = 4
        #expect(!Self.decoded(flagsOnly).isNull && Self.decoded(flagsOnly).formatProblem != nil)
    }

    /// Any 32 bytes decode without trapping, and encoding the result gives the same 32 bytes
    /// (every field of either form is kept, and an undecoded pointer keeps its raw bytes).
    @Test func decodeIsTotalAndEncodeInvertsIt() {
        var random = SeededRandom(seed: 2026)
        var forms = [0, 0, 0]
        for round in 0 ..< 50_000 {
            var bytes = (0 ..< 4).flatMap { _ in withUnsafeBytes(of: random.next()) { Array($0) } }
            switch round % 4 {
            case 0: bytes[26] = 0; bytes[27] = 0            // the one-address form
            case 1: bytes[26] = 1; bytes[27] = 0            // the two-address form
            case 2: bytes[27] = 0                           // low flag bits only
            default: break                                  // anything
            }
            let pointer = Self.decoded(bytes)
            forms[pointer.undecodedFlags != nil ? 2 : pointer.copyCount - 1] += 1
            #expect(Self.encoded(pointer) == bytes)
            if pointer.formatProblem == nil && pointer.copyCount == 2 {
                #expect(pointer.lengthBytes > 0 && pointer.lengthBytes % 4096 == 0 && pointer.offsetBytes % 4096 == 0)
            }
        }
        #expect(forms.allSatisfy { $0 > 1000 }, "\(forms)")
    }
}
