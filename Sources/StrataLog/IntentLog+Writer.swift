// IntentLog+Writer — the group-commit writer: one batch at a time, placed, sealed, made
// durable, then its callbacks.
//
// See IntentLog.swift for the theory. The invariants this file keeps:
//   - one writer at a time (the dedicated thread, or the `writerBusy` caller), so batch k+1 is
//     placed and written only after batch k's write returned durable;
//   - a block never crosses its segment's end; when a batch does not fit, the rest of the
//     segment is abandoned and the batch goes to the start of the next (preallocated) one —
//     replay, on finding no valid block at the abandoned position, tries there;
//   - a segment is entered only if it exists (allocated before the first block naming it), and
//     nothing is allocated while a checkpoint is pending (IntentLog+Checkpoint.swift);
//   - callbacks fire after the write returned, before `lastDurableLSN` moves, so `sync()`
//     returning means every earlier callback has run;
//   - with the dedicated writer, the callbacks run on a second thread, the completer: the writer
//     hands it the written batch's callbacks (at most one batch waiting) and goes on to the next
//     batch, so waking the committers of batch k overlaps the write of batch k+1 instead of
//     delaying it (on this VM the wakeups were about a quarter of the writer's time). The
//     completer runs batches in order and moves `lastDurableLSN` after their callbacks; the
//     writes themselves stay one at a time, in order, so what is durable is unchanged. In
//     `callerLeads` mode the leading caller runs the callbacks itself, as before;
//   - a `sync()` waiter's slot is posted `.durable` only after `lastDurableLSN` covers its LSN
//     (taken from the armed set under the lock, posted just after releasing it).

import StrataIO
import Synchronization
import StrataPool

extension IntentLog {
    /// The dedicated writer thread's loop.
    func writerLoop() {
        ThreadSetup.prepare(name: "strata-logw", nice: settings.writerNice, niceSetting: "LogSettings.writerNice",
                            cpus: settings.writerCPUs, cpusSetting: "LogSettings.writerCPUs")
        monitor.lock()
        while true {
            while failure == nil && !isClosed && !batchIsDueLocked() {
                writerIdle = true
                let batch = batches[openBatch]
                if settings.batchDelayNs > 0 && !batch.isEmpty {
                    _ = monitor.wait(.writer, untilNs: batch.openedNs + settings.batchDelayNs)
                } else {
                    monitor.wait(.writer)
                }
                writerIdle = false
            }
            if failure != nil || (isClosed && batches[openBatch].isEmpty) { break }
            writeBatchLocked()
        }
        monitor.unlock()
    }

    /// Whether the open batch should be written now (lock held).
    func batchIsDueLocked() -> Bool {
        let batch = batches[openBatch]
        guard !batch.isEmpty else { return false }
        if settings.batchDelayNs == 0 || isClosed || requestedLSN >= batch.firstLSN { return true }
        if batch.usedBytes * 2 >= settings.batchBytesMax { return true }
        return Monitor.nowNs() >= batch.openedNs + settings.batchDelayNs
    }

