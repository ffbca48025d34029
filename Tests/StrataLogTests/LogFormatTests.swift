// LogFormatTests — the byte layout of log blocks, records and heads, pinned (golden bytes), and
// the verdicts of block inspection.

import StrataIO
@testable import StrataLog
import StrataPool
import Testing

@Suite struct LogFormatTests {
    static let uuid = PoolUUID(high: 0x1122_3344_5566_7788, low: 0x99AA_BBCC_DDEE_FF00)

    /// An independent little-endian writer for the expected bytes.
    static func put(_ bytes: inout [UInt8], _ value: UInt64, at offset: Int, width: Int) {
        for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
    }

    static func sampleBlock() -> (bytes: [UInt8], checksum: UInt32) {
        let block = allocateAlignedBuffer(byteCount: 4096)
        defer { block.deallocate() }
        let payload: [UInt8] = [1, 2, 3, 4, 5]
        payload.withUnsafeBytes { raw in
            LogBlock.putRecord(type: 7, transactionID: 0xABCD, lsn: 42, payload: raw, payloadChecksum: CRC32C.checksum(raw),
                               into: UnsafeMutableRawBufferPointer(rebasing: block[128..<168]))
        }
        let header = LogBlock.Header(blockBytes: 4096, poolUUID: uuid, logIdentity: 0x0102_0304_0506_0708, sequence: 9, firstLSN: 42,
                                     recordCount: 1, recordBytes: 40, previousChecksum: 0xDEAD_BEEF, segmentBytes: 1 << 20,
                                     nextSegment: [Extent(deviceIndex: 1, offsetBytes: 0x0030_0000, lengthBytes: 1 << 20)])
        let checksum = LogBlock.seal(header, into: block)
        return (Array(block), checksum)
    }

    @Test func blockHeaderLayoutMatchesTheDocumentedOffsets() {
        let (bytes, checksum) = LogFormatTests.sampleBlock()
        var expected = [UInt8](repeating: 0, count: 4096)
        Array("STRATLOG".utf8).enumerated().forEach { expected[$0.offset] = $0.element }
        LogFormatTests.put(&expected, 1, at: 8, width: 2)
        LogFormatTests.put(&expected, 128, at: 10, width: 2)
        LogFormatTests.put(&expected, 4096, at: 12, width: 4)
        LogFormatTests.put(&expected, LogFormatTests.uuid.high, at: 16, width: 8)
        LogFormatTests.put(&expected, LogFormatTests.uuid.low, at: 24, width: 8)
        LogFormatTests.put(&expected, 0x0102_0304_0506_0708, at: 32, width: 8)
        LogFormatTests.put(&expected, 9, at: 40, width: 8)
        LogFormatTests.put(&expected, 42, at: 48, width: 8)
        LogFormatTests.put(&expected, 1, at: 56, width: 4)
        LogFormatTests.put(&expected, 40, at: 60, width: 4)
        LogFormatTests.put(&expected, 0xDEAD_BEEF, at: 64, width: 4)
        LogFormatTests.put(&expected, 1 << 20, at: 68, width: 4)
        LogFormatTests.put(&expected, 1, at: 72, width: 1)
        LogFormatTests.put(&expected, 0x0030_0000, at: 80, width: 8)
        LogFormatTests.put(&expected, 1, at: 88, width: 2)
        // Record at 128: type, flags, payload bytes, LSN, transaction, checksum, zero, payload, padding.
        LogFormatTests.put(&expected, 7, at: 128, width: 2)
        LogFormatTests.put(&expected, 5, at: 132, width: 4)
        LogFormatTests.put(&expected, 42, at: 136, width: 8)
        LogFormatTests.put(&expected, 0xABCD, at: 144, width: 8)
        for (index, byte) in [UInt8]([1, 2, 3, 4, 5]).enumerated() { expected[160 + index] = byte }
        let recordChecksum = CRC32C.checksum(Array(expected[128..<152]), continuing: CRC32C.checksum([UInt8]([1, 2, 3, 4, 5])))
        LogFormatTests.put(&expected, UInt64(recordChecksum), at: 152, width: 4)
        let blockChecksum = CRC32C.checksum(Array(expected[128...]), continuing: CRC32C.checksum(Array(expected[0..<124])))
        LogFormatTests.put(&expected, UInt64(blockChecksum), at: 124, width: 4)
        #expect(bytes == expected)
        #expect(checksum == blockChecksum)
        #expect(LogBlock.headerBytes == 128 && LogBlock.recordHeaderBytes == 32 && LogBlock.formatVersion == 1)
    }

