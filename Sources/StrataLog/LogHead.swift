// LogHead — where replay starts: the 4 KiB block the uberblock's intent-log root points to.
//
// Theory. The ZIL keeps a header in the objset that names the first log block and its expected
// sequence; Strata keeps the same thing in a head block written copy-on-write at every
// checkpoint (`IntentLog.beginCheckpoint`), named by `Uberblock.RootSlot.intentLog` with its
// crc32c in that pointer (the checksum lives in the parent, as everywhere in the pool). A head
// is never rewritten: each checkpoint writes a new one to a fresh 4 KiB of the log class and
// frees the old one (deferred, so the old one stays intact until the new uberblock is durable
// and one more checkpoint has passed).
//
// It records what replay must know before it reads the first block: the log's identity, the
// verifier of the first block (its sequence and the checksum of the block before it), the LSN
// through which the checkpoint covers the records (replay yields only later ones), and the
// segments the log owned when the head was written, in chain order. The list is what makes
// space accounting crash-proof: every log segment allocated before the checkpoint's cut is in
// this list (the log allocates nothing between `beginCheckpoint` and `checkpointCommitted`),
// so after a crash, opening the log knows which segments the loaded space maps already count,
// and claims (`PoolAllocator.markAllocated`) exactly the chain segments allocated after the cut.
//
// Layout (4096 bytes, little-endian; pinned by golden-bytes tests):
//
//   0    8   magic "STRATLGH"
//   8    2   format version (1)
//   10   2   zero
//   12   4   head bytes (4096)
//   16   16  pool UUID (high, low)
//   32   8   log identity
//   40   8   covered through LSN (records with LSN ≤ this are in the checkpoint)
//   48   8   sequence of the first block (at the start of the first segment)
//   56   4   crc32c of the block before it (0: none)
//   60   4   segment bytes
//   64   4   segment count n (≥ 1)
//   68   1   copy count of this head (1...4)
//   69   3   zero
//   72   40  this head's copies, 4 × (offset 8, device index 2) — freed with it
//   112  16  zero
//   128  n entries: copy count c (1), then c × (offset 8, device index 2)
//   ...  zero to 4096

import StrataIO
import StrataPool

/// The decoded head block of an intent log.
public struct LogHead: Equatable, Sendable {
    public static let formatVersion: UInt16 = 1
    public static let magic: UInt64 = 0x4847_4C54_4152_5453   // "STRATLGH" little-endian
    public static let headBytes = 4096
    static let segmentsOffset = 128
    /// Segments a head can list when each has `copies` copies: (4096 − 128) / (1 + 10 × copies),
    /// 360 at one copy, 188 at two, 96 at the pool's maximum of four. `LogSettings` refuses a
    /// `logBytesMax` whose segments would not fit at the log's copy count.
    public static func segmentCountMax(copies: Int) -> Int {
        precondition((1...LogBlock.nextSegmentCopiesMax).contains(copies), "\(copies) copies")
        return (headBytes - segmentsOffset) / (1 + copies * 10)
    }

    public var poolUUID: PoolUUID
    public var logIdentity: UInt64
    public var coveredThroughLSN: LSN
    public var firstSequence: UInt64
    public var previousChecksum: UInt32
    public var segmentBytes: UInt64
    /// Owned segments in chain order; each inner array holds a segment's copies.
    public var segments: [[Extent]]
    /// Where this head itself is written (every copy; the pointer names the first).
    public var headCopies: [Extent]

    public init(poolUUID: PoolUUID, logIdentity: UInt64, coveredThroughLSN: LSN, firstSequence: UInt64,
                previousChecksum: UInt32, segmentBytes: UInt64, segments: [[Extent]], headCopies: [Extent]) {
        self.poolUUID = poolUUID
        self.logIdentity = logIdentity
        self.coveredThroughLSN = coveredThroughLSN
        self.firstSequence = firstSequence
        self.previousChecksum = previousChecksum
        self.segmentBytes = segmentBytes
        self.segments = segments
        self.headCopies = headCopies
    }

