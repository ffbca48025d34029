// LogBlock — the on-disk layout of one intent-log block and of the records packed in it.
//
// Theory. A log block is what one group-commit batch writes: a 128-byte header, the batch's
// records back to back, zero padding to a multiple of 4 KiB. It is written once, at a place the
// chain fixes (right after the previous block of its segment, or at the start of the next
// segment), and never rewritten until its segment is released by a checkpoint and reused.
//
// Why the checksum lives in the block. Elsewhere in Strata a block's checksum sits in its parent
// pointer. A log cannot do that: block k is written (and acknowledged) before block k+1 exists,
// so nothing written earlier can hold k+1's checksum. Like the ZIL's ZILOG2 blocks, a log block
// is self-checksummed and carries its *verifier* instead: the pool UUID, the log identity (a
// random 64-bit number drawn when the log is created), its block sequence, and the checksum of
// the block before it. Replay knows all four before reading a block (the previous block, or the
// log head, gave them), so a block is accepted only if
//   - its crc32c matches (a torn block — any subset of its 4 KiB units from before the write —
//     fails it: the checksum covers every byte the header claims), and
//   - it names this pool and this log (a block of another pool or log is never taken), and
//   - its sequence is exactly the next one (a stale block from an earlier lap of a reused
//     segment has an older sequence: sequences are never reused within a log), and
//   - its previous-checksum field equals the checksum of the block replay accepted before it (a
//     block-shaped run of bytes inside some earlier, torn block cannot know the checksum of a
//     block written after it).
//
// Block layout (little-endian; pinned by golden-bytes tests):
//
//   0    8   magic "STRATLOG"
//   8    2   format version (1)
//   10   2   header bytes (128)
//   12   4   block bytes (a multiple of 4096, the header included)
//   16   16  pool UUID (high, low)
//   32   8   log identity
//   40   8   block sequence (1 for the first block of a log, +1 per block)
//   48   8   LSN of the first record
//   56   4   record count (≥ 1)
//   60   4   record bytes (the records' total size, padding between records included)
//   64   4   crc32c of the previous block (0 before the first block of a log)
//   68   4   segment bytes (the log's segment size)
//   72   1   next segment: copy count (0: not allocated yet, 1...4)
//   73   7   zero
//   80   40  next segment copies, 4 × (offset 8, device index 2); unused entries zero
//   120  4   zero
//   124  4   crc32c of bytes [0, 124) continued over [128, block bytes)
//
// Record layout (at 128, then back to back; every record starts 8-byte aligned):
//
//   0    2   type (1...65535, the DMU's vocabulary; 0 is never written)
//   2    2   flags (zero in version 1)
//   4    4   payload bytes
//   8    8   LSN (log sequence number: 1 for a log's first record, +1 per record)
//   16   8   transaction id (the DMU's; the log only carries it)
//   24   4   crc32c of the payload continued over bytes [0, 24) of this header
//   28   4   zero
//   32   payload, then zero padding to a multiple of 8
//
// The record checksum is redundant with the block's; it is computed by the appending thread
// (in parallel, outside the log's lock), checked again at replay, and lets a tool name the
// damaged record inside a block that somehow passed its checksum.

import StrataIO
import StrataPool

/// A log sequence number: the position of a record in its log (1, 2, 3, …; 0 means "none").
public typealias LSN = UInt64

/// What replay knows about one record (its payload is handed over separately, as a `RawSpan`).
public struct LogRecord: Sendable, Equatable, CustomStringConvertible {
    /// The DMU's record type (never 0).
    public var type: UInt16
    public var transactionID: UInt64
    public var lsn: LSN
    public var payloadBytes: Int

    public init(type: UInt16, transactionID: UInt64, lsn: LSN, payloadBytes: Int) {
        self.type = type
        self.transactionID = transactionID
        self.lsn = lsn
        self.payloadBytes = payloadBytes
    }

    public var description: String { "record \(lsn) (type \(type), transaction \(transactionID), \(payloadBytes) bytes)" }
}

