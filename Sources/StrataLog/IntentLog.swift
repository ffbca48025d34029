// IntentLog — the write-ahead intent log: records appended by any thread, made durable in
// group-commit batches, replayed after a crash from the last checkpoint.
//
// Theory
// ------
// What it stores. Records (type, transaction id, LSN, payload) that the DMU appends between
// checkpoints. Records are packed into log blocks (LogBlock.swift): one block per batch, a
// multiple of 4 KiB, self-checksummed with a verifier (pool, log identity, sequence, checksum of
// the previous block). Blocks follow each other inside a *segment* (`segmentBytes` of the pool's
// `.log` class: log devices, else metadata, else data); every block names the next segment,
// allocated ahead of need (ZIL-style preallocation), so replay can follow the chain. The
// uberblock's intent-log root points to a head block (LogHead.swift) that names the first
// segment to replay, the verifier of its first block, the LSN the checkpoint covers, and the
// segments owned at that checkpoint.
//
// Group commit. Appends go into one of two preallocated aligned batch buffers (`batchBytesMax`
// each) under the log's lock: an LSN, a memcpy of the payload, the record header (its checksum
// continued from the payload crc the appender computed before taking the lock), and the
// commit callback into a preallocated array. No allocation per record. The writer (a dedicated
// thread, or in `callerLeads` mode the thread that syncs) takes the open buffer, swaps in the
// other one — appends continue into it while the batch is written — places the block (same
// segment, or the next one when it does not fit), seals it and writes it with one FUA write per
// copy (or one write plus one flush). Once that returns the batch is durable; its callbacks
// fire in LSN order on the writer's thread, then `durableLSN` moves and the `sync()` waiters
// whose LSN it now covers wake.
//
// Wakeups. Each kind of waiter is woken only by the event it waits for (LogConditions.swift,
// LogWaiters.swift): a `sync()` caller parks on its own slot, armed with its LSN, and the
// writer posts exactly the slots the batch satisfied (after releasing the lock; a posted waiter
// returns without retaking it); appenders waiting for room wait on `.room`, broadcast when the
// buffers swap and only if someone waits; the writer alone waits on `.writer`, signalled (after
// the appender unlocks) only when it is idle. Failure and close wake everyone. In `callerLeads`
// mode the caller that finishes leading a batch hands the lead on by waking one waiter whose LSN
// is not durable yet. With a single broadcast per batch instead, every waiter woke on every
// batch and 16 threads on a fast device did no better than one (docs/intent-log.md).
//
// Ordering. One writer, one batch in flight: batch k+1 is written only after batch k is
// durable, and records enter batches in LSN order. So if A was appended before B, B durable ⇒
// A durable, and callbacks fire in append order. A batch is the unit of atomicity at replay
// (its block checksum covers every record in it): `appendGroup` puts a transaction's records in
// one batch, so they replay whole or not at all; records appended one by one may be split
// across batches, and a transaction built that way needs the DMU's own commit record.
//
// Bounds. A record larger than a batch throws `recordTooLarge`. The log owns at most
// `logBytesMax / segmentBytes` segments; at `checkpointRequestPercent` of that the DMU's
// handler is asked for a checkpoint; when the writer needs a segment past the bound it waits
// for `beginCheckpoint` to release some, and appends behind it wait (bounded by
// `appendWaitNsMax`, then `logFull`).
//
// Crash safety.
//   - A block is written only into never-acknowledged space: after the last durable block, or
//     at the start of the preallocated next segment. A crash tears at most the batch in flight,
//     whose callbacks have not fired; replay stops at the first block whose verifier fails.
//   - Opening a log (IntentLog+Replay.swift) writes nothing: a crash right after open is the same
//     image as before it, and replay is idempotent. The opened log appends at the position right
//     after the last valid block, with the next sequence and that block's checksum as verifier:
//     a torn first batch leaves every earlier record exactly as replay found it.
//   - Space: log segments are allocated from the pool between checkpoints, so the durable space
//     maps only count those allocated before the last checkpoint's cut; the head lists those,
//     and open claims (`markAllocated`) the chain segments after them. The log allocates nothing
//     between `beginCheckpoint` and `checkpointCommitted`, so "listed in the head" and "counted
//     by the checkpoint's space maps" are the same set (IntentLog+Checkpoint.swift).
//
// Concurrency: all mutable state below is guarded by `monitor` (a pthread mutex and three
// conditions), except the waiter slots' parkers and free mask (LogWaiters.swift); I/O,
// callbacks and parking run outside it. Lock order: log → allocator / pool state; log → a
// waiter slot's parker (posting under the log lock happens only on failure and close).