    public func encode(into block: UnsafeMutableRawBufferPointer) {
        precondition(block.count == LogHead.headBytes, "head block of \(block.count) bytes")
        precondition(!segments.isEmpty && segments.count <= LogHead.segmentCountMax(copies: 1) && firstSequence >= 1,
                     "head with \(segments.count) segments, first sequence \(firstSequence)")
        block.initializeMemory(as: UInt8.self, repeating: 0)
        LogBlock.put(LogHead.magic, block, 0)
        LogBlock.put(LogHead.formatVersion, block, 8)
        LogBlock.put(UInt32(LogHead.headBytes), block, 12)
        LogBlock.put(poolUUID.high, block, 16)
        LogBlock.put(poolUUID.low, block, 24)
        LogBlock.put(logIdentity, block, 32)
        LogBlock.put(coveredThroughLSN, block, 40)
        LogBlock.put(firstSequence, block, 48)
        LogBlock.put(previousChecksum, block, 56)
        LogBlock.put(UInt32(segmentBytes), block, 60)
        LogBlock.put(UInt32(segments.count), block, 64)
        precondition((1...LogBlock.nextSegmentCopiesMax).contains(headCopies.count), "head with \(headCopies.count) copies")
        LogBlock.put(UInt8(headCopies.count), block, 68)
        for (index, extent) in headCopies.enumerated() {
            LogBlock.put(extent.offsetBytes, block, 72 + index * 10)
            LogBlock.put(UInt16(extent.deviceIndex), block, 80 + index * 10)
        }
        var offset = LogHead.segmentsOffset
        for copies in segments {
            precondition((1...LogBlock.nextSegmentCopiesMax).contains(copies.count) && offset + 1 + copies.count * 10 <= LogHead.headBytes,
                         "segment with \(copies.count) copies at byte \(offset) of the head")
            LogBlock.put(UInt8(copies.count), block, offset)
            offset += 1
            for extent in copies {
                precondition(extent.lengthBytes == segmentBytes, "segment \(extent) is not \(segmentBytes) bytes")
                LogBlock.put(extent.offsetBytes, block, offset)
                LogBlock.put(UInt16(extent.deviceIndex), block, offset + 8)
                offset += 10
            }
        }
    }

    public enum DecodeResult: Equatable, Sendable {
        case valid(LogHead)
        case invalid(String)
        case newerVersion(UInt16)
    }

    /// Decodes a head whose checksum the caller has verified against its pointer.
    public static func decode(_ block: UnsafeRawBufferPointer) -> DecodeResult {
        precondition(block.count == headBytes, "head block of \(block.count) bytes")
        guard LogBlock.get(UInt64.self, block, 0) == magic else { return .invalid("no head magic") }
        let version = LogBlock.get(UInt16.self, block, 8)
        guard version == formatVersion else { return .newerVersion(version) }
        let count = Int(LogBlock.get(UInt32.self, block, 64))
        let segmentBytes = UInt64(LogBlock.get(UInt32.self, block, 60))
        let firstSequence = LogBlock.get(UInt64.self, block, 48)
        guard LogBlock.get(UInt32.self, block, 12) == UInt32(headBytes), (1...segmentCountMax(copies: 1)).contains(count),
              segmentBytes > 0, segmentBytes % UInt64(LogBlock.unitBytes) == 0, firstSequence >= 1 else {
            return .invalid("head fields out of range (\(count) segments of \(segmentBytes) bytes, first sequence \(firstSequence))")
        }
        let headCopyCount = Int(LogBlock.get(UInt8.self, block, 68))
        guard (1...LogBlock.nextSegmentCopiesMax).contains(headCopyCount) else { return .invalid("head copy count \(headCopyCount)") }
        let headCopies = (0..<headCopyCount).map { index in
            Extent(deviceIndex: Int(LogBlock.get(UInt16.self, block, 80 + index * 10)),
                   offsetBytes: LogBlock.get(UInt64.self, block, 72 + index * 10), lengthBytes: UInt64(headBytes))
        }
        var segments: [[Extent]] = []
        var offset = segmentsOffset
        for index in 0..<count {
            let copies = Int(LogBlock.get(UInt8.self, block, offset))
            guard (1...LogBlock.nextSegmentCopiesMax).contains(copies), offset + 1 + copies * 10 <= headBytes else {
                return .invalid("segment \(index) has \(copies) copies")
            }
            offset += 1
            var extents: [Extent] = []
            for _ in 0..<copies {
                extents.append(Extent(deviceIndex: Int(LogBlock.get(UInt16.self, block, offset + 8)),
                                      offsetBytes: LogBlock.get(UInt64.self, block, offset), lengthBytes: segmentBytes))
                offset += 10
            }
            segments.append(extents)
        }
        return .valid(LogHead(poolUUID: PoolUUID(high: LogBlock.get(UInt64.self, block, 16), low: LogBlock.get(UInt64.self, block, 24)),
                              logIdentity: LogBlock.get(UInt64.self, block, 32),
                              coveredThroughLSN: LogBlock.get(UInt64.self, block, 40), firstSequence: firstSequence,
                              previousChecksum: LogBlock.get(UInt32.self, block, 56), segmentBytes: segmentBytes, segments: segments,
                              headCopies: headCopies))
    }
}