/// Layout constants and coding of log blocks and records (see the theory above).
public enum LogBlock {
    public static let formatVersion: UInt16 = 1
    public static let magic: UInt64 = 0x474F_4C54_4152_5453   // "STRATLOG" little-endian
    public static let headerBytes = 128
    public static let recordHeaderBytes = 32
    /// Every block is a multiple of this (the unit of O_DIRECT I/O and of the allocator).
    public static let unitBytes = 4096
    public static let nextSegmentCopiesMax = 4
    static let checksumOffset = 124

    /// The size a record takes in a block: header, payload, padding to 8.
    @inlinable
    public static func recordBytes(payloadBytes: Int) -> Int {
        recordHeaderBytes + (payloadBytes + 7) & ~7
    }

    /// The header fields of one block.
    public struct Header: Equatable, Sendable {
        public var blockBytes: Int
        public var poolUUID: PoolUUID
        public var logIdentity: UInt64
        public var sequence: UInt64
        public var firstLSN: LSN
        public var recordCount: Int
        public var recordBytes: Int
        public var previousChecksum: UInt32
        public var segmentBytes: UInt64
        /// The next segment of the chain (copies), empty when not allocated yet.
        public var nextSegment: [Extent]

        public init(blockBytes: Int, poolUUID: PoolUUID, logIdentity: UInt64, sequence: UInt64, firstLSN: LSN,
                    recordCount: Int, recordBytes: Int, previousChecksum: UInt32, segmentBytes: UInt64, nextSegment: [Extent]) {
            self.blockBytes = blockBytes
            self.poolUUID = poolUUID
            self.logIdentity = logIdentity
            self.sequence = sequence
            self.firstLSN = firstLSN
            self.recordCount = recordCount
            self.recordBytes = recordBytes
            self.previousChecksum = previousChecksum
            self.segmentBytes = segmentBytes
            self.nextSegment = nextSegment
        }
    }