import StrataIO
import Synchronization
import StrataPool

#if canImport(Glibc)
import Glibc
#endif

/// One record of `IntentLog.appendGroup`.
public struct LogAppend: Sendable {
    public var type: UInt16
    public var transactionID: UInt64
    public var payload: [UInt8]
    /// `CRC32C.checksum(payload)` when the caller has it already (derived from a checksum of the
    /// data it holds, `CRC32C.Shift`); nil: the log computes it. Trusted in release builds (a
    /// wrong one makes the record fail its checksum at replay, and replay stop there), checked
    /// for every record in debug builds; so only this package's object store may give one.
    package var payloadChecksum: UInt32?

    public init(type: UInt16, transactionID: UInt64, payload: [UInt8]) {
        self.type = type
        self.transactionID = transactionID
        self.payload = payload
        self.payloadChecksum = nil
    }

    package init(type: UInt16, transactionID: UInt64, payload: [UInt8], payloadChecksum: UInt32?) {
        self.type = type
        self.transactionID = transactionID
        self.payload = payload
        self.payloadChecksum = payloadChecksum
    }
}

/// Usage of the log's bounded space, as reported to the checkpoint-request handler.
public struct LogUsage: Sendable, Equatable, CustomStringConvertible {
    public var segmentCount: Int
    public var segmentCountMax: Int
    public var segmentBytes: UInt64
    /// The last LSN appended, made durable, and covered by a committed checkpoint.
    public var appendedLSN: LSN
    public var durableLSN: LSN
    public var coveredThroughLSN: LSN

    public var usedBytes: UInt64 { UInt64(segmentCount) * segmentBytes }
    public var description: String {
        "\(segmentCount)/\(segmentCountMax) segments of \(segmentBytes) bytes; appended \(appendedLSN), durable \(durableLSN), covered \(coveredThroughLSN)"
    }
}

/// Counters of the writer (cumulative since open).
public struct LogStatistics: Sendable, Equatable {
    public var batches = 0
    public var records = 0
    public var blockBytesWritten: UInt64 = 0
    public var payloadBytes: UInt64 = 0
    /// Batches by record count: bucket b counts batches of [2^b, 2^(b+1)) records.
    public var batchRecordCountHistogram = [Int](repeating: 0, count: 20)
    public var checkpointRequests = 0
    /// Times the writer waited for a checkpoint to release segments (log full).
    public var logFullWaits = 0

    public init() {}
}

public final class IntentLog: @unchecked Sendable {
    /// Called once the record with this LSN is durable, in LSN order: on the completer thread
    /// (dedicated-writer mode; it runs at `LogSettings.completerNice`, which a thread created in
    /// the callback inherits) or on the thread that led the batch (`callerLeads`). Keep it short.
    public typealias CommitCallback = @Sendable (LSN) -> Void
    /// Called (on the writer's thread, outside the log's lock) when the log wants a checkpoint.
    /// Must not wait for the log: hand the request to the checkpoint thread.
    public typealias CheckpointRequestHandler = @Sendable (LogUsage) -> Void

