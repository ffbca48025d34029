// ObjectStore+Checkpoint — the checkpoint engine (transaction groups), the gate transactions
// pass, and the throttle that keeps the bounds.
//
// The protocol (see ObjectStore.swift for why each step is where it is):
//   switch (transactions held off, memory only apart from cold table-block reads):
//     1. quiesce: no new holds, wait for the running transactions to stop;
//     2. L = last appended LSN; the log writes its new head covering ≤ L (`beginCheckpoint`);
//     3. every dirty object: pages → new extents (allocated now, written after the switch),
//        extent map / index tree / xattr block → staged copy-on-write blocks;
//     4. every dirty dnode → its dnode-table block (staged), the table tree → staged;
//     5. the pool's allocator is cut (`prepareCheckpoint`): the space maps of N;
//     6. the open checkpoint becomes N+1; transactions resume;
//   after the switch, while transactions run:
//     7. page runs and staged blocks are written (no flush);
//     8. `commitPrepared`: space maps, flush, uberblock N naming the log head and the table;
//     9. the log releases ≤ L (`checkpointCommitted`), the dnode cache unpins N, written pages go.
// A failure in 2–5 or 7–8 fails the store (memory is ahead of anything committable) and the pool
// is suspended; re-import replays from checkpoint N-1 (or N if its uberblock landed).

import StrataIO
import StrataLog
import StrataPool

#if canImport(Glibc)
import Glibc
#endif

/// Aligned staging buffers of `recordBytesMax` for writes from unaligned caller memory; a few
/// are kept for reuse so the data path does not map and unmap a megabyte per write.
final class StagingBuffers: @unchecked Sendable {
    let bytes: Int
    let keptMax: Int
    private let monitor = Monitor()
    private var free: [UnsafeMutableRawBufferPointer] = []

    init(bytes: Int, keptMax: Int = 32) {
        self.bytes = bytes
        self.keptMax = keptMax
    }

    deinit { for buffer in free { buffer.deallocate() } }

    func take() -> UnsafeMutableRawBufferPointer {
        monitor.lock()
        if let buffer = free.popLast() {
            monitor.unlock()
            return buffer
        }
        monitor.unlock()
        return allocateAlignedBuffer(byteCount: bytes)
    }

    func give(_ buffer: UnsafeMutableRawBufferPointer) {
        monitor.lock()
        if free.count < keptMax {
            free.append(buffer)
            monitor.unlock()
            return
        }
        monitor.unlock()
        buffer.deallocate()
    }
}

extension ObjectStore {
    // MARK: The checkpoint reserve

    /// What `takeReserves` found.
    enum ReserveState {
        /// The store holds the reserve (it was held, or has just been taken).
        case held
        /// A checkpoint's switch is using it (between `releaseReserves(forCheckpoint:)` and the
        /// end of the switch): a transaction taking it back then would leave the checkpoint
        /// without room. Wait for the switch to end (`awaitReserveReturned`).
        case lentToCheckpoint
        /// The pool has no room for it.
        case noRoom
    }

    /// Takes the checkpoint reserve if it is not held.
    @discardableResult
    func takeReserves(forCheckpoint: Bool = false) -> ReserveState {
        stateLock.lock()
        defer { stateLock.unlock() }
        guard reserves.isEmpty else { return .held }
        if reserveLentToCheckpoint && !forCheckpoint { return .lentToCheckpoint }
        let unit: UInt64 = 1 << 20
        do {
            let metadata = try pool.allocator.reserve(.metadata, extentCount: Int(limits.metadataReserveBytes / unit), lengthBytes: unit)
            do {
                let data = try pool.allocator.reserve(.data, extentCount: Int(limits.dataReserveBytes / unit), lengthBytes: unit)
                reserves = [metadata, data]
                reserveLentToCheckpoint = false
            } catch {
                pool.allocator.release(metadata)
                return .noRoom
            }
        } catch {
            return .noRoom
        }
        return .held
    }

    /// Waits (bounded by `deadlineNs`) until no checkpoint's switch holds the reserve lent;
    /// false on timeout.
    func awaitReserveReturned(untilNs deadlineNs: UInt64) -> Bool {
        stateLock.lock()
        defer { stateLock.unlock() }
        while reserveLentToCheckpoint && failure == nil && !isClosed {
            if !stateLock.wait(untilNs: deadlineNs) { return !reserveLentToCheckpoint }
        }
        return true
    }