    /// Writes `header` into the first 128 bytes of `block` and seals the block: zero padding after
    /// the records, then the checksum. Returns the block checksum. `block.count` must be
    /// `header.blockBytes`; the records must already be in place.
    public static func seal(_ header: Header, into block: UnsafeMutableRawBufferPointer) -> UInt32 {
        precondition(block.count == header.blockBytes && header.blockBytes % unitBytes == 0,
                     "block of \(block.count) bytes, header says \(header.blockBytes)")
        precondition(header.recordCount >= 1 && headerBytes + header.recordBytes <= header.blockBytes,
                     "\(header.recordCount) records of \(header.recordBytes) bytes in a \(header.blockBytes)-byte block")
        precondition(header.nextSegment.count <= nextSegmentCopiesMax, "\(header.nextSegment.count) next-segment copies")
        let used = headerBytes + header.recordBytes
        if used < block.count {
            UnsafeMutableRawBufferPointer(rebasing: block[used...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        UnsafeMutableRawBufferPointer(rebasing: block[0..<headerBytes]).initializeMemory(as: UInt8.self, repeating: 0)
        put(magic, block, 0)
        put(formatVersion, block, 8)
        put(UInt16(headerBytes), block, 10)
        put(UInt32(header.blockBytes), block, 12)
        put(header.poolUUID.high, block, 16)
        put(header.poolUUID.low, block, 24)
        put(header.logIdentity, block, 32)
        put(header.sequence, block, 40)
        put(header.firstLSN, block, 48)
        put(UInt32(header.recordCount), block, 56)
        put(UInt32(header.recordBytes), block, 60)
        put(header.previousChecksum, block, 64)
        put(UInt32(header.segmentBytes), block, 68)
        put(UInt8(header.nextSegment.count), block, 72)
        for (index, extent) in header.nextSegment.enumerated() {
            put(extent.offsetBytes, block, 80 + index * 10)
            put(UInt16(extent.deviceIndex), block, 88 + index * 10)
        }
        let checksum = blockChecksum(UnsafeRawBufferPointer(block))
        put(checksum, block, checksumOffset)
        return checksum
    }

    /// crc32c of `[0, 124)` continued over `[128, count)`.
    public static func blockChecksum(_ block: UnsafeRawBufferPointer) -> UInt32 {
        let head = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: block[0..<checksumOffset]))
        return CRC32C.checksum(UnsafeRawBufferPointer(rebasing: block[headerBytes...]), continuing: head)
    }

    /// Writes one record (header and payload, padding zeroed) at the start of `destination`, which
    /// must hold `recordBytes(payloadBytes:)`. `payloadChecksum` is `CRC32C.checksum(payload)`.
    @inlinable
    public static func putRecord(type: UInt16, transactionID: UInt64, lsn: LSN, payload: UnsafeRawBufferPointer,
                                 payloadChecksum: UInt32, into destination: UnsafeMutableRawBufferPointer) {
        let size = recordBytes(payloadBytes: payload.count)
        precondition(destination.count >= size && type != 0, "record of \(size) bytes (type \(type)) into \(destination.count)")
        let base = destination.baseAddress!
        base.storeBytes(of: type.littleEndian, toByteOffset: 0, as: UInt16.self)
        base.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
        base.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 4, as: UInt32.self)
        base.storeBytes(of: lsn.littleEndian, toByteOffset: 8, as: UInt64.self)
        base.storeBytes(of: transactionID.littleEndian, toByteOffset: 16, as: UInt64.self)
        let checksum = CRC32C.checksum(UnsafeRawBufferPointer(start: base, count: 24), continuing: payloadChecksum)
        base.storeBytes(of: checksum.littleEndian, toByteOffset: 24, as: UInt32.self)
        base.storeBytes(of: UInt32(0), toByteOffset: 28, as: UInt32.self)
        if payload.count > 0 {
            (base + recordHeaderBytes).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
        }
        let padding = size - recordHeaderBytes - payload.count
        if padding > 0 { (base + recordHeaderBytes + payload.count).initializeMemory(as: UInt8.self, repeating: 0, count: padding) }
    }

    // MARK: Decoding

    /// What the bytes at a block position are, judged against what replay expects there.
    public enum Verdict: Equatable, Sendable {
        /// A valid block (records not yet checked).
        case valid(Header)
        /// Not the expected block: the end of the log (torn, stale, foreign or never written).
        case end(reason: String)
        /// The expected block (identity and sequence match, checksum good) in a newer format.
        case newerVersion(UInt16)
    }

    /// What replay expects at a position: the verifier of the next block.
    public struct Expectation: Equatable, Sendable {
        public var poolUUID: PoolUUID
        public var logIdentity: UInt64
        public var sequence: UInt64
        public var previousChecksum: UInt32
        public var segmentBytes: UInt64
    }