    public let pool: Pool
    public let settings: LogSettings
    /// Random, drawn when the log was created; in every block and head of this log.
    public let logIdentity: UInt64
    let poolUUID: PoolUUID
    let monitor = Monitor.forLog()
    /// Per-waiter parking slots of `sync()` (LogWaiters.swift).
    let waiters = LogWaiters()
    let batches: [Batch]

    // MARK: State (guarded by `monitor`)

    struct Segment {
        var copies: ExtentCopies
        /// Sequence of its first block and checksum of the block before (0 until entered).
        var firstSequence: UInt64 = 0
        var previousChecksum: UInt32 = 0
        /// LSN of its first record (0 until its first block is placed).
        var firstLSN: LSN = 0
    }

    struct PendingCheckpoint {
        var coveredThroughLSN: LSN
        var checkpoint: UInt64
        var headCopies: ExtentCopies
        var pointer: BlockPointer?
    }

    var openBatch = 0
    var nextLSN: LSN
    var lastDurableLSN: LSN
    var requestedLSN: LSN = 0
    var coveredThroughLSN: LSN
    /// Owned segments in chain order; `currentSegment` is being written, later ones preallocated.
    /// Changed under the monitor; every change publishes the count (`segmentCountPublished`).
    var segments: [Segment] {
        didSet { publishedSegmentCount.store(segments.count, ordering: .relaxed) }
    }
    /// `segments.count` for readers that do not take the monitor (see `segmentCountPublished`).
    let publishedSegmentCount = Atomic<Int>(0)
    var currentSegment: Int
    var writeOffset: UInt64
    var nextSequence: UInt64
    var previousChecksum: UInt32
    var head: (pointer: BlockPointer, copies: ExtentCopies)?
    var pending: PendingCheckpoint?
    var isAnchored: Bool
    var failure: LogError?
    var isClosed = false
    var writerBusy = false
    var writerIdle = false
    /// Threads waiting on the monitor's `.room` and `.durable` conditions (broadcast only when
    /// someone waits).
    var roomWaiterCount = 0
    var overflowWaiterCount = 0
    var checkpointRequestArmed = true
    var checkpointHandler: CheckpointRequestHandler?
    var stats = LogStatistics()
    var writerThread: pthread_t?
    var completerThread: pthread_t?
    /// Dedicated-writer mode: the batch written (durable) whose callbacks the completer has not
    /// taken yet — at most one, so at most two batches' callbacks are outstanding.
    var pendingCompletion: Completion?
    /// Emptied callback arrays (capacity kept), so handing callbacks over allocates nothing.
    var spareCallbackArrays: [[PendingCallback]] = []

    /// A record's LSN and the callback to fire once it is durable. A struct, not a tuple: an
    /// array of tuples holds its closures at the generic (most abstract) representation, so each
    /// append boxed the caller's closure in a reabstraction thunk — one heap allocation per
    /// committed transaction; a struct field keeps the closure as it is.
    struct PendingCallback {
        let lsn: LSN
        let callback: CommitCallback
    }

    /// A durable batch's callbacks and last LSN, handed from the writer to the completer.
    struct Completion {
        var callbacks: [PendingCallback]
        var lastLSN: LSN
    }

    /// One preallocated batch buffer and the callbacks of its records.
    final class Batch {
        let bytes: UnsafeMutableRawBufferPointer
        var usedBytes = LogBlock.headerBytes
        var recordCount = 0
        var firstLSN: LSN = 0
        var lastLSN: LSN = 0
        var payloadBytes: UInt64 = 0
        var openedNs: UInt64 = 0
        /// Devices (bit = pool device index) to flush before this batch's block is written: they
        /// hold data its records point to (`appendGroup(_:flushingFirst:onDurable:)`).
        var flushMask: UInt64 = 0
        var callbacks: [PendingCallback] = []

        init(capacityBytes: Int) {
            bytes = allocateAlignedBuffer(byteCount: capacityBytes)
            callbacks.reserveCapacity((capacityBytes - LogBlock.headerBytes) / LogBlock.recordHeaderBytes)
        }

