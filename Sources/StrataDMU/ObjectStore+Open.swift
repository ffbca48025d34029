// ObjectStore+Open — open (load the newest checkpoint, replay the log after it), close, and the
// read-side queries.
//
// Replay is the apply functions of ObjectStore+Apply.swift run on each record in LSN order, with
// one difference: extents a large-write record names are claimed in the allocator
// (`markAllocated`), because they were allocated after the checkpoint's cut and the durable space
// maps do not count them. Replay allocates nothing (no page reaches home until the checkpoint
// after it), which is what lets the log claim its chain segments after the scan: no allocation
// can have taken one. Replay memory is bounded by the dirty-page bound the writer kept.
// A record that does not decode or apply is a corrupt log: open fails naming its LSN.

import StrataIO
import StrataLog
import StrataPool

#if canImport(Glibc)
import Glibc
#endif

extension ObjectStore {
    /// The log settings in force on a pool of `capacityBytes`: the log takes at most a quarter
    /// of the pool, in whole segments. When a quarter cannot hold four segments (the fewest a
    /// log cycles through comfortably: one being written, one preallocated, two being covered
    /// by a checkpoint), segments shrink to a sixteenth of the pool in whole MiB (at least 1 MiB;
    /// the batch bound shrinks with them), so that default settings open a small pool.
    static func logSettings(_ given: LogSettings, capacityBytes: UInt64) -> LogSettings {
        var settings = given
        let mib: UInt64 = 1 << 20
        if capacityBytes / 4 < 4 * settings.segmentBytes && settings.segmentBytes > mib {
            settings.segmentBytes = max(mib, capacityBytes / 16 / mib * mib)
            settings.batchBytesMax = min(settings.batchBytesMax, Int(settings.segmentBytes))
        }
        let cap = capacityBytes / 4 / settings.segmentBytes * settings.segmentBytes
        if cap < settings.logBytesMax && cap >= 4 * settings.segmentBytes { settings.logBytesMax = cap }
        return settings
    }