    /// Judges the block at the start of `bytes` (which runs to the end of its segment).
    public static func inspect(_ bytes: UnsafeRawBufferPointer, expecting expected: Expectation) -> Verdict {
        guard bytes.count >= headerBytes else { return .end(reason: "no room for a header") }
        guard get(UInt64.self, bytes, 0) == magic else { return .end(reason: "no block magic") }
        let blockBytes = Int(get(UInt32.self, bytes, 12))
        guard blockBytes >= unitBytes, blockBytes % unitBytes == 0, blockBytes <= bytes.count else {
            return .end(reason: "block length \(blockBytes) invalid or past the segment end")
        }
        let uuid = PoolUUID(high: get(UInt64.self, bytes, 16), low: get(UInt64.self, bytes, 24))
        guard uuid == expected.poolUUID, get(UInt64.self, bytes, 32) == expected.logIdentity else {
            return .end(reason: "a block of another pool or log")
        }
        let sequence = get(UInt64.self, bytes, 40)
        guard sequence == expected.sequence else { return .end(reason: "sequence \(sequence), expected \(expected.sequence)") }
        let block = UnsafeRawBufferPointer(rebasing: bytes[0..<blockBytes])
        guard blockChecksum(block) == get(UInt32.self, bytes, checksumOffset) else {
            return .end(reason: "checksum mismatch (torn block \(sequence))")
        }
        let version = get(UInt16.self, bytes, 8)
        guard version == formatVersion else { return .newerVersion(version) }
        guard get(UInt32.self, bytes, 64) == expected.previousChecksum else {
            return .end(reason: "block \(sequence) does not follow the previous block (previous checksum differs)")
        }
        let recordCount = Int(get(UInt32.self, bytes, 56))
        let recordBytes = Int(get(UInt32.self, bytes, 60))
        let copies = Int(get(UInt8.self, bytes, 72))
        guard get(UInt16.self, bytes, 10) == UInt16(headerBytes), recordCount >= 1,
              headerBytes + recordBytes <= blockBytes, copies <= nextSegmentCopiesMax,
              UInt64(get(UInt32.self, bytes, 68)) == expected.segmentBytes else {
            return .end(reason: "block \(sequence): header fields out of range")
        }
        var next: [Extent] = []
        for index in 0..<copies {
            next.append(Extent(deviceIndex: Int(get(UInt16.self, bytes, 88 + index * 10)),
                               offsetBytes: get(UInt64.self, bytes, 80 + index * 10), lengthBytes: expected.segmentBytes))
        }
        return .valid(Header(blockBytes: blockBytes, poolUUID: uuid, logIdentity: expected.logIdentity, sequence: sequence,
                             firstLSN: get(UInt64.self, bytes, 48), recordCount: recordCount, recordBytes: recordBytes,
                             previousChecksum: expected.previousChecksum, segmentBytes: expected.segmentBytes, nextSegment: next))
    }

    /// Walks the records of a valid block: `body(record, payload)` in order. Returns nil when they
    /// are well formed, else what is wrong (a block that passed its checksum with bad records is
    /// corruption, not a torn tail).
    public static func forEachRecord(in block: UnsafeRawBufferPointer, header: Header,
                                     _ body: (LogRecord, UnsafeRawBufferPointer) throws -> Void) rethrows -> String? {
        var offset = headerBytes
        let end = headerBytes + header.recordBytes
        for index in 0..<header.recordCount {
            guard offset + recordHeaderBytes <= end else { return "record \(index) starts past the records' end" }
            let type = get(UInt16.self, block, offset)
            let payloadBytes = Int(get(UInt32.self, block, offset + 4))
            let lsn = get(UInt64.self, block, offset + 8)
            let size = recordBytes(payloadBytes: payloadBytes)
            guard type != 0, offset + size <= end, lsn == header.firstLSN + UInt64(index) else {
                return "record \(index) at byte \(offset): type \(type), \(payloadBytes) payload bytes, LSN \(lsn) (expected \(header.firstLSN + UInt64(index)))"
            }
            let payload = UnsafeRawBufferPointer(rebasing: block[(offset + recordHeaderBytes)..<(offset + recordHeaderBytes + payloadBytes)])
            let checksum = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: block[offset..<(offset + 24)]),
                                           continuing: CRC32C.checksum(payload))
            guard checksum == get(UInt32.self, block, offset + 24) else { return "record \(lsn): payload checksum mismatch" }
            try body(LogRecord(type: type, transactionID: get(UInt64.self, block, offset + 16), lsn: lsn, payloadBytes: payloadBytes), payload)
            offset += size
        }
        return offset == end ? nil : "records end at byte \(offset), header says \(end)"
    }

    // MARK: Field access

    @inline(__always)
    static func put<T: FixedWidthInteger>(_ value: T, _ block: UnsafeMutableRawBufferPointer, _ offset: Int) {
        ByteWriter(block).put(value, at: offset)
    }

    @inline(__always)
    static func get<T: FixedWidthInteger>(_ type: T.Type, _ block: UnsafeRawBufferPointer, _ offset: Int) -> T {
        ByteReader(block).get(type, at: offset)
    }
}