    /// Writes the open batch (lock held on entry and on return; released for the I/O and the
    /// callbacks). On an I/O or allocation failure the log stops (`failure`).
    func writeBatchLocked() {
        let index = openBatch
        let batch = batches[index]
        precondition(!batch.isEmpty && batches[1 - index].isEmpty, "writer found batch \(index) empty or the other one busy")
        openBatch = 1 - index
        if roomWaiterCount > 0 { monitor.broadcast(.room) }     // the other buffer is open
        let blockBytes = (batch.usedBytes + LogBlock.unitBytes - 1) / LogBlock.unitBytes * LogBlock.unitBytes
        let segmentBytes = settings.segmentBytes

        // Placement: the rest of this segment, or the start of the next one.
        if writeOffset + UInt64(blockBytes) > segmentBytes {
            guard enterNextSegmentLocked() else { return }
        }
        if segments.count == currentSegment + 1 { _ = tryAllocateNextSegmentLocked(required: false) }
        if segments[currentSegment].firstLSN == 0 { segments[currentSegment].firstLSN = batch.firstLSN }
        let next = currentSegment + 1 < segments.count ? Array(segments[currentSegment + 1].copies) : []
        let header = LogBlock.Header(blockBytes: blockBytes, poolUUID: poolUUID, logIdentity: logIdentity, sequence: nextSequence,
                                     firstLSN: batch.firstLSN, recordCount: batch.recordCount,
                                     recordBytes: batch.usedBytes - LogBlock.headerBytes, previousChecksum: previousChecksum,
                                     segmentBytes: segmentBytes, nextSegment: next)
        let target = segments[currentSegment].copies
        let offset = writeOffset
        writeOffset += UInt64(blockBytes)
        nextSequence += 1
        let handler = checkpointRequestLocked()
        monitor.unlock()

        if let handler { handler.call(handler.usage) }
        let block = UnsafeMutableRawBufferPointer(rebasing: batch.bytes[0..<blockBytes])
        let checksum = LogBlock.seal(header, into: block)
        var ioError: IOError? = nil
        do throws(IOError) {
            try writeDurably(UnsafeRawBufferPointer(block), copies: target, atSegmentOffset: offset, batch: batch)
        } catch { ioError = error }
        let handsToCompleter = settings.writer == .dedicatedThread
        if ioError == nil && !settings.firesCallbacksBeforeDurable && !handsToCompleter {
            for entry in batch.callbacks { entry.callback(entry.lsn) }
        }

        monitor.lock()
        if let ioError {
            failure = .io(ioError)
            wakeEveryoneLocked()
            return
        }
        previousChecksum = checksum
        stats.batches += 1
        stats.records += batch.recordCount
        stats.blockBytesWritten += UInt64(blockBytes)
        stats.payloadBytes += batch.payloadBytes
        stats.batchRecordCountHistogram[min(Int.bitWidth - 1 - batch.recordCount.leadingZeroBitCount, 19)] += 1
        if handsToCompleter {
            while pendingCompletion != nil && failure == nil { monitor.wait(.writer) }
            if failure != nil { return }
            var callbacks = spareCallbackArrays.popLast() ?? []
            swap(&callbacks, &batch.callbacks)
            if settings.firesCallbacksBeforeDurable { callbacks.removeAll(keepingCapacity: true) }     // fired already
            pendingCompletion = Completion(callbacks: callbacks, lastLSN: batch.lastLSN)
            batch.reset()
            monitor.signal(.completer)
            return
        }
        lastDurableLSN = batch.lastLSN
        batch.reset()
        // Wake only the `sync()` waiters this batch satisfied (LogWaiters.swift).
        // Posted outside the lock, so appenders are not held behind the writer's wakeups; a
        // waiter that times out meanwhile finds its slot disarmed and waits for this post.
        postDurableWaitersLocked()
    }

    /// Wakes the `sync()` waiters `lastDurableLSN` now covers (lock held on entry and return;
    /// the posts happen just after releasing it, so woken waiters do not meet a held lock).
    private func postDurableWaitersLocked() {
        let satisfied = waiters.takeDurable(through: lastDurableLSN)
        if overflowWaiterCount > 0 { monitor.broadcast(.durable) }
        if satisfied != 0 {
            monitor.unlock()
            waiters.post(satisfied, .durable)
            monitor.lock()
        }
    }

    /// The completer thread's loop (dedicated-writer mode): runs each written batch's callbacks in
    /// order, then moves `lastDurableLSN` and wakes the `sync()` waiters it satisfies. A batch
    /// handed over before a failure or close is still completed: it is durable.
    func completerLoop() {
        ThreadSetup.prepare(name: "strata-logc", nice: settings.completerNice, niceSetting: "LogSettings.completerNice",
                            cpus: settings.completerCPUs, cpusSetting: "LogSettings.completerCPUs")
        monitor.lock()
        while true {
            while pendingCompletion == nil && failure == nil && !isClosed { monitor.wait(.completer) }
            guard var completion = pendingCompletion else { break }
            pendingCompletion = nil
            monitor.signal(.writer)                     // it may hand over the next batch
            monitor.unlock()
            for entry in completion.callbacks { entry.callback(entry.lsn) }
            monitor.lock()
            assert(completion.lastLSN > lastDurableLSN, "completions out of order")
            lastDurableLSN = completion.lastLSN
            completion.callbacks.removeAll(keepingCapacity: true)
            spareCallbackArrays.append(completion.callbacks)
            postDurableWaitersLocked()
        }
        monitor.unlock()
    }