    /// Hands the reserve back to the allocator (the checkpoint's switch, close). With
    /// `forCheckpoint`, only the checkpoint may take it again (`takeReserves(forCheckpoint:)`).
    func releaseReserves(forCheckpoint: Bool = false) {
        stateLock.lock()
        let held = reserves
        reserves = []
        reserveLentToCheckpoint = forCheckpoint
        stateLock.unlock()
        for reservation in held { pool.allocator.release(reservation) }
    }

    var holdsReserves: Bool { stateLock.withLock { !reserves.isEmpty } }

    // MARK: Gate and throttle

    /// The common case of a transaction's admission in one trip through the state lock: the
    /// store usable, dirty pages and objects under their bounds, the checkpoint reserve held (not
    /// lent), no switch in progress, and the log below its throttle mark (read without its lock;
    /// near the mark this declines). Then it enters the gate and returns the open checkpoint;
    /// nil sends the caller the long way (`checkUsable`, `waitForRoom`, `takeReserves`,
    /// `enterGate`), which waits or fails as each condition needs. It checks what the long way
    /// checks, all at one instant, so it admits nothing the long way would refuse.
    func admitQuickly() -> UInt64? {
        if let log {
            let mark = log.settings.segmentCountMax * settings.logThrottlePercent
            guard (log.segmentCountPublished + 1) * 100 < mark else { return nil }
        }
        stateLock.lock()
        defer { stateLock.unlock() }
        guard failure == nil, !isClosed, !quiescing, !reserves.isEmpty, boundReachedLocked() == nil else { return nil }
        inFlight += 1
        return openCheckpoint
    }

    /// The store's own admission bound reached (dirty pages, dirty objects), described, or nil;
    /// state lock held. Both ways of admission ask this one function, so a new bound is added
    /// here once (the log's throttle mark is asked separately: the quick way reads it without
    /// the log's lock).
    func boundReachedLocked() -> String? {
        if dirtyPageBytes >= limits.dirtyPageBytesMax { return "\(dirtyPageBytes) bytes of dirty pages, bound \(limits.dirtyPageBytesMax)" }
        if dirtyObjects.count >= limits.dirtyObjectsMax { return "\(dirtyObjects.count) dirty objects, bound \(limits.dirtyObjectsMax)" }
        return nil
    }

    /// Takes a hold on the open checkpoint, waiting while a switch is in progress, and returns
    /// it: the tag every change made under this hold carries (the checkpoint cannot switch until
    /// the hold is left, so it stays the open one).
    func enterGate() -> UInt64 {
        stateLock.lock()
        while quiescing { stateLock.wait() }
        inFlight += 1
        let open = openCheckpoint
        stateLock.unlock()
        return open
    }

    func leaveGate(transactions: Int) {
        stateLock.lock()
        inFlight -= 1
        stats.transactions += transactions
        let wake = inFlight == 0 && quiescing
        let wantCheckpoint = !checkpointRequested
            && (dirtyPageBytes * 100 >= limits.dirtyPageBytesMax * settings.checkpointDirtyPercent
                || dirtyObjects.count * 100 >= limits.dirtyObjectsMax * settings.checkpointDirtyPercent)
        if wantCheckpoint { checkpointRequested = true }
        stateLock.unlock()
        if wake || wantCheckpoint { stateLock.withLock { stateLock.broadcast() } }
    }

    /// Waits (holding nothing) while dirty pages are at their bound or the log is at its throttle
    /// mark, asking for a checkpoint; bounded by `throttleWaitNsMax`.
    func waitForRoom() throws(ObjectStoreError) {
        var deadline: UInt64 = 0
        while true {
            var reason = stateLock.withLock { boundReachedLocked() }
            if reason == nil, let log {
                let usage = log.usage
                if usage.segmentCount * 100 >= usage.segmentCountMax * settings.logThrottlePercent && usage.appendedLSN > usage.coveredThroughLSN {
                    reason = "log at \(usage.segmentCount)/\(usage.segmentCountMax) segments"
                }
            }
            guard let reason else { return }
            try checkUsable()
            if deadline == 0 {
                deadline = Monitor.nowNs() + settings.throttleWaitNsMax
                stateLock.withLock { stats.throttleWaits += 1 }
            }
            try awaitCheckpoints(1, forced: false, untilNs: deadline, reason: reason)
        }
    }

