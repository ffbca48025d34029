// IntentLog+Replay — reading the log back: `replay` (read-only) and `open` (replay, claim,
// continue appending).
//
// The walk. From the head the uberblock names: read it (checksum against the pointer), then
// read the first listed segment and inspect the block at offset 0 against the expected
// verifier (LogBlock.swift). A valid block yields its records (those with LSN ≤ the head's
// covered LSN are skipped: the checkpoint holds them) and moves the position past it, the
// expected sequence up by one and the expected previous checksum to its checksum. Where no
// valid block is found, the writer may have abandoned the rest of the segment because a batch
// did not fit: the start of the next segment (listed in the head, or named by the last valid
// block) is tried with the same verifier. Where neither holds a valid block, the log ends.
// A block whose checksum passed but whose records are malformed, or whose LSNs do not follow,
// is corruption and throws (a torn tail never looks like that).
//
// Idempotence. Replay reads only. `open` changes memory only — the allocator learns about the
// chain segments allocated after the last checkpoint's cut (`markAllocated`: the head lists
// every segment the cut counted, so the others are exactly the chain's unlisted ones) — so a
// crash during or right after open leaves the image it started from. The opened log continues
// at the end position with the next sequence and the last valid block's checksum: its first
// block either lands whole (and extends the chain) or is a torn tail like any other.

import StrataIO
import StrataPool

#if canImport(Glibc)
import Glibc
#endif

/// What a replay found.
public struct LogReplaySummary: Sendable, Equatable, CustomStringConvertible {
    /// Records yielded (LSN > covered).
    public var recordCount = 0
    /// Records read but covered by the checkpoint (LSN ≤ covered), not yielded.
    public var skippedRecordCount = 0
    public var blockCount = 0
    public var segmentCount = 0
    public var bytesRead: UInt64 = 0
    public var coveredThroughLSN: LSN = 0
    /// The LSN of the last valid record (the covered LSN when none is newer).
    public var lastLSN: LSN = 0
    /// Why the walk stopped (the first invalid position), for diagnostics.
    public var endReason = "empty log"

    public init() {}

    public var description: String {
        "\(recordCount) records replayed (\(skippedRecordCount) covered), \(blockCount) blocks in \(segmentCount) segments, "
            + "\(bytesRead) bytes read; covered through \(coveredThroughLSN), last LSN \(lastLSN); end: \(endReason)"
    }
}

extension IntentLog {
    /// Yields, in LSN order, every record after the checkpoint whose intent-log root is `root`
    /// (`pool.uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]`), stopping at the first
    /// block that fails its checksum, sequence or identity. Reads only (fine on a read-only
    /// pool). The payload span is valid during the call only. Throws `LogError` for an unusable
    /// head, a corrupt block or a device error, and rethrows what `body` throws.
    @discardableResult
    public static func replay(pool: Pool, from root: BlockPointer,
                              _ body: (LogRecord, RawSpan) throws -> Void) throws -> LogReplaySummary {
        try scan(pool: pool, root: root, body).summary
    }

    /// Opens the log for appending after replaying it (`replay`'s walk and `body`), claiming
    /// the chain's segments in the pool's allocator. Call right after the pool import, before
    /// anything else allocates. With a null root, creates a new, empty log: it is not anchored
    /// until a checkpoint names it (`beginCheckpoint`, commit, `checkpointCommitted`), and
    /// appending before that traps.
    public static func open(pool: Pool, from root: BlockPointer, settings: LogSettings = LogSettings(),
                            replaying body: (LogRecord, RawSpan) throws -> Void = { _, _ in }) throws -> IntentLog {
        let copies = pool.allocator.policy.copies(for: .log)
        let problems = settings.validationProblems(copies: copies)
        guard problems.isEmpty else { throw LogError.invalidSettings(problems) }
        let initial: InitialState
        if root.isNull {
            initial = try createInitialState(pool: pool, settings: settings)
        } else {
            let result = try scan(pool: pool, root: root, body)
            for segment in result.claimed {
                for extent in segment { pool.allocator.markAllocated(extent) }
            }
            initial = result.state
        }
        let log = IntentLog(pool: pool, settings: settings, initial: initial)
        log.startWriter()
        return log
    }