    /// Opens the object store of an imported pool: a new one on a pool that has none, else the
    /// newest checkpoint with the log replayed. On a read-write pool a checkpoint is committed
    /// before returning (it anchors a new log, and makes the replayed state permanent).
    public static func open(pool: Pool, settings: ObjectStoreSettings = ObjectStoreSettings()) throws(ObjectStoreError) -> ObjectStore {
        var settings = settings
        settings.log = ObjectStore.logSettings(settings.log, capacityBytes: pool.allocator.devices.reduce(UInt64(0)) { $0 + $1.sizeBytes })
        var problems = settings.validationProblems()
        // Block pointers name at most two copies: refuse up front what the first checkpoint would.
        let metadataCopies = pool.allocator.policy.copies(for: .metadata)
        if metadataCopies > BlockPointer.copiesMax && !pool.isReadOnly {
            problems.append(MetadataStoreError.tooManyCopies(pool: pool.name, copies: metadataCopies, copiesMax: BlockPointer.copiesMax).description)
        }
        guard problems.isEmpty else { throw .invalidSettings(problems) }
        if !pool.isReadOnly { pool.discardsFreedSpace = settings.discardFreedSpace }
        let uberblock = pool.uberblock
        let metadata = StagedMetadataStore(pool: pool)
        let indexCache = IndexNodeCache(budgetBytes: settings.indexNodeCacheBytes)
        let tableRoot = uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue]
        let logRoot = uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        let table: IndexTree
        var nextObject: UInt64 = 1
        do {
            table = try IndexTree(root: tableRoot, store: metadata, name: "dnode table", cache: indexCache)
            if let meta = try table.lookup(metaKey) {
                guard meta.count == 16 else { throw ObjectStoreError.corrupt("dnode table meta entry of \(meta.count) bytes") }
                let (version, next) = meta.withUnsafeBytes { raw in
                    (ByteReader(raw).get(UInt32.self, at: 0), ByteReader(raw).get(UInt64.self, at: 8))
                }
                guard version <= metaFormatVersion else {
                    throw ObjectStoreError.corrupt("object store format version \(version) is newer than this build reads (\(metaFormatVersion)); upgrade Strata")
                }
                nextObject = max(1, next)
            }
        } catch let error as ObjectStoreError {
            throw error
        } catch let error as IndexTreeError {
            throw .index(object: 0, error)
        } catch {
            throw .failed("\(error)")
        }
        let store = ObjectStore(pool: pool, settings: settings, log: nil, table: table, metadata: metadata,
                                indexCache: indexCache, nextObject: nextObject)
        let startNs = Monitor.nowNs()
        var replayed = 0
        let replayTag = store.stateLock.withLock { store.openCheckpoint }   // constant: no checkpoint during replay
        let body: (LogRecord, RawSpan) throws -> Void = { record, payload in
            let operation = payload.withUnsafeBytes { raw in ObjectOperation.decode(type: record.type, payload: raw) }
            guard let operation else {
                throw ObjectStoreError.corruptLog(lsn: record.lsn, reason: "record type \(record.type) of \(record.payloadBytes) bytes does not decode")
            }
            do {
                try store.apply(operation, replaying: true, tag: replayTag)
            } catch {
                throw ObjectStoreError.corruptLog(lsn: record.lsn, reason: "\(operation.type) does not apply: \(error)")
            }
            replayed += 1
        }
        do {
            if pool.isReadOnly {
                if !logRoot.isNull { try IntentLog.replay(pool: pool, from: logRoot, body) }
            } else {
                store.log = try IntentLog.open(pool: pool, from: logRoot, settings: settings.log, replaying: body)
            }
        } catch let error as ObjectStoreError {
            throw error
        } catch let error as LogError {
            throw .log(error)
        } catch {
            throw .failed("\(error)")
        }
        store.stats.replayedRecords = replayed
        store.stats.replayNs = Monitor.nowNs() - startNs
        guard let log = store.log else { return store }
        log.setCheckpointRequestHandler { [weak store] _ in store?.requestCheckpoint() }
        do throws(ObjectStoreError) {
            try store.checkpoint(force: true)
            guard store.takeReserves() == .held else {
                throw .noSpace("pool '\(pool.name)' cannot hold the checkpoint reserve (\(store.limits.dataReserveBytes >> 20) MiB data, \(store.limits.metadataReserveBytes >> 20) MiB metadata)")
            }
        } catch {
            try? log.close()
            throw error
        }
        if settings.backgroundCheckpoints { store.startCheckpointThread() }
        return store
    }

    /// Commits a final checkpoint, stops the background thread and closes the log. The pool stays
    /// imported (export it afterwards). Call once, with no transaction running.
    public func close() throws(ObjectStoreError) {
        var firstError: ObjectStoreError? = nil
        if log != nil && stateLock.withLock({ failure == nil }) {
            do { try checkpoint() } catch { firstError = error }
        }
        let thread = stateLock.withLock { () -> pthread_t? in
            isClosed = true
            stateLock.broadcast()
            let thread = checkpointThread
            checkpointThread = nil
            return thread
        }
        if let thread { pthread_join(thread, nil) }
        if let log {
            do { try log.close() } catch { if firstError == nil { firstError = .log(error) } }
        }
        releaseReserves()
        if let firstError { throw firstError }
    }

    /// Waits until every transaction stopped so far is durable (its commit callback fired).
    public func sync() throws(ObjectStoreError) {
        guard let log else { return }
        do { try log.sync() } catch { throw .log(error) }
    }

    /// Starts a batch of the log now (a hint; does not wait).
    public func commitAsync() { log?.commitAsync() }

    /// A new transaction to declare, start, perform and stop.
    public func transaction() -> Transaction { Transaction(store: self) }

    // MARK: Reads

    /// The object's dnode (attributes, size, xattr area); `noSuchObject` when it does not exist.
    public func attributes(_ object: UInt64) throws(ObjectStoreError) -> Dnode {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        return try existing(object)
    }

    /// Whether the object exists.
    public func exists(_ object: UInt64) throws(ObjectStoreError) -> Bool {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        return try loadDnode(object) != nil
    }

    /// Reads up to `length` bytes at `offset` (fewer at the end of the object). Pages first, then
    /// extents verified chunk by chunk, zeros for holes. `readPastEnd` when `offset` is at or past
    /// the end and `length` > 0.
    public func read(_ object: UInt64, at offset: UInt64, length: Int) throws(ObjectStoreError) -> [UInt8] {
        precondition(length >= 0, "read of \(length) bytes")
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        let dnode = try existing(object, dataOperation: "read")
        guard length > 0 else { return [] }
        guard offset < dnode.sizeBytes else { throw .readPastEnd(object: object, offsetBytes: offset, sizeBytes: dnode.sizeBytes) }
        let end = min(dnode.sizeBytes, offset + UInt64(length))      // offset < size ≤ 2^63, length ≤ Int.max: no overflow
        var result = [UInt8](repeating: 0, count: Int(end - offset))
        let state = state(of: object)
        let map = try extentMap(of: state, dnode: dnode)
        try withMutableBytes(of: &result) { output throws(ObjectStoreError) in
            var chunk = offset / 4096
            let lastChunk = (end - 1) / 4096
            while chunk <= lastChunk {
                if let page = state.pages[chunk] {
                    let start = max(offset, chunk * 4096)
                    let stop = min(end, (chunk + 1) * 4096)
                    UnsafeMutableRawBufferPointer(rebasing: output[Int(start - offset) ..< Int(stop - offset)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: page.bytes[Int(start - chunk * 4096) ..< Int(stop - chunk * 4096)]))
                    chunk += 1
                    continue
                }
                // A run of chunks without pages: from the extent map.
                var runEnd = chunk + 1
                while runEnd <= lastChunk && state.pages[runEnd] == nil && runEnd - chunk < 256 { runEnd += 1 }
                let range = max(offset, chunk * 4096) ..< min(end, runEnd * 4096)
                for piece in map.lookup(range) {
                    guard let extent = piece.extent else { continue }     // a hole: zeros already
                    let span = extent.chunkSpan(covering: piece.logicalRange)
                    let buffer = allocateAlignedBuffer(byteCount: Int(span.lengthBytes))
                    defer { buffer.deallocate() }
                    try readVerified(object, extent: extent, span: span, into: buffer)
                    let skip = Int(piece.logicalRange.lowerBound - (extent.logicalOffsetBytes + span.offsetInExtentBytes))
                    UnsafeMutableRawBufferPointer(rebasing: output[Int(piece.logicalRange.lowerBound - offset) ..< Int(piece.logicalRange.upperBound - offset)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[skip ..< skip + piece.logicalRange.count]))
                }
                chunk = runEnd
            }
        }
        return result
    }

    /// The value of xattr `name`, or nil.
    public func xattr(_ object: UInt64, name: String) throws(ObjectStoreError) -> [UInt8]? {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        var dnode = try existing(object)
        do { return try dnode.xattr(name, store: metadata) } catch { throw .dnode(error) }
    }

    /// Every xattr name of the object, sorted.
    public func xattrNames(_ object: UInt64) throws(ObjectStoreError) -> [String] {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        var dnode = try existing(object)
        do { return try dnode.xattrNames(store: metadata) } catch { throw .dnode(error) }
    }

    /// The value of `key` in an index or directory object, or nil.
    public func indexLookup(_ object: UInt64, key: [UInt8]) throws(ObjectStoreError) -> [UInt8]? {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        let dnode = try existing(object, indexOperation: "index lookup")
        let state = state(of: object)
        indexLock.lock()
        defer { indexLock.unlock() }
        let tree = try indexTree(of: state, dnode: dnode)
        do { return try tree.lookup(key) } catch { throw .index(object: object, error) }
    }

    /// Up to `limit` entries of an index or directory object in key order from `position`, with a
    /// cookie to resume after the last one (readdir).
    public func indexEntries(_ object: UInt64, from position: IndexPosition = .first, limit: Int = .max) throws(ObjectStoreError) -> IndexBatch {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        let dnode = try existing(object, indexOperation: "index iteration")
        let state = state(of: object)
        indexLock.lock()
        defer { indexLock.unlock() }
        let tree = try indexTree(of: state, dnode: dnode)
        do { return try tree.entries(from: position, limit: limit) } catch { throw .index(object: object, error) }
    }

    /// FIEMAP of a regular object (home extents only; data still in pages is reported by
    /// `seekData`, not here, until its checkpoint).
    public func fiemap(_ object: UInt64, range: Range<UInt64>, countMax: Int = .max) throws(ObjectStoreError) -> [FiemapEntry] {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        let dnode = try existing(object, dataOperation: "fiemap")
        return try extentMap(of: state(of: object), dnode: dnode).fiemap(range, countMax: countMax)
    }

    /// SEEK_DATA: the first offset ≥ `offset` holding data (pages count); nil (ENXIO) when none.
    public func seekData(_ object: UInt64, from offset: UInt64) throws(ObjectStoreError) -> UInt64? {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        let dnode = try existing(object, dataOperation: "seek")
        let state = state(of: object)
        let mapped = try extentMap(of: state, dnode: dnode).seekData(from: offset, sizeBytes: dnode.sizeBytes)
        let paged = state.pages.keys.filter { ($0 + 1) * 4096 > offset && $0 * 4096 < dnode.sizeBytes }.min().map { max(offset, $0 * 4096) }
        switch (mapped, paged) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (nil, nil): return nil
        }
    }

    /// SEEK_HOLE: the first offset ≥ `offset` in a hole (the end counts); nil (ENXIO) past the end.
    public func seekHole(_ object: UInt64, from offset: UInt64) throws(ObjectStoreError) -> UInt64? {
        let stripe = stripes[stripe(of: object)]
        stripe.lock()
        defer { stripe.unlock() }
        let dnode = try existing(object, dataOperation: "seek")
        guard offset < dnode.sizeBytes else { return nil }
        let state = state(of: object)
        let map = try extentMap(of: state, dnode: dnode)
        var cursor = offset
        while cursor < dnode.sizeBytes {
            if state.pages[cursor / 4096] != nil {
                cursor = (cursor / 4096 + 1) * 4096
                continue
            }
            guard let hole = map.seekHole(from: cursor, sizeBytes: dnode.sizeBytes) else { return nil }
            if hole >= dnode.sizeBytes { return dnode.sizeBytes }
            if state.pages[hole / 4096] == nil { return hole }
            cursor = hole
        }
        return dnode.sizeBytes
    }
}