        deinit { bytes.deallocate() }

        var isEmpty: Bool { recordCount == 0 }

        func reset() {
            usedBytes = LogBlock.headerBytes
            recordCount = 0
            firstLSN = 0
            lastLSN = 0
            payloadBytes = 0
            flushMask = 0
            callbacks.removeAll(keepingCapacity: true)
        }
    }

    /// Everything `open`/`create` found or decided (IntentLog+Replay.swift).
    struct InitialState {
        var logIdentity: UInt64
        var segments: [Segment]
        var currentSegment: Int
        var writeOffset: UInt64
        var nextSequence: UInt64
        var previousChecksum: UInt32
        var nextLSN: LSN
        var coveredThroughLSN: LSN
        var head: (pointer: BlockPointer, copies: ExtentCopies)?
    }

    init(pool: Pool, settings: LogSettings, initial: InitialState) {
        precondition(initial.currentSegment < initial.segments.count && initial.nextLSN >= 1, "log state out of range")
        precondition(initial.segments[initial.currentSegment].firstSequence != 0 || initial.writeOffset == 0,
                     "current segment not entered")
        self.pool = pool
        self.settings = settings
        self.logIdentity = initial.logIdentity
        self.poolUUID = pool.uuid
        self.batches = [Batch(capacityBytes: settings.batchBytesMax), Batch(capacityBytes: settings.batchBytesMax)]
        self.segments = initial.segments
        publishedSegmentCount.store(initial.segments.count, ordering: .relaxed)
        self.currentSegment = initial.currentSegment
        self.writeOffset = initial.writeOffset
        self.nextSequence = initial.nextSequence
        self.previousChecksum = initial.previousChecksum
        self.nextLSN = initial.nextLSN
        self.lastDurableLSN = initial.nextLSN - 1
        self.coveredThroughLSN = initial.coveredThroughLSN
        self.head = initial.head
        self.isAnchored = initial.head != nil
        self.segments.reserveCapacity(settings.segmentCountMax + 2)
    }

    func startWriter() {
        guard settings.writer == .dedicatedThread else { return }
        // The spare callback arrays exist before the writer can reach for them.
        for _ in 0..<3 {
            var spare: [PendingCallback] = []
            spare.reserveCapacity((settings.batchBytesMax - LogBlock.headerBytes) / LogBlock.recordHeaderBytes)
            spareCallbackArrays.append(spare)
        }
        writerThread = ThreadSetup.start("the log writer") { self.writerLoop() }
        completerThread = ThreadSetup.start("the log completer") { self.completerLoop() }
    }

    // MARK: Public API

    /// Installs the handler asked for a checkpoint when the log fills (see `CheckpointRequestHandler`).
    public func setCheckpointRequestHandler(_ handler: CheckpointRequestHandler?) {
        monitor.lock()
        checkpointHandler = handler
        monitor.unlock()
    }