    static func createInitialState(pool: Pool, settings: LogSettings) throws(LogError) -> InitialState {
        var segments: [Segment] = []
        for _ in 0..<2 {
            do {
                segments.append(Segment(copies: try pool.allocator.allocate(.log, lengthBytes: settings.segmentBytes)))
            } catch {
                for segment in segments { pool.allocator.free(segment.copies) }
                throw .noSpace("no log segment of \(settings.segmentBytes) bytes for a new log: \(error)")
            }
        }
        segments[0].firstSequence = 1
        var identity: UInt64 = 0
        while identity == 0 { identity = UInt64.random(in: 1...UInt64.max) }
        return InitialState(logIdentity: identity, segments: segments, currentSegment: 0, writeOffset: 0, nextSequence: 1,
                            previousChecksum: 0, nextLSN: 1, coveredThroughLSN: 0, head: nil)
    }

    struct ScanResult {
        var state: InitialState
        var claimed: [[Extent]]
        var summary: LogReplaySummary
    }

    static func scan(pool: Pool, root: BlockPointer, _ body: (LogRecord, RawSpan) throws -> Void) throws -> ScanResult {
        let head = try readHead(pool: pool, root: root)
        var summary = LogReplaySummary()
        summary.coveredThroughLSN = head.coveredThroughLSN
        summary.lastLSN = head.coveredThroughLSN
        var list = head.segments
        var segments = [Segment(copies: ExtentCopies(list[0]), firstSequence: head.firstSequence,
                                previousChecksum: head.previousChecksum)]
        var expected = LogBlock.Expectation(poolUUID: pool.uuid, logIdentity: head.logIdentity, sequence: head.firstSequence,
                                            previousChecksum: head.previousChecksum, segmentBytes: head.segmentBytes)
        var lastSeenLSN: LSN = 0
        var position = 0
        var namedNext: [Extent]? = nil
        let reader = SegmentReader(pool: pool, segmentBytes: Int(head.segmentBytes))
        defer { reader.deallocate() }
        try reader.load(list[0])
        if list.count > 1 { reader.prefetch(list[1]) }
        summary.segmentCount = 1

        while true {
            var verdict = reader.inspect(at: position, expecting: expected)
            if case .end = verdict, position < reader.segmentBytes, list[segments.count - 1].count > 1 {
                verdict = try reader.inspectOtherCopies(list[segments.count - 1], at: position, expecting: expected)
            }
            switch verdict {
            case .newerVersion(let version):
                throw LogError.unsupportedVersion(path: reader.path, offsetBytes: reader.offset(of: position), what: "log block",
                                                  version: version, supported: LogBlock.formatVersion)
            case .valid(let header):
                guard lastSeenLSN == 0 ? (header.firstLSN >= 1 && header.firstLSN <= head.coveredThroughLSN + 1)
                                       : header.firstLSN == lastSeenLSN + 1 else {
                    throw LogError.corruptBlock(path: reader.path, offsetBytes: reader.offset(of: position),
                                                detail: "block \(header.sequence) starts at LSN \(header.firstLSN) after LSN \(lastSeenLSN) (covered \(head.coveredThroughLSN))")
                }
                let block = reader.block(at: position, bytes: header.blockBytes)
                let problem = try LogBlock.forEachRecord(in: block, header: header) { record, payload in
                    if record.lsn <= head.coveredThroughLSN {
                        summary.skippedRecordCount += 1
                    } else {
                        summary.recordCount += 1
                        try body(record, payload.bytes)
                    }
                }
                if let problem {
                    throw LogError.corruptBlock(path: reader.path, offsetBytes: reader.offset(of: position), detail: problem)
                }
                let index = segments.count - 1
                if segments[index].firstLSN == 0 { segments[index].firstLSN = header.firstLSN }
                if !header.nextSegment.isEmpty {
                    if index + 1 < list.count, list[index + 1] != header.nextSegment {
                        throw LogError.corruptBlock(path: reader.path, offsetBytes: reader.offset(of: position),
                                                    detail: "names next segment \(header.nextSegment), the head lists \(list[index + 1])")
                    }
                    namedNext = header.nextSegment
                    reader.prefetch(header.nextSegment)
                }
                lastSeenLSN = header.firstLSN + UInt64(header.recordCount) - 1
                summary.lastLSN = max(summary.lastLSN, lastSeenLSN)
                summary.blockCount += 1
                expected.sequence += 1
                expected.previousChecksum = LogBlock.get(UInt32.self, block, LogBlock.checksumOffset)
                position += header.blockBytes
                continue
            case .end(let reason):
                summary.endReason = "\(reader.path) offset \(reader.offset(of: position)): \(reason)"
            }
            // No valid block here: the writer may have moved on to the next segment's start.
            let index = segments.count - 1
            guard let next = index + 1 < list.count ? list[index + 1] : namedNext else { break }
            if index + 1 == list.count { list.append(next) }        // named only by a block: allocated after the cut
            try reader.load(next)
            if index + 2 < list.count { reader.prefetch(list[index + 2]) }
            var nextVerdict = reader.inspect(at: 0, expecting: expected)
            if case .end = nextVerdict, next.count > 1 {
                nextVerdict = try reader.inspectOtherCopies(next, at: 0, expecting: expected)
            }
            guard case .valid = nextVerdict else { break }
            segments.append(Segment(copies: ExtentCopies(next), firstSequence: expected.sequence,
                                    previousChecksum: expected.previousChecksum))
            summary.segmentCount += 1
            namedNext = nil
            position = 0
        }
        summary.bytesRead = reader.bytesRead
        let current = segments.count - 1
        for extra in list[segments.count...] { segments.append(Segment(copies: ExtentCopies(extra))) }
        let state = InitialState(logIdentity: head.logIdentity, segments: segments, currentSegment: current,
                                 writeOffset: UInt64(position), nextSequence: expected.sequence,
                                 previousChecksum: expected.previousChecksum, nextLSN: max(lastSeenLSN, head.coveredThroughLSN) + 1,
                                 coveredThroughLSN: head.coveredThroughLSN, head: nil)
        var result = ScanResult(state: state, claimed: Array(list[head.segments.count...]), summary: summary)
        result.state.head = (root, ExtentCopies(head.headCopies))
        return result
    }