    /// Writes one sealed block to every copy of its segment, durably (FUA, or write + flush).
    private func writeDurably(_ block: UnsafeRawBufferPointer, copies: ExtentCopies, atSegmentOffset offset: UInt64,
                              batch: Batch) throws(IOError) {
        let devices = pool.devices
        var mask = batch.flushMask
        while mask != 0 {                               // data the records name, before the records
            let index = mask.trailingZeroBitCount
            mask &= mask - 1
            try devices[index].flush()
        }
        if settings.firesCallbacksBeforeDurable {
            // Planted bug (crash tests): acknowledge between the write and the flush.
            for extent in copies { try devices[extent.deviceIndex].write(block, at: extent.offsetBytes + offset, fua: false) }
            for entry in batch.callbacks { entry.callback(entry.lsn) }
            for extent in copies { try devices[extent.deviceIndex].flush() }
            return
        }
        switch settings.durability {
        case .fua:
            for extent in copies { try devices[extent.deviceIndex].write(block, at: extent.offsetBytes + offset, fua: true) }
        case .writeThenFlush:
            for extent in copies { try devices[extent.deviceIndex].write(block, at: extent.offsetBytes + offset, fua: false) }
            for extent in copies { try devices[extent.deviceIndex].flush() }
        }
    }

    /// Moves to the next segment, waiting (lock held) while it does not exist and cannot be
    /// allocated yet (log full, or a checkpoint pending). False when the log failed or closed.
    private func enterNextSegmentLocked() -> Bool {
        var waitedForSpace = false
        while currentSegment + 1 >= segments.count {
            if failure != nil { return false }
            if isClosed {                                   // close gave up waiting (sync timed out)
                failure = .closed
                wakeEveryoneLocked()
                return false
            }
            if tryAllocateNextSegmentLocked(required: true) { break }
            if failure != nil { return false }
            if !waitedForSpace {
                waitedForSpace = true
                stats.logFullWaits += 1
            }
            // Ask for a checkpoint (again, if one was asked already: the log is now full).
            if pending == nil, let handler = checkpointHandler {
                checkpointRequestArmed = false
                stats.checkpointRequests += 1
                let usage = usageLocked()
                monitor.unlock()
                handler(usage)
                monitor.lock()
                if currentSegment + 1 < segments.count { break }
            }
            _ = monitor.wait(.writer, untilNs: Monitor.nowNs() + 100_000_000)
        }
        currentSegment += 1
        writeOffset = 0
        segments[currentSegment].firstSequence = nextSequence
        segments[currentSegment].previousChecksum = previousChecksum
        return true
    }

    /// Allocates the segment after the last one owned, if the bound and checkpoint state allow.
    /// An allocation failure stops the log when `required` (nothing else can free the writer).
    func tryAllocateNextSegmentLocked(required: Bool) -> Bool {
        guard pending == nil, segments.count < settings.segmentCountMax else { return false }
        do {
            let copies = try pool.allocator.allocate(.log, lengthBytes: settings.segmentBytes)
            precondition(copies.count <= LogBlock.nextSegmentCopiesMax, "\(copies.count) log copies")
            segments.append(Segment(copies: copies))
            return true
        } catch {
            if required {
                failure = .noSpace("no log segment of \(settings.segmentBytes) bytes: \(error)")
                wakeEveryoneLocked()
            }
            return false
        }
    }

    struct HandlerCall {
        let call: CheckpointRequestHandler
        let usage: LogUsage
    }

    /// The checkpoint request due now, if any (at `checkpointRequestPercent` of the bound, once
    /// per checkpoint).
    private func checkpointRequestLocked() -> HandlerCall? {
        guard checkpointRequestArmed, pending == nil, let handler = checkpointHandler,
              segments.count * 100 >= settings.checkpointRequestPercent * settings.segmentCountMax else { return nil }
        checkpointRequestArmed = false
        stats.checkpointRequests += 1
        return HandlerCall(call: handler, usage: usageLocked())
    }
}