    /// Runs (or, with the background thread, asks for and awaits) two checkpoints: the frees
    /// recorded before the first become allocatable when the second is durable. Bounded by
    /// `throttleWaitNsMax`. Called holding nothing.
    func checkpointsForSpace() throws(ObjectStoreError) {
        try awaitCheckpoints(2, forced: true, untilNs: Monitor.nowNs() + settings.throttleWaitNsMax,
                             reason: "waiting for checkpoints to release freed space")
    }

    /// Runs `count` checkpoints inline (no background thread), or asks the background thread
    /// and waits until `count` more have completed, at most until `deadlineNs`. `forced`: they
    /// run even with nothing dirty (to release deferred frees). Called holding nothing.
    func awaitCheckpoints(_ count: Int, forced: Bool, untilNs deadlineNs: UInt64, reason: String) throws(ObjectStoreError) {
        if !settings.backgroundCheckpoints {
            for _ in 0..<count { try checkpoint(force: forced) }
            return
        }
        stateLock.lock()
        defer { stateLock.unlock() }
        let target = stats.checkpoints + count
        if forced { forcedCheckpoints += count }
        while stats.checkpoints < target && failure == nil && !isClosed {
            checkpointRequested = true
            stateLock.broadcast()
            if !stateLock.wait(untilNs: deadlineNs) && stats.checkpoints < target {
                throw .throttleTimedOut(waitedNs: settings.throttleWaitNsMax, reason: reason)
            }
        }
    }

    /// Asks the background thread for a checkpoint (the log's request handler calls this).
    public func requestCheckpoint() {
        stateLock.withLock {
            checkpointRequested = true
            stateLock.broadcast()
        }
    }

    // MARK: The background thread

    func startCheckpointThread() {
        checkpointThread = ThreadSetup.start("the checkpoint thread") { self.checkpointLoop() }
    }

    func checkpointLoop() {
        ThreadSetup.prepare(name: "strata-ckpt", cpus: settings.checkpointCPUs, cpusSetting: "ObjectStoreSettings.checkpointCPUs")
        stateLock.lock()
        while !isClosed && failure == nil {
            let due = lastCheckpointNs + settings.checkpointIntervalNs
            if !checkpointRequested && Monitor.nowNs() < due {
                _ = stateLock.wait(untilNs: due)
                continue
            }
            checkpointRequested = false
            let force = forcedCheckpoints > 0
            if force { forcedCheckpoints -= 1 }
            stateLock.unlock()
            do {
                try checkpoint(force: force)
            } catch {
                fail("checkpoint failed: \(error)")
            }
            stateLock.lock()
        }
        stateLock.unlock()
    }

    // MARK: The checkpoint