    /// Reads the head the uberblock names, trying each copy its pointer holds in turn: the first
    /// that reads, matches the pointer's checksum and decodes as this pool's head wins; when none
    /// does, the first copy's problem is reported.
    static func readHead(pool: Pool, root: BlockPointer) throws(LogError) -> LogHead {
        if let problem = root.formatProblem {
            throw .corruptHead(path: "device \(root.deviceIndex)", offsetBytes: root.offsetBytes, detail: "unreadable pointer: \(problem)")
        }
        var firstError: LogError? = nil
        for copy in 0..<root.copyCount {
            do throws(LogError) {
                return try readHead(pool: pool, copy: root.pointer(toCopy: copy))
            } catch {
                if case .unsupportedVersion = error { throw error }     // a newer head is not a bad copy
                if firstError == nil { firstError = error }
            }
        }
        throw firstError!
    }

    private static func readHead(pool: Pool, copy root: BlockPointer) throws(LogError) -> LogHead {
        guard root.deviceIndex >= 0, root.deviceIndex < pool.devices.count, root.lengthBytes == UInt64(LogHead.headBytes) else {
            throw .corruptHead(path: "device \(root.deviceIndex)", offsetBytes: root.offsetBytes,
                               detail: "pointer names device \(root.deviceIndex) of \(pool.devices.count), length \(root.lengthBytes)")
        }
        let device = pool.devices[root.deviceIndex]
        let block = allocateAlignedBuffer(byteCount: LogHead.headBytes)
        defer { block.deallocate() }
        do { try device.read(into: block, at: root.offsetBytes) } catch { throw .io(error) }
        let checksum = CRC32C.checksum(UnsafeRawBufferPointer(block))
        guard checksum == root.checksum else {
            throw .corruptHead(path: device.path, offsetBytes: root.offsetBytes,
                               detail: "checksum \(String(checksum, radix: 16)), the uberblock's pointer says \(String(root.checksum, radix: 16))")
        }
        switch LogHead.decode(UnsafeRawBufferPointer(block)) {
        case .invalid(let why): throw .corruptHead(path: device.path, offsetBytes: root.offsetBytes, detail: why)
        case .newerVersion(let version):
            throw .unsupportedVersion(path: device.path, offsetBytes: root.offsetBytes, what: "log head", version: version,
                                      supported: LogHead.formatVersion)
        case .valid(let head):
            guard head.poolUUID == pool.uuid else {
                throw .corruptHead(path: device.path, offsetBytes: root.offsetBytes, detail: "head of pool \(head.poolUUID), not \(pool.uuid)")
            }
            return head
        }
    }
}