    /// Appends one record; returns its LSN. Does not wait for the disk: `onDurable` fires (in
    /// LSN order) once the record's batch is durable. Waits, at most `appendWaitNsMax`, when
    /// both batch buffers are full (the writer is behind, or the log is full and waiting for a
    /// checkpoint). Traps when the log is not anchored yet (a new log must be named by a
    /// committed uberblock first: `beginCheckpoint` + commit + `checkpointCommitted`).
    @discardableResult
    public func append(type: UInt16, transactionID: UInt64, payload: RawSpan,
                       onDurable: CommitCallback? = nil) throws(LogError) -> LSN {
        let result: Result<LSN, LogError> = payload.withUnsafeBytes { raw in
            do throws(LogError) {
                return .success(try appendBytes(type: type, transactionID: transactionID, payload: raw, onDurable: onDurable))
            } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// `append` for a byte array.
    @discardableResult
    public func append(type: UInt16, transactionID: UInt64, payload: [UInt8],
                       onDurable: CommitCallback? = nil) throws(LogError) -> LSN {
        try append(type: type, transactionID: transactionID, payload: payload.span.bytes, onDurable: onDurable)
    }

    /// Returns once every record appended before the call is durable (and its callback fired).
    /// Bounded by `appendWaitNsMax`.
    public func sync() throws(LogError) {
        monitor.lock()
        try waitDurableThenUnlock(through: nextLSN - 1)
    }

    /// Asks for a batch now (everything appended so far) without waiting for it. With the
    /// `callerLeads` writer, writes that batch on this thread before returning (unless another
    /// thread is writing, which then picks it up).
    public func commitAsync() {
        monitor.lock()
        defer { monitor.unlock() }
        requestedLSN = max(requestedLSN, nextLSN - 1)
        if settings.writer == .callerLeads {
            if !writerBusy && !batches[openBatch].isEmpty && failure == nil { leadBatchLocked() }
        } else {
            wakeWriterLocked()
        }
    }

    /// Writes everything appended, stops the writer, and refuses further appends. Call once.
    public func close() throws(LogError) {
        var syncError: LogError? = nil
        monitor.lock()
        if !isClosed {
            do throws(LogError) { try waitDurableThenUnlock(through: nextLSN - 1) } catch { syncError = error }
            monitor.lock()
            isClosed = true
            wakeEveryoneLocked()
        }
        let thread = writerThread
        let completer = completerThread
        writerThread = nil
        completerThread = nil
        monitor.unlock()
        if let thread { pthread_join(thread, nil) }
        if let completer { pthread_join(completer, nil) }     // after the writer: it runs what the writer handed over
        if let syncError { throw syncError }
    }

    /// The log's space and LSNs now.
    /// The number of segments the log owns, read without the log's lock (it may be a moment
    /// old): lets a transaction see that the log is far from its throttle mark without taking
    /// the lock every writer contends for. Anything near a bound must use `usage`.
    public var segmentCountPublished: Int { publishedSegmentCount.load(ordering: .relaxed) }

    public var usage: LogUsage {
        monitor.lock()
        defer { monitor.unlock() }
        return usageLocked()
    }

    public var statistics: LogStatistics {
        monitor.lock()
        defer { monitor.unlock() }
        return stats
    }

    /// The LSN of the last record appended (0 when none ever was).
    public var appendedLSN: LSN { usage.appendedLSN }
    /// The LSN through which every record is durable.
    public var durableLSN: LSN {
        monitor.lock()
        defer { monitor.unlock() }
        return lastDurableLSN
    }

    // MARK: Append path

    /// One record (the `append` variants). A record never spans batches, so it replays whole by
    /// itself, as a group does. `givenChecksum` as `LogAppend.payloadChecksum`.
    func appendBytes(type: UInt16, transactionID: UInt64, payload: UnsafeRawBufferPointer, givenChecksum: UInt32? = nil,
                     flushingFirst flushMask: UInt64 = 0, onDurable: CommitCallback?) throws(LogError) -> LSN {
        precondition(type != 0, "record type 0 is reserved")
        precondition(flushMaskIsValid(flushMask), "flush mask \(flushMask) names a device past the pool's \(pool.devices.count)")
        guard payload.count <= settings.payloadBytesMax else {
            throw .recordTooLarge(payloadBytes: payload.count, payloadBytesMax: settings.payloadBytesMax)
        }
        let size = LogBlock.recordBytes(payloadBytes: payload.count)
        let payloadChecksum = Self.checksum(given: givenChecksum, type: type, payload)     // outside the lock, in parallel
        monitor.lock()
        do throws(LogError) { try waitForRoomLocked(bytes: size) } catch {
            monitor.unlock()
            throw error
        }
        let batch = batches[openBatch]
        let lsn = placeLocked(batch, type: type, transactionID: transactionID, payload: payload, payloadChecksum: payloadChecksum, size: size)
        batch.flushMask |= flushMask
        if let onDurable { batch.callbacks.append(PendingCallback(lsn: lsn, callback: onDurable)) }
        let wakesWriter = settings.batchDelayNs == 0 && takeWriterWakeLocked()
        monitor.unlock()
        if wakesWriter { monitor.signal(.writer) }      // after unlocking: the writer does not wake into a held lock
        return lsn
    }

    /// Appends several records that land in the same batch, hence the same block: at replay
    /// they are all there or none is (a transaction's records without a commit record). Their
    /// total size (32 bytes of header per record, payloads padded to 8) must fit one batch.
    /// `onDurable` fires once, with the last LSN. Returns the LSNs given, in order.
    ///
    /// `flushingFirst`: pool devices (bit i = device i, at most 64) holding data the records
    /// point to, written but not flushed by the caller. The writer flushes them before it writes
    /// the batch's block, once per batch however many records ask (the ZIL's vdev flush), so a
    /// record is never durable before the data it names.
    @discardableResult
    public func appendGroup(_ records: [LogAppend], flushingFirst flushMask: UInt64 = 0,
                            onDurable: CommitCallback? = nil) throws(LogError) -> ClosedRange<LSN> {
        precondition(flushMaskIsValid(flushMask), "flush mask \(flushMask) names a device past the pool's \(pool.devices.count)")
        precondition(!records.isEmpty && records.allSatisfy { $0.type != 0 }, "an empty group or record type 0")
        let total = records.reduce(0) { $0 + LogBlock.recordBytes(payloadBytes: $1.payload.count) }
        guard total <= settings.batchBytesMax - LogBlock.headerBytes else {
            throw .recordTooLarge(payloadBytes: total - LogBlock.recordHeaderBytes, payloadBytesMax: settings.payloadBytesMax)
        }
        // Payload checksums before the lock, in parallel with other appenders (a group is a
        // handful of records; more than 16 is rare and computes the rest under the lock).
        var checksums: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        let precomputed = min(records.count, 16)
        withUnsafeMutableBytes(of: &checksums) { raw in
            let slots = raw.bindMemory(to: UInt32.self)
            for index in 0..<precomputed {
                slots[index] = records[index].payload.withUnsafeBytes { Self.checksum(of: records[index], $0) }
            }
        }
        monitor.lock()
        do throws(LogError) { try waitForRoomLocked(bytes: total) } catch {
            monitor.unlock()
            throw error
        }
        let batch = batches[openBatch]
        var first: LSN = 0
        var last: LSN = 0
        withUnsafeBytes(of: &checksums) { raw in
            let slots = raw.bindMemory(to: UInt32.self)
            for (index, record) in records.enumerated() {
                last = record.payload.withUnsafeBytes { payload in
                    placeLocked(batch, type: record.type, transactionID: record.transactionID, payload: payload,
                                payloadChecksum: index < precomputed ? slots[index] : Self.checksum(of: record, payload),
                                size: LogBlock.recordBytes(payloadBytes: payload.count))
                }
                if first == 0 { first = last }
            }
        }
        batch.flushMask |= flushMask
        if let onDurable { batch.callbacks.append(PendingCallback(lsn: last, callback: onDurable)) }
        let wakesWriter = settings.batchDelayNs == 0 && takeWriterWakeLocked()
        monitor.unlock()
        if wakesWriter { monitor.signal(.writer) }
        return first...last
    }

    /// One record, with `appendGroup`'s options (a given checksum, devices to flush first):
    /// what a transaction that changed one thing appends, with no array to hold it.
    @discardableResult
    public func append(_ record: LogAppend, flushingFirst flushMask: UInt64 = 0,
                       onDurable: CommitCallback? = nil) throws(LogError) -> LSN {
        let result: Result<LSN, LogError> = record.payload.withUnsafeBytes { raw in
            do throws(LogError) {
                return .success(try appendBytes(type: record.type, transactionID: record.transactionID, payload: raw,
                                                givenChecksum: record.payloadChecksum, flushingFirst: flushMask, onDurable: onDurable))
            } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Whether `flushMask` names only devices of the pool (bit i = device i; any bit with 64+).
    private func flushMaskIsValid(_ flushMask: UInt64) -> Bool {
        flushMask == 0 || pool.devices.count >= 64 || flushMask >> UInt64(pool.devices.count) == 0
    }

    /// A record's payload checksum: the one it carries (checked in debug builds) or computed.
    private static func checksum(of record: LogAppend, _ payload: UnsafeRawBufferPointer) -> UInt32 {
        checksum(given: record.payloadChecksum, type: record.type, payload)
    }

    private static func checksum(given: UInt32?, type: UInt16, _ payload: UnsafeRawBufferPointer) -> UInt32 {
        guard let given else { return CRC32C.checksum(payload) }
        assert(given == CRC32C.checksum(payload), "record of type \(type): payload checksum given wrong")
        return given
    }

    /// Waits (lock held) until the open batch has `bytes` of room, leading a batch in
    /// `callerLeads` mode. Bounded by `appendWaitNsMax`. Traps on an unanchored log.
    private func waitForRoomLocked(bytes size: Int) throws(LogError) {
        precondition(isAnchored, "append to an intent log that no committed uberblock names yet: commit a checkpoint with beginCheckpoint/checkpointCommitted first")
        var deadlineNs: UInt64 = 0
        while batches[openBatch].usedBytes + size > settings.batchBytesMax || failure != nil || isClosed {
            if let failure { throw .failed(failure.description) }
            if isClosed { throw .closed }
            if settings.writer == .callerLeads && !writerBusy {
                leadBatchLocked()                       // this caller leads one batch
                continue
            }
            if deadlineNs == 0 { deadlineNs = Monitor.nowNs() + settings.appendWaitNsMax }
            wakeWriterLocked()
            roomWaiterCount += 1
            let woken = monitor.wait(.room, untilNs: deadlineNs)
            roomWaiterCount -= 1
            if !woken && batches[openBatch].usedBytes + size > settings.batchBytesMax {
                throw timeoutError(waitedNs: settings.appendWaitNsMax)
            }
        }
    }

    /// Writes one record into the open batch (lock held, room checked); returns its LSN.
    private func placeLocked(_ batch: Batch, type: UInt16, transactionID: UInt64, payload: UnsafeRawBufferPointer,
                             payloadChecksum: UInt32, size: Int) -> LSN {
        let lsn = nextLSN
        nextLSN += 1
        LogBlock.putRecord(type: type, transactionID: transactionID, lsn: lsn, payload: payload, payloadChecksum: payloadChecksum,
                           into: UnsafeMutableRawBufferPointer(rebasing: batch.bytes[batch.usedBytes..<(batch.usedBytes + size)]))
        if batch.recordCount == 0 {
            batch.firstLSN = lsn
            if settings.batchDelayNs > 0 { batch.openedNs = Monitor.nowNs() }
        }
        batch.usedBytes += size
        batch.recordCount += 1
        batch.lastLSN = lsn
        batch.payloadBytes += UInt64(payload.count)
        return lsn
    }

    func timeoutError(waitedNs: UInt64) -> LogError {
        if currentSegment + 1 >= segments.count && segments.count >= settings.segmentCountMax {
            return .logFull(logBytesMax: settings.logBytesMax, segmentBytes: settings.segmentBytes, waitedNs: waitedNs)
        }
        return .appendTimedOut(waitedNs: waitedNs, batchBytesMax: settings.batchBytesMax)
    }

    /// Waits (lock held on entry, released on return or throw) until `lsn` is durable, leading
    /// batches in `callerLeads` mode. Parks on a per-waiter slot (LogWaiters.swift) that the
    /// writer posts once `lsn` is durable, and returns from it without retaking the lock; with
    /// every slot taken, waits on the `.durable` condition. Bounded by `appendWaitNsMax`.
    func waitDurableThenUnlock(through lsn: LSN) throws(LogError) {
        requestedLSN = max(requestedLSN, lsn)
        var deadlineNs: UInt64 = 0
        while lastDurableLSN < lsn {
            if let failure {
                monitor.unlock()
                throw .failed(failure.description)
            }
            if settings.writer == .callerLeads {
                if !writerBusy && !batches[openBatch].isEmpty {
                    leadBatchLocked()
                    continue
                }
            } else {
                wakeWriterLocked()
            }
            if deadlineNs == 0 { deadlineNs = Monitor.nowNs() + settings.appendWaitNsMax }
            guard let slot = waiters.claim() else {
                overflowWaiterCount += 1
                let woken = monitor.wait(.durable, untilNs: deadlineNs)
                overflowWaiterCount -= 1
                if !woken && lastDurableLSN < lsn && failure == nil {
                    monitor.unlock()
                    throw timeoutError(waitedNs: settings.appendWaitNsMax)
                }
                continue
            }
            waiters.arm(slot, through: lsn)
            monitor.unlock()
            var outcome = waiters.park(slot, untilNs: deadlineNs)
            if outcome == .durable {                    // the writer saw `lsn` durable: done
                waiters.release(slot)
                return
            }
            monitor.lock()
            if outcome == .none && !waiters.disarm(slot) {
                outcome = waiters.park(slot, untilNs: nil)  // posted as we timed out: consume it
            }
            waiters.release(slot)
            if outcome == .none && lastDurableLSN < lsn && failure == nil {
                monitor.unlock()
                throw timeoutError(waitedNs: settings.appendWaitNsMax)
            }
        }
        monitor.unlock()
    }

    /// Leads one batch on this thread (`callerLeads`, lock held, nobody else writing), then
    /// hands the lead on: one waiter whose LSN is not durable yet is woken to lead the next
    /// batch, and appenders waiting for room retry.
    func leadBatchLocked() {
        precondition(settings.writer == .callerLeads && !writerBusy, "leading a batch while another writer is busy")
        writerBusy = true
        writeBatchLocked()
        writerBusy = false
        if !batches[openBatch].isEmpty {
            let successor = waiters.takeLowest()
            if successor != 0 { waiters.post(successor, .recheck) }
            if overflowWaiterCount > 0 { monitor.broadcast(.durable) }
        }
        if roomWaiterCount > 0 { monitor.broadcast(.room) }
    }

    /// Wakes the dedicated writer if it is idle (lock held). Only the writer waits on `.writer`.
    func wakeWriterLocked() {
        if takeWriterWakeLocked() { monitor.signal(.writer) }
    }

    /// True when the dedicated writer is idle and the caller should signal `.writer` — now, or
    /// just after unlocking (legal: the writer cannot leave its wait without a signal, so the
    /// signal is not lost; at worst it wakes the writer once for nothing).
    func takeWriterWakeLocked() -> Bool {
        guard writerIdle else { return false }
        writerIdle = false                              // one signal is enough until it waits again
        return true
    }

    /// Wakes every waiter of every kind (lock held): the log failed or closed.
    func wakeEveryoneLocked() {
        monitor.broadcast(.writer)
        monitor.broadcast(.completer)
        monitor.broadcast(.room)
        monitor.broadcast(.durable)
        let all = waiters.takeAll()
        if all != 0 { waiters.post(all, .recheck) }
    }

    func usageLocked() -> LogUsage {
        LogUsage(segmentCount: segments.count, segmentCountMax: settings.segmentCountMax, segmentBytes: settings.segmentBytes,
                 appendedLSN: nextLSN - 1, durableLSN: lastDurableLSN, coveredThroughLSN: coveredThroughLSN)
    }
}