    /// Commits a checkpoint now, if anything changed since the last one (or `force`). Returns the
    /// checkpoint number committed, or nil when there was nothing to do. Must not be called by a
    /// thread holding a started transaction.
    @discardableResult
    public func checkpoint(force: Bool = false) throws(ObjectStoreError) -> UInt64? {
        guard let log else { throw .readOnly("pool '\(pool.name)' is imported read-only") }
        checkpointLock.lock()
        defer { checkpointLock.unlock() }
        try checkUsable()
        let startNs = Monitor.nowNs()

        // 1. Quiesce.
        stateLock.lock()
        quiescing = true
        while inFlight > 0 { stateLock.wait() }
        let quiesceNs = Monitor.nowNs() - startNs
        stats.quiesceNsMax = max(stats.quiesceNsMax, quiesceNs)
        let dirtySet = dirtyObjects
        stateLock.unlock()
        let lsn = log.appendedLSN
        let dirtyDnodeCount = dnodes.statistics.dirtyCount
        if !force && dirtySet.isEmpty && dirtyDnodeCount == 0 && lsn == log.coveredLSN {
            stateLock.withLock {
                quiescing = false
                lastCheckpointNs = Monitor.nowNs()
                stateLock.broadcast()
            }
            return nil
        }
        let checkpoint = stateLock.withLock { openCheckpoint }
        precondition(checkpoint == pool.uberblock.checkpoint + 1,
                     "open checkpoint \(checkpoint) does not follow the pool's \(pool.uberblock.checkpoint)")

        // The reserve exists for this moment: the switch's allocations may use it.
        releaseReserves(forCheckpoint: true)
        var pageRuns: [PageRun] = []
        let prepared: PreparedCheckpoint
        let logRoot: BlockPointer
        let tableRoot: BlockPointer
        do throws(ObjectStoreError) {
            // 2. The log's head.
            do { logRoot = try log.beginCheckpoint(through: lsn) } catch { throw .log(error) }
            // 3. Dirty objects.
            for object in dirtySet.sorted() {
                let stripe = stripes[stripe(of: object)]
                stripe.lock()
                defer { stripe.unlock() }
                try flushObject(object, checkpoint: checkpoint, pageRuns: &pageRuns)
            }
            // 4. Dnodes into table blocks, the table tree.
            tableRoot = try flushDnodeTable(checkpoint: checkpoint)
            // 5. The allocator's cut.
            do { prepared = try pool.prepareCheckpoint() } catch { throw .pool(error) }
            precondition(prepared.checkpoint == checkpoint, "pool prepared \(prepared.checkpoint), the store cut \(checkpoint)")
        } catch {
            stateLock.withLock {
                quiescing = false
                stateLock.broadcast()
            }
            stateLock.withLock { reserveLentToCheckpoint = false }
            fail("checkpoint \(checkpoint) could not be cut: \(error)")
            // The cut allocated places and deferred frees the pool must never commit.
            pool.suspend(reason: "object store checkpoint \(checkpoint) could not be cut: \(error)")
            throw error
        }
        // 6. Resume. Every allocation of this checkpoint is made (pages placed, metadata staged,
        // the space maps' places cut): take the reserve back before transactions run, so none
        // allocates into what it covers. Without room for it (a nearly full pool), transactions
        // wait for the frees this checkpoint releases (Transaction.start); step 9 tries again.
        if takeReserves(forCheckpoint: true) != .held {
            stateLock.withLock { reserveLentToCheckpoint = false }
        }
        let switchNs = Monitor.nowNs() - startNs
        stateLock.withLock {
            dirtyObjects.subtract(dirtySet)
            openCheckpoint = checkpoint + 1
            quiescing = false
            stateLock.broadcast()
        }

        // 7-8. Write and commit.
        var bytesWritten: UInt64 = UInt64(metadata.stagedBytes)
        do throws(ObjectStoreError) {
            for run in pageRuns { bytesWritten += try writePageRun(run) }
            do { try metadata.writeStaged() } catch { throw .metadata(error) }
            var roots = pool.uberblock.roots
            roots[Uberblock.RootSlot.intentLog.rawValue] = logRoot
            roots[Uberblock.RootSlot.dnodeTable.rawValue] = tableRoot
            do { try pool.commitPrepared(prepared, roots: roots) } catch { throw .pool(error) }
        } catch {
            if !pool.isSuspended { pool.abandonPrepared(prepared, reason: "\(error)") }
            fail("checkpoint \(checkpoint) could not be written: \(error)")
            throw error
        }
        // 9. Release.
        log.checkpointCommitted()
        pool.finishPendingDiscards()            // discardFreedSpace: after the log may allocate again
        dnodes.markClean(through: checkpoint)
        var releasedPages = 0
        for run in pageRuns {
            let stripe = stripes[stripe(of: run.object)]
            stripe.lock()
            let state = stateLock.withLock { objects[run.object] }
            for (chunk, page) in zip(run.chunks, run.pages) {
                releasedPages += 1
                page.isStaged = false
                if let state, state.pages[chunk] === page { state.pages.removeValue(forKey: chunk) }
            }
            stripe.unlock()
        }
        trimObjectStates()
        takeReserves()                  // if the switch found no room for it: the frees are released now
        let totalNs = Monitor.nowNs() - startNs
        stateLock.withLock {
            dirtyPageBytes -= releasedPages * Page.bytes
            lastCheckpointNs = Monitor.nowNs()
            stats.checkpoints += 1
            stats.lastSwitchNs = switchNs
            stats.switchNsMax = max(stats.switchNsMax, switchNs)
            stats.lastCheckpointNs = totalNs
            stats.checkpointNsTotal += totalNs
            stats.checkpointBytesWritten += bytesWritten
            stats.pageBytesWrittenBack += UInt64(releasedPages * Page.bytes)
            stateLock.broadcast()
        }
        return checkpoint
    }

    /// Dirty pages of one object going to one new extent, in chunk order (not necessarily
    /// adjacent chunks).
    struct PageRun {
        var object: UInt64
        var chunks: [UInt64]
        var pages: [Page]
        var copies: ExtentCopies
    }

