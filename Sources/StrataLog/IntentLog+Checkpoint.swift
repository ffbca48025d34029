// IntentLog+Checkpoint — how a checkpoint retires log space and re-anchors the log.
//
// The DMU commits checkpoints; the log takes part in two calls around the pool's commit:
//
//   let root = try log.beginCheckpoint(through: lsn)        // 1. new head, old space freed
//   roots[Uberblock.RootSlot.intentLog.rawValue] = root
//   try pool.commitCheckpoint(roots: roots)                 // 2. the DMU's commit
//   log.checkpointCommitted()                               // 3. the head is the log's root
//
// 1. `beginCheckpoint(through: L)` — L is the last LSN whose effects the checkpoint holds.
//    The start segment becomes the last segment whose first record is ≤ L+1 (so every record
//    > L is in it or after it; records ≤ L there are skipped at replay by LSN). A new head is
//    allocated (4 KiB, `.log` class) and written — not flushed: the pool's commit flushes every
//    device before it writes the uberblock. The segments before the start and the previous head
//    are freed *now*, in the checkpoint being built: the allocator defers them (allocatable only
//    once the checkpoint after this one is durable), so the previous uberblock, the root until
//    this commit is durable, still finds them intact; and this checkpoint's space maps show them
//    free, so nothing leaks once it is durable.
// 2. Between the two calls the log allocates nothing (the writer waits if it needs a segment),
//    so the space maps cut by this commit count exactly the log segments the head lists — the
//    fact `open` relies on to claim the others (IntentLog.swift, "Space").
// 3. `checkpointCommitted()` checks that the pool's newest uberblock names this head, and
//    lifts the allocation pause. No other checkpoint may be committed between 1 and 3 (it would
//    carry the old root while its maps already free what the old root names): the pool's
//    checkpoints are the DMU's, and this one is checked in 3.
// A failed commit leaves the pool suspended (Pool+Commit.swift); re-import, and the log opens
// from whichever uberblock won.

import StrataIO
import StrataPool

extension IntentLog {
    /// Phase 1 of a checkpoint covering every record with LSN ≤ `lsn`: writes a new head and
    /// frees (deferred) the log space the checkpoint makes unnecessary. Returns the pointer to
    /// put in `Uberblock.RootSlot.intentLog` of the uberblock committed next. Traps if a
    /// checkpoint is already pending or `lsn` is past the last appended record or before the
    /// last covered one.
    public func beginCheckpoint(through lsn: LSN) throws(LogError) -> BlockPointer {
        monitor.lock()
        precondition(pending == nil, "beginCheckpoint while the checkpoint of LSN \(pending?.coveredThroughLSN ?? 0) is pending")
        precondition(lsn < nextLSN && lsn >= coveredThroughLSN,
                     "checkpoint through LSN \(lsn): last appended \(nextLSN - 1), already covered \(coveredThroughLSN)")
        var start = 0
        for index in 0...currentSegment where segments[index].firstLSN != 0 && segments[index].firstLSN <= lsn + 1 {
            start = index
        }
        precondition(segments[start].firstSequence != 0, "start segment \(start) was never entered")
        let headCopies: ExtentCopies
        do {
            headCopies = try pool.allocator.allocate(.log, lengthBytes: UInt64(LogHead.headBytes))
        } catch {
            monitor.unlock()
            throw .noSpace("no log-class space for a 4 KiB log head: \(error)")
        }
        let newHead = LogHead(poolUUID: poolUUID, logIdentity: logIdentity, coveredThroughLSN: lsn,
                              firstSequence: segments[start].firstSequence, previousChecksum: segments[start].previousChecksum,
                              segmentBytes: settings.segmentBytes, segments: segments[start...].map { Array($0.copies) },
                              headCopies: Array(headCopies))
        for segment in segments[0..<start] { pool.allocator.free(segment.copies) }
        if let head { pool.allocator.free(head.copies) }
        segments.removeFirst(start)
        currentSegment -= start
        let checkpoint = pool.uberblock.checkpoint + 1
        pending = PendingCheckpoint(coveredThroughLSN: lsn, checkpoint: checkpoint, headCopies: headCopies, pointer: nil)
        monitor.unlock()

        let block = allocateAlignedBuffer(byteCount: LogHead.headBytes)     // cold path: once per checkpoint
        defer { block.deallocate() }
        newHead.encode(into: block)
        let checksum = CRC32C.checksum(UnsafeRawBufferPointer(block))
        for extent in headCopies {
            do throws(IOError) {
                try pool.devices[extent.deviceIndex].write(UnsafeRawBufferPointer(block), at: extent.offsetBytes, fua: false)
            } catch {
                monitor.lock()
                failure = .io(error)
                wakeEveryoneLocked()
                monitor.unlock()
                throw .io(error)
            }
        }
        // The uberblock's pointer names every head copy it can hold (two), so a lost device
        // holding the first copy does not lose the log's root (`readHead` tries each in turn).
        let named = ExtentCopies(Array(headCopies.prefix(BlockPointer.copiesMax)))
        let pointer = BlockPointer(copies: named, birthCheckpoint: checkpoint, checksum: checksum)
        monitor.lock()
        pending?.pointer = pointer
        monitor.unlock()
        return pointer
    }

    /// Phase 3: the uberblock carrying the pointer `beginCheckpoint` returned is durable. Traps
    /// when no checkpoint is pending or the pool's newest uberblock does not name that head.
    public func checkpointCommitted() {
        monitor.lock()
        defer { monitor.unlock() }
        guard let committed = pending, let pointer = committed.pointer else {
            preconditionFailure("checkpointCommitted without a completed beginCheckpoint")
        }
        let uberblock = pool.uberblock
        precondition(uberblock.checkpoint == committed.checkpoint && uberblock.roots[Uberblock.RootSlot.intentLog.rawValue] == pointer,
                     "checkpointCommitted: uberblock \(uberblock.checkpoint) does not name the log head written for checkpoint \(committed.checkpoint)")
        head = (pointer, committed.headCopies)
        coveredThroughLSN = committed.coveredThroughLSN
        pending = nil
        isAnchored = true
        checkpointRequestArmed = true
        monitor.broadcast(.writer)                  // a writer waiting for segments may allocate again
    }

    /// The head the newest committed uberblock should name (null before the first checkpoint).
    public var root: BlockPointer {
        monitor.lock()
        defer { monitor.unlock() }
        return head?.pointer ?? .null
    }

    /// The LSN through which the last committed checkpoint covers the records.
    public var coveredLSN: LSN {
        monitor.lock()
        defer { monitor.unlock() }
        return coveredThroughLSN
    }
}
