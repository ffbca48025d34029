// crc32c (Castagnoli): the checksum every Strata block carries in its parent's pointer.
// SSE4.2's CRC32 instruction when the CPU has it, a slicing-by-8 table otherwise (CShims).
// Conventions: initial value 0 means "start", the value returned is final (already inverted),
// and a running checksum continues by passing the previous result: crc(a+b) == crc(b, crc(a)).

import CShims

public enum CRC32C {
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        CShims_crc32c(previous, bytes.baseAddress, bytes.count)
    }

    @inlinable
    public static func checksum<Bytes: Sequence>(_ bytes: Bytes, continuing previous: UInt32 = 0) -> UInt32
    where Bytes.Element == UInt8 {
        if let result = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0), continuing: previous) }) {
            return result
        }
        let array = Array(bytes)
        return array.withUnsafeBytes { checksum($0, continuing: previous) }
    }

    /// The table implementation, whatever the CPU (for tests and cross-checks).
    public static func portableChecksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        CShims_crc32c_portable(previous, bytes.baseAddress, bytes.count)
    }

    public static var usesHardware: Bool { CShims_crc32c_hardware() != 0 }

    /// Combines checksums across a fixed length, without reading the bytes again:
    /// `Shift(lengthBytes: n).combine(crc(a), crc(b))` is `crc(a + b)` for any `b` of n bytes.
    ///
    /// Why it works. Without the final inversion, the CRC register is a linear map of its input
    /// register followed by the bytes: feeding n more bytes b to register R gives L_n(R) ⊕ g(b),
    /// where L_n (n zero bytes fed to R) is linear. With crc(x) = ¬(register after x from ¬0),
    /// the inversions cancel and crc(a + b) = L_n(crc(a)) ⊕ crc(b). L_n is a 32×32 bit matrix,
    /// applied here as four 256-entry tables (one per byte of the register), built once from the
    /// images of the 32 unit vectors. Cost: four loads and xors, against ~160 ns for a 4 KiB
    /// checksum. A 4 KiB overwrite uses it to get its log record's checksum from its data's.
    public final class Shift: @unchecked Sendable {
        public let lengthBytes: Int
        @usableFromInline let tables: UnsafeMutablePointer<UInt32>     // 4 × 256

        public init(lengthBytes: Int) {
            precondition(lengthBytes > 0, "a shift of \(lengthBytes) bytes")
            self.lengthBytes = lengthBytes
            let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: lengthBytes, alignment: 64)
            defer { zeros.deallocate() }
            zeros.initializeMemory(as: UInt8.self, repeating: 0)
            var basis = [UInt32](repeating: 0, count: 32)
            for bit in 0..<32 {
                // L_n(e) = register after n zero bytes from e: undo checksum's input and output inversion.
                basis[bit] = ~CRC32C.checksum(UnsafeRawBufferPointer(zeros), continuing: ~(UInt32(1) << UInt32(bit)))
            }
            tables = .allocate(capacity: 1024)
            for byteIndex in 0..<4 {
                for value in 0..<256 {
                    var image: UInt32 = 0
                    for bit in 0..<8 where value & (1 << bit) != 0 { image ^= basis[byteIndex * 8 + bit] }
                    tables[byteIndex * 256 + value] = image
                }
            }
        }

        deinit { tables.deallocate() }

        /// crc(a + b) from crc(a) and crc(b), b being `lengthBytes` long.
        @inlinable
        public func combine(_ first: UInt32, _ second: UInt32) -> UInt32 {
            tables[Int(first & 0xFF)] ^ tables[256 + Int((first >> 8) & 0xFF)]
                ^ tables[512 + Int((first >> 16) & 0xFF)] ^ tables[768 + Int(first >> 24)] ^ second
        }
    }

    /// The shift across one 4 KiB page.
    public static let shift4096 = Shift(lengthBytes: 4096)
}