    /// Step 3 for one object (its stripe lock held, transactions quiesced).
    func flushObject(_ object: UInt64, checkpoint: UInt64, pageRuns: inout [PageRun]) throws(ObjectStoreError) {
        guard let state = stateLock.withLock({ objects[object] }), var dnode = try loadDnode(object) else { return }
        if dnode.systemAttributes.needsFlush {
            do { try dnode.flushXattrs(store: metadata) } catch { throw .dnode(error) }
        }
        switch dnode.type {
        case .index, .directory:
            indexLock.lock()
            defer { indexLock.unlock() }
            if let tree = state.index, tree.isDirty {
                do { dnode.extentMap = .tree(try tree.flush()) } catch { throw .index(object: object, error) }
            }
        default:
            guard let map = state.extentMap else { break }
            // Pages → new extents. Up to `recordBytesMax` of an object's dirty pages share one
            // physical extent (one allocation, one sequential write) whatever their logical
            // order; each run of logically adjacent pages maps a slice of it.
            let chunks = state.pages.filter { !$0.value.isStaged }.keys.sorted()
            let batchChunksMax = settings.recordBytesMax / Page.bytes
            // Every run's extent, ascending, mapped in one pass when the pages are placed.
            var runExtents: [MappedExtent] = []
            var index = 0
            while index < chunks.count {
                let batchEnd = min(index + batchChunksMax, chunks.count)
                let pages = chunks[index..<batchEnd].map { state.pages[$0]! }
                let copies: ExtentCopies
                do { copies = try pool.allocator.allocate(.data, lengthBytes: UInt64(pages.count * Page.bytes)) } catch {
                    throw .noSpace("checkpoint \(checkpoint): \(pages.count * Page.bytes) bytes for the pages of object \(object): \(error)")
                }
                assert(pages.allSatisfy { $0.checksum == CRC32C.checksum(UnsafeRawBufferPointer($0.bytes)) }, "object \(object): a page's checksum is stale")
                var runStart = index
                while runStart < batchEnd {
                    var runEnd = runStart + 1
                    while runEnd < batchEnd && chunks[runEnd] == chunks[runEnd - 1] + 1 { runEnd += 1 }
                    let physical = UInt64((runStart - index) * Page.bytes)
                    let length = UInt64((runEnd - runStart) * Page.bytes)
                    let slices = copies.map { Extent(deviceIndex: $0.deviceIndex, offsetBytes: $0.offsetBytes + physical, lengthBytes: length) }
                    let extent = MappedExtent(logicalOffsetBytes: chunks[runStart] * 4096, copies: slices, birthCheckpoint: checkpoint,
                                              chunkChecksums: pages[(runStart - index)..<(runEnd - index)].map(\.checksum))
                    runExtents.append(extent)
                    runStart = runEnd
                }
                for page in pages { page.isStaged = true }
                pageRuns.append(PageRun(object: object, chunks: Array(chunks[index..<batchEnd]), pages: pages, copies: copies))
                index = batchEnd
            }
            pool.allocator.free(map.replace(withSorted: runExtents))     // the old places, one lock trip
            try flushMap(map, of: &dnode)
        }
        dnodes.update(dnode, dirtyIn: checkpoint)
    }

    /// Writes a dirty (or, with `force`, any) extent map for the checkpoint and puts its root in
    /// the dnode.
    func flushMap(_ map: ExtentMap, of dnode: inout Dnode, force: Bool = false) throws(ObjectStoreError) {
        guard map.isDirty || force else { return }
        do {
            dnode.extentMap = try map.flush(to: metadata, inlineCapacityBytes: dnode.inlineExtentCapacityBytes)
        } catch {
            throw .extentMap(error)
        }
        dnode.blocks = map.mappedBytes / 512
    }