/// Reads whole segments for replay into one aligned buffer (one large sequential read each).
///
/// Read-ahead: once the scan knows the next segment (the head lists it, or a block names it),
/// `prefetch` reads it on a helper thread into a second buffer while the current one is
/// verified and applied; `load` of that segment then waits for the read and swaps the buffers.
/// A prefetch the scan never loads (the log ended first) is waited for and dropped. Replay I/O
/// and apply overlap, so a replay is bound by the slower of the two instead of their sum.
final class SegmentReader {
    let pool: Pool
    let segmentBytes: Int
    private(set) var buffer: UnsafeMutableRawBufferPointer
    private(set) var bytesRead: UInt64 = 0
    private(set) var extent = Extent(deviceIndex: 0, offsetBytes: 0, lengthBytes: 0)
    private var scratch: UnsafeMutableRawBufferPointer?
    /// The second buffer, for read-ahead (allocated by the first prefetch).
    private var spare: UnsafeMutableRawBufferPointer?
    private var inFlight: Prefetch?

    /// One read-ahead: the helper thread reads `copy` into `target` and records the outcome.
    private final class Prefetch {
        let devices: [any BlockStorage]
        let copy: Extent
        let target: UnsafeMutableRawBufferPointer
        var error: LogError?
        var thread = pthread_t()

        init(devices: [any BlockStorage], copy: Extent, target: UnsafeMutableRawBufferPointer) {
            self.devices = devices
            self.copy = copy
            self.target = target
        }
    }

    init(pool: Pool, segmentBytes: Int) {
        self.pool = pool
        self.segmentBytes = segmentBytes
        buffer = allocateAlignedBuffer(byteCount: segmentBytes)
    }

    func deallocate() {
        _ = finishPrefetch()
        buffer.deallocate()
        scratch?.deallocate()
        spare?.deallocate()
    }

    var path: String { extent.deviceIndex < pool.devices.count ? pool.devices[extent.deviceIndex].path : "device \(extent.deviceIndex)" }
    func offset(of position: Int) -> UInt64 { extent.offsetBytes + UInt64(position) }

    /// Reads the first copy of a segment (taking a finished read-ahead of it when there is one).
    func load(_ copies: [Extent]) throws(LogError) {
        precondition(!copies.isEmpty, "segment without copies")
        if let done = finishPrefetch(), done.copy == copies[0], done.error == nil {
            let loaded = buffer
            buffer = done.target
            spare = loaded
            bytesRead += UInt64(segmentBytes)
            extent = copies[0]
            return
        }
        try SegmentReader.read(copies[0], devices: pool.devices, segmentBytes: segmentBytes, into: buffer)
        bytesRead += UInt64(segmentBytes)
        extent = copies[0]
    }