    @Test func blockHeaderGoldenBytes() {
        let (bytes, checksum) = LogFormatTests.sampleBlock()
        let hex = bytes[0..<96].map { String(format: "%02x", $0) }.joined()
        #expect(hex == "53545241544c4f4701008000001000008877665544332211" + "00ffeeddccbbaa99" + "0807060504030201"
                + "0900000000000000" + "2a00000000000000" + "01000000" + "28000000" + "efbeadde" + "00001000" + "01000000000000"
                + "00" + "0000300000000000" + "0100" + "000000000000")
        #expect(checksum == UInt32(littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 124, as: UInt32.self) }))
    }

    @Test func recordSizesArePaddedToEight() {
        #expect(LogBlock.recordBytes(payloadBytes: 0) == 32)
        #expect(LogBlock.recordBytes(payloadBytes: 1) == 40)
        #expect(LogBlock.recordBytes(payloadBytes: 4096) == 4128)
    }

    @Test func inspectionAcceptsOnlyTheExpectedBlock() {
        let (bytes, checksum) = LogFormatTests.sampleBlock()
        let good = LogBlock.Expectation(poolUUID: LogFormatTests.uuid, logIdentity: 0x0102_0304_0506_0708, sequence: 9,
                                        previousChecksum: 0xDEAD_BEEF, segmentBytes: 1 << 20)
        bytes.withUnsafeBytes { raw in
            guard case .valid(let header) = LogBlock.inspect(raw, expecting: good) else { Issue.record("valid block refused"); return }
            #expect(header.firstLSN == 42 && header.recordCount == 1 && header.nextSegment.count == 1)
            var seen: [LogRecord] = []
            let problem = LogBlock.forEachRecord(in: raw, header: header) { record, payload in
                seen.append(record)
                #expect(Array(payload) == [1, 2, 3, 4, 5])
            }
            #expect(problem == nil)
            #expect(seen == [LogRecord(type: 7, transactionID: 0xABCD, lsn: 42, payloadBytes: 5)])
            var wrong = good
            wrong.sequence = 10
            #expect(isEnd(LogBlock.inspect(raw, expecting: wrong)))
            wrong = good
            wrong.logIdentity = 1
            #expect(isEnd(LogBlock.inspect(raw, expecting: wrong)))
            wrong = good
            wrong.poolUUID = PoolUUID(high: 1, low: 2)
            #expect(isEnd(LogBlock.inspect(raw, expecting: wrong)))
            wrong = good
            wrong.previousChecksum = checksum
            #expect(isEnd(LogBlock.inspect(raw, expecting: wrong)))
        }
        // A torn block: one byte of the payload region differs.
        var torn = bytes
        torn[2000] ^= 0xFF
        torn.withUnsafeBytes { #expect(isEnd(LogBlock.inspect($0, expecting: good))) }
        // A newer version with a valid checksum is reported, not skipped.
        var newer = bytes
        newer[8] = 2
        newer.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: LogBlock.blockChecksum(UnsafeRawBufferPointer(raw)).littleEndian, toByteOffset: 124, as: UInt32.self)
        }
        newer.withUnsafeBytes { #expect(LogBlock.inspect($0, expecting: good) == .newerVersion(2)) }
    }

    func isEnd(_ verdict: LogBlock.Verdict) -> Bool {
        if case .end = verdict { return true }
        return false
    }

    @Test func headLayoutAndRoundTrip() {
        let head = LogHead(poolUUID: LogFormatTests.uuid, logIdentity: 77, coveredThroughLSN: 1000, firstSequence: 12,
                           previousChecksum: 0x0BAD_F00D, segmentBytes: 1 << 20,
                           segments: [[Extent(deviceIndex: 1, offsetBytes: 0x10_0000, lengthBytes: 1 << 20)],
                                      [Extent(deviceIndex: 1, offsetBytes: 0x20_0000, lengthBytes: 1 << 20),
                                       Extent(deviceIndex: 0, offsetBytes: 0x40_0000, lengthBytes: 1 << 20)]],
                           headCopies: [Extent(deviceIndex: 1, offsetBytes: 0x5000, lengthBytes: 4096)])
        let block = allocateAlignedBuffer(byteCount: 4096)
        defer { block.deallocate() }
        head.encode(into: block)
        let bytes = Array(block)
        var expected = [UInt8](repeating: 0, count: 4096)
        Array("STRATLGH".utf8).enumerated().forEach { expected[$0.offset] = $0.element }
        LogFormatTests.put(&expected, 1, at: 8, width: 2)
        LogFormatTests.put(&expected, 4096, at: 12, width: 4)
        LogFormatTests.put(&expected, LogFormatTests.uuid.high, at: 16, width: 8)
        LogFormatTests.put(&expected, LogFormatTests.uuid.low, at: 24, width: 8)
        LogFormatTests.put(&expected, 77, at: 32, width: 8)
        LogFormatTests.put(&expected, 1000, at: 40, width: 8)
        LogFormatTests.put(&expected, 12, at: 48, width: 8)
        LogFormatTests.put(&expected, 0x0BAD_F00D, at: 56, width: 4)
        LogFormatTests.put(&expected, 1 << 20, at: 60, width: 4)
        LogFormatTests.put(&expected, 2, at: 64, width: 4)
        LogFormatTests.put(&expected, 1, at: 68, width: 1)
        LogFormatTests.put(&expected, 0x5000, at: 72, width: 8)
        LogFormatTests.put(&expected, 1, at: 80, width: 2)
        LogFormatTests.put(&expected, 1, at: 128, width: 1)
        LogFormatTests.put(&expected, 0x10_0000, at: 129, width: 8)
        LogFormatTests.put(&expected, 1, at: 137, width: 2)
        LogFormatTests.put(&expected, 2, at: 139, width: 1)
        LogFormatTests.put(&expected, 0x20_0000, at: 140, width: 8)
        LogFormatTests.put(&expected, 1, at: 148, width: 2)
        LogFormatTests.put(&expected, 0x40_0000, at: 150, width: 8)
        LogFormatTests.put(&expected, 0, at: 158, width: 2)
        #expect(bytes == expected)
        #expect(LogHead.decode(UnsafeRawBufferPointer(block)) == .valid(head))
        #expect(LogHead.segmentCountMax(copies: 4) == 96 && LogHead.segmentCountMax(copies: 2) == 188 && LogHead.segmentCountMax(copies: 1) == 360)
        block[8] = 2
        #expect(LogHead.decode(UnsafeRawBufferPointer(block)) == .newerVersion(2))
    }
}