    /// Step 4: every dnode dirty in `checkpoint` into its table block; returns the table's root.
    func flushDnodeTable(checkpoint: UInt64) throws(ObjectStoreError) -> BlockPointer {
        // Dnodes changed without their object being dirty (attributes, xattrs): a changed xattr
        // block, or an inline extent list the grown SA area no longer leaves room for.
        for entry in dnodes.dirtyDnodes(for: checkpoint) {
            guard let dnode = entry.dnode, dnode.systemAttributes.needsFlush || dnode.extentMap.inlineBytes > dnode.inlineExtentCapacityBytes
            else { continue }
            let stripe = stripes[stripe(of: entry.objectNumber)]
            stripe.lock()
            defer { stripe.unlock() }
            guard var current = try loadDnode(entry.objectNumber) else { continue }
            if current.systemAttributes.needsFlush {
                do { try current.flushXattrs(store: metadata) } catch { throw .dnode(error) }
            }
            if current.extentMap.inlineBytes > current.inlineExtentCapacityBytes {
                let map = try extentMap(of: state(of: entry.objectNumber), dnode: current)
                try flushMap(map, of: &current, force: true)
            }
            dnodes.update(current, dirtyIn: checkpoint)
        }
        let dirty = dnodes.dirtyDnodes(for: checkpoint)
        indexLock.lock()
        defer { indexLock.unlock() }
        var index = 0
        while index < dirty.count {
            let blockIndex = DnodeTableBlock.blockIndex(of: dirty[index].objectNumber)
            var slots = try readTableBlock(blockIndex)
            while index < dirty.count && DnodeTableBlock.blockIndex(of: dirty[index].objectNumber) == blockIndex {
                let entry = dirty[index].dnode
                precondition(entry.map { !$0.systemAttributes.needsFlush && $0.extentMap.inlineBytes <= $0.inlineExtentCapacityBytes } ?? true,
                             "object \(dirty[index].objectNumber): dnode not flushed before its table block")
                slots[DnodeTableBlock.slotIndex(of: dirty[index].objectNumber)] = entry
                index += 1
            }
            let key = Self.tableKey(blockIndex)
            let old: [UInt8]?
            do { old = try table.lookup(key) } catch { throw .index(object: 0, error) }
            do {
                if slots.allSatisfy({ $0 == nil }) {
                    if old != nil { try table.delete(key) }
                } else {
                    let bytes = DnodeTableBlock.encode(slots, blockIndex: blockIndex)
                    let pointer = try bytes.withUnsafeBytes { raw throws(MetadataStoreError) in try metadata.writeNew(raw) }
                    try table.insert(key, Self.encodePointer(pointer), mode: .upsert)
                }
            } catch let error as IndexTreeError {
                throw .index(object: 0, error)
            } catch let error as MetadataStoreError {
                throw .metadata(error)
            } catch {
                throw .failed("\(error)")
            }
            if let old { metadata.free(try Self.decodePointer(old, what: "dnode table block \(blockIndex)")) }
        }
        var meta = [UInt8](repeating: 0, count: 16)
        let next = stateLock.withLock { nextObject }
        meta.withUnsafeMutableBytes { raw in
            let writer = ByteWriter(raw)
            writer.put(Self.metaFormatVersion, at: 0)
            writer.put(next, at: 8)
        }
        do {
            if try table.lookup(Self.metaKey) != meta { try table.insert(Self.metaKey, meta, mode: .upsert) }
            return try table.flush()
        } catch {
            throw .index(object: 0, error)
        }
    }

    /// Step 7 for one run: the pages into one aligned buffer, written to every copy.
    func writePageRun(_ run: PageRun) throws(ObjectStoreError) -> UInt64 {
        let length = run.pages.count * Page.bytes
        let buffer = stagingBuffers.take()
        defer { stagingBuffers.give(buffer) }
        for (index, page) in run.pages.enumerated() {
            UnsafeMutableRawBufferPointer(rebasing: buffer[index * Page.bytes ..< (index + 1) * Page.bytes])
                .copyMemory(from: UnsafeRawBufferPointer(page.bytes))
        }
        for copy in run.copies {
            do {
                try pool.devices[copy.deviceIndex].write(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), at: copy.offsetBytes, fua: false)
            } catch {
                throw .io(error)
            }
        }
        return UInt64(length * run.copies.count)
    }

    /// Drops clean object states beyond `objectStatesMax` (they reload on demand).
    func trimObjectStates() {
        let excess = stateLock.withLock { objects.count - settings.objectStatesMax }
        guard excess > 0 else { return }
        let candidates = stateLock.withLock { Array(objects.keys.prefix(excess * 2)) }
        var dropped = 0
        for object in candidates where dropped < excess {
            let stripe = stripes[stripe(of: object)]
            stripe.lock()
            indexLock.lock()
            stateLock.withLock {
                if let state = objects[object], state.isClean, !dirtyObjects.contains(object) {
                    objects.removeValue(forKey: object)
                    dropped += 1
                }
            }
            indexLock.unlock()
            stripe.unlock()
        }
    }
}