    /// Starts reading the first copy of `copies` in the background, unless a read-ahead is
    /// already under way. Errors surface only if that segment is loaded (then read again,
    /// synchronously, to report them).
    func prefetch(_ copies: [Extent]) {
        guard inFlight == nil, let copy = copies.first, copy != extent,
              copy.deviceIndex < pool.devices.count, copy.lengthBytes == UInt64(segmentBytes) else { return }
        if spare == nil { spare = allocateAlignedBuffer(byteCount: segmentBytes) }
        let prefetch = Prefetch(devices: pool.devices, copy: copy, target: spare!)
        spare = nil                                     // lent to the read until `finishPrefetch`
        let started = ThreadSetup.tryStart {
            do throws(LogError) {
                try SegmentReader.read(prefetch.copy, devices: prefetch.devices, segmentBytes: prefetch.target.count, into: prefetch.target)
            } catch {
                prefetch.error = error
            }
        }
        guard let thread = started.thread else {        // no thread: read when loaded, as without read-ahead
            spare = prefetch.target
            return
        }
        prefetch.thread = thread
        inFlight = prefetch
    }

    /// Waits for the read-ahead in flight, if any; its buffer becomes the spare again unless the
    /// caller takes it.
    private func finishPrefetch() -> Prefetch? {
        guard let prefetch = inFlight else { return nil }
        inFlight = nil
        let joined = pthread_join(prefetch.thread, nil)
        precondition(joined == 0, "pthread_join of a log read-ahead: \(joined)")
        spare = prefetch.target
        return prefetch
    }

    private static func read(_ copy: Extent, devices: [any BlockStorage], segmentBytes: Int,
                             into target: UnsafeMutableRawBufferPointer) throws(LogError) {
        guard copy.deviceIndex < devices.count, copy.lengthBytes == UInt64(segmentBytes) else {
            throw .corruptBlock(path: "device \(copy.deviceIndex)", offsetBytes: copy.offsetBytes,
                                detail: "segment \(copy) is not on a pool device or not \(segmentBytes) bytes")
        }
        // Large reads in 4 MiB pieces: the device layer may bound one transfer.
        let chunk = 4 << 20
        var done = 0
        while done < segmentBytes {
            let length = min(chunk, segmentBytes - done)
            do {
                try devices[copy.deviceIndex].read(into: UnsafeMutableRawBufferPointer(rebasing: target[done..<(done + length)]),
                                                   at: copy.offsetBytes + UInt64(done))
            } catch { throw .io(error) }
            done += length
        }
    }

    func inspect(at position: Int, expecting expected: LogBlock.Expectation) -> LogBlock.Verdict {
        guard position < segmentBytes else { return .end(reason: "segment end") }
        return LogBlock.inspect(UnsafeRawBufferPointer(rebasing: buffer[position...]), expecting: expected)
    }

    /// Tries the other copies of the current segment at `position`; on success their bytes
    /// replace the first copy's from `position` on (so the block can be read from the buffer).
    func inspectOtherCopies(_ copies: [Extent], at position: Int, expecting expected: LogBlock.Expectation) throws(LogError) -> LogBlock.Verdict {
        if scratch == nil { scratch = allocateAlignedBuffer(byteCount: segmentBytes) }
        let other = scratch!
        var verdict = LogBlock.Verdict.end(reason: "no copy holds a valid block")
        for copy in copies.dropFirst() {
            try SegmentReader.read(copy, devices: pool.devices, segmentBytes: segmentBytes, into: other)
            bytesRead += UInt64(segmentBytes)
            verdict = LogBlock.inspect(UnsafeRawBufferPointer(rebasing: other[position...]), expecting: expected)
            if case .valid = verdict {
                UnsafeMutableRawBufferPointer(rebasing: buffer[position...]).copyMemory(from: UnsafeRawBufferPointer(rebasing: other[position...]))
                return verdict
            }
        }
        return verdict
    }

    func block(at position: Int, bytes: Int) -> UnsafeRawBufferPointer {
        precondition(position + bytes <= segmentBytes, "block at \(position) of \(bytes) bytes past the segment")
        return UnsafeRawBufferPointer(rebasing: buffer[position..<(position + bytes)])
    }
}
