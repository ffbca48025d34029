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
}
