// Transaction — declare → start → operations → stop, the Lustre OSD shape (dt_trans_create,
// declare_*, dt_trans_start, the operations, dt_trans_stop with commit callbacks).
//
// Theory. `declare*` records what the transaction will touch and sizes it: data extents for
// large writes, log bytes for every record. `start` is where it can fail cleanly: a transaction
// whose records cannot fit one log batch (`transactionTooLarge`), no room for its data extents
// (ENOSPC from the allocator's reservation, which holds concrete extents so later allocation
// cannot fail), no metadata headroom, or a throttle wait that times out — each before anything
// changed. Then it takes a hold on the open checkpoint (the checkpoint switch waits for holds to
// drop) and the declared objects' stripe locks in ascending stripe order, and keeps both until
// `stop`. The hold carries the open checkpoint's number (`tag`), which every change the
// transaction makes is tagged with. The common case (no data extents, nothing to wait for) is
// admitted in one trip through the store's state lock (`ObjectStore.admitQuickly`); anything
// else goes the long way, which waits or fails as each bound needs. An operation that was not declared is a programmer error and traps. An operation that
// fails validation throws and changes nothing; the transaction stays usable and must still be
// stopped. `stop` appends the records of the operations that succeeded as one log group and
// returns without waiting; `onCommit` fires once they are durable.
//
// Not thread-safe: one thread drives a transaction. A thread must not call
// `ObjectStore.checkpoint()` while it holds a started transaction (the checkpoint waits for it).

import StrataIO
import StrataLog
import StrataPool

public final class Transaction {
    public let store: ObjectStore

    enum Phase { case declaring, started, stopped }
    enum Kind: Hashable { case create, destroy, attributes, write, punch, xattr, index }
    struct Declared: Hashable {
        var kind: Kind
        var object: UInt64
    }

    var phase = Phase.declaring
    /// What was declared, once each. A transaction declares a handful of things (most, one: held
    /// inline, no array), so a linear search beats hashing (two Set allocations and SipHash per
    /// transaction); past `declaredLinearMax` a Set takes over the lookups.
    var declared = InlineFirstList<Declared>()
    var declaredSet: Set<Declared>? = nil
    static let declaredLinearMax = 32
    var extentCount = 0
    var logBytes = 0
    var reservation: Reservation?
    /// The stripe locks held while started, in ascending order.
    var lockedStripes = InlineFirstList<Int>()
    /// The records of the operations performed, in order.
    var records = InlineFirstList<LogAppend>()
    var flushMask: UInt64 = 0
    public private(set) var id: UInt64 = 0
    /// The open checkpoint while started (the gate holds it open): what this transaction's
    /// changes are tagged with.
    var tag: UInt64 = 0

    init(store: ObjectStore) {
        self.store = store
    }

    deinit {
        precondition(phase != .started, "transaction \(id) was started and never stopped")
    }

    // MARK: Declare

    private func declare(_ kind: Kind, _ object: UInt64, recordPayloadBytes: Int) {
        declare(kind, object, logBytes: LogBlock.recordBytes(payloadBytes: recordPayloadBytes))
    }

    /// Declares `kind` on `object`, taking `bytes` of log room (whole records, headers included).
    private func declare(_ kind: Kind, _ object: UInt64, logBytes bytes: Int) {
        precondition(phase == .declaring, "declare after start")
        let entry = Declared(kind: kind, object: object)
        if declaredSet?.insert(entry).inserted ?? !declared.contains(entry) {
            declared.append(entry)
            if declaredSet == nil && declared.count > Self.declaredLinearMax { declaredSet = Set(declared.array) }
        }
        logBytes += bytes
    }

    /// Declares the creation of a new object; returns the object number it will have.
    public func declareCreate() -> UInt64 {
        let object = store.stateLock.withLock { () -> UInt64 in
            let number = store.nextObject
            store.nextObject += 1
            return number
        }
        declare(.create, object, recordPayloadBytes: 32)
        return object
    }

    public func declareDestroy(_ object: UInt64) { declare(.destroy, object, recordPayloadBytes: 8) }

    public func declareSetAttributes(_ object: UInt64) { declare(.attributes, object, recordPayloadBytes: 72) }

    /// Declares a write of `length` bytes at `offset`.
    public func declareWrite(_ object: UInt64, offset: UInt64, length: Int) {
        let plan = store.writePlan(offset: offset, length: length)
        var bytes = 0
        if !plan.head.isEmpty { bytes += LogBlock.recordBytes(payloadBytes: 20 + plan.head.count) }
        if !plan.tail.isEmpty { bytes += LogBlock.recordBytes(payloadBytes: 20 + plan.tail.count) }
        let pieces = plan.bodyPieces(recordBytesMax: store.settings.recordBytesMax)
        if !pieces.isEmpty {
            // Only large writes ask the policy (the allocator's lock) how many copies data has.
            let copies = store.pool.allocator.policy.copies(for: .data)
            for piece in pieces { bytes += LogBlock.recordBytes(payloadBytes: 40 + 16 * copies + 4 * Int(piece.count / 4096)) }
        }
        extentCount += pieces.count
        declare(.write, object, logBytes: bytes)
    }

    /// Declares a punch or a truncate.
    public func declarePunch(_ object: UInt64) { declare(.punch, object, recordPayloadBytes: 24) }

    public func declareSetXattr(_ object: UInt64, name: String, valueBytes: Int) {
        declare(.xattr, object, recordPayloadBytes: 16 + name.utf8.count + max(0, valueBytes))
    }

    public func declareRemoveXattr(_ object: UInt64, name: String) {
        declare(.xattr, object, recordPayloadBytes: 9 + name.utf8.count)
    }

    public func declareIndexInsert(_ object: UInt64, keyBytes: Int, valueBytes: Int) {
        declare(.index, object, recordPayloadBytes: 12 + max(0, keyBytes) + max(0, valueBytes))
    }

    public func declareIndexDelete(_ object: UInt64, keyBytes: Int) {
        declare(.index, object, recordPayloadBytes: 9 + max(0, keyBytes))
    }

    // MARK: Start and stop

    /// Reserves what was declared and locks the declared objects. Throws, having changed
    /// nothing, when the transaction cannot be satisfied.
    public func start() throws(ObjectStoreError) {
        precondition(phase == .declaring, "start of a transaction already started")
        // An unusable store's error comes first, as from the long way.
        guard let log = store.log else {
            try store.checkUsable()
            throw .readOnly("pool '\(store.pool.name)' is imported read-only")
        }
        let capacity = log.settings.batchBytesMax - LogBlock.headerBytes
        guard logBytes <= capacity else {
            try store.checkUsable()
            throw .transactionTooLarge(logBytes: logBytes, logBytesMax: capacity)
        }
        if extentCount == 0, let open = store.admitQuickly() {
            tag = open                          // the common case: one trip through the state lock
        } else {
            try admitTheLongWay()
        }
        lockStripes()
    }

    /// Admission when something may have to wait or fail: the store unusable, a bound reached,
    /// the reserve lent or not held, data extents to reserve.
    private func admitTheLongWay() throws(ObjectStoreError) {
        try store.checkUsable()
        try store.waitForRoom()
        // The checkpoint reserve must be held before anything allocates: without it a
        // checkpoint could find no room. Data extents are reserved (held) now. Space freed by
        // recent transactions comes back only once the checkpoint after the one that recorded
        // the frees is durable: on ENOSPC with frees pending, two checkpoints are run (or
        // awaited) and both are tried again, while frees are pending, up to `throttleWaitNsMax`.
        var deadline: UInt64 = 0
        while true {
            var failure: String? = nil
            let reserve = store.takeReserves()
            if reserve == .lentToCheckpoint {
                // A checkpoint's switch is using it; it is back when the switch ends.
                if deadline == 0 { deadline = Monitor.nowNs() + store.settings.throttleWaitNsMax }
                guard store.awaitReserveReturned(untilNs: deadline) else {
                    throw .throttleTimedOut(waitedNs: store.settings.throttleWaitNsMax, reason: "waiting for a checkpoint's switch to return the reserve")
                }
                try store.checkUsable()
                continue
            }
            if reserve == .noRoom {
                failure = "pool '\(store.pool.name)' cannot hold the checkpoint reserve (\(store.limits.dataReserveBytes >> 20) MiB data, \(store.limits.metadataReserveBytes >> 20) MiB metadata)"
            } else if extentCount > 0 {
                do {
                    reservation = try store.pool.allocator.reserve(.data, extentCount: extentCount, lengthBytes: UInt64(store.settings.recordBytesMax))
                } catch {
                    failure = error.description
                }
            }
            guard let failure else { break }
            try store.checkUsable()
            if deadline == 0 { deadline = Monitor.nowNs() + store.settings.throttleWaitNsMax }
            guard Monitor.nowNs() < deadline,
                  !store.holdsReserves || store.pool.allocator.hasDeferredFrees else {
                throw .noSpace(failure)
            }
            try store.checkpointsForSpace()
        }
        tag = store.enterGate()
    }

    /// The declared objects' stripe locks, taken in ascending order (the lock order).
    private func lockStripes() {
        if let first = declared.first.map({ store.stripe(of: $0.object) }),
           declared.rest.allSatisfy({ store.stripe(of: $0.object) == first }) {
            lockedStripes.append(first)                 // one stripe, the common case: no array
        } else {
            // Sorted and deduplicated in one array.
            var stripes = declared.array.map { store.stripe(of: $0.object) }
            stripes.sort()
            var kept = 0
            for index in stripes.indices where kept == 0 || stripes[index] != stripes[kept - 1] {
                stripes[kept] = stripes[index]
                kept += 1
            }
            stripes.removeLast(stripes.count - kept)
            for stripe in stripes { lockedStripes.append(stripe) }
        }
        lockedStripes.forEach { store.stripes[$0].lock() }
        id = store.transactionIDs.wrappingAdd(1, ordering: .relaxed).oldValue
        phase = .started
    }

    /// Appends the records of the operations performed as one log group and releases the
    /// transaction's locks; returns without waiting for the disk. `onCommit` fires (on the log
    /// writer's thread, in commit order) once the records are durable. A transaction that changed
    /// nothing has no records, but its callback still promises that everything stopped before it
    /// is durable (commit order: a caller may advance a "last committed" mark with it), so it
    /// logs one `nothing` record (8 bytes of payload, applied as nothing at replay) to carry the
    /// callback in order.
    public func stop(onCommit: IntentLog.CommitCallback? = nil) throws(ObjectStoreError) {
        precondition(phase == .started, "stop of a transaction not started")
        phase = .stopped
        var failure: ObjectStoreError? = nil
        if let log = store.log {
            if let first = records.first {
                do {
                    if records.rest.isEmpty {
                        try log.append(first, flushingFirst: flushMask, onDurable: onCommit)
                    } else {
                        try log.appendGroup(records.array, flushingFirst: flushMask, onDurable: onCommit)
                    }
                } catch {
                    // Memory holds changes the log will never have: nothing more may be committed.
                    store.fail("transaction \(id): log append failed: \(error)")
                    failure = .log(error)
                }
            } else if let onCommit {
                let nothing = LogAppend(type: ObjectRecordType.nothing.rawValue, transactionID: id, payload: ObjectOperation.nothing.encoded())
                do { try log.append(nothing, onDurable: onCommit) } catch { failure = .log(error) }
            }
        }
        if let reservation { store.pool.allocator.release(reservation) }
        reservation = nil
        lockedStripes.forEachReversed { store.stripes[$0].unlock() }
        lockedStripes = InlineFirstList()
        store.leaveGate(transactions: 1)
        records = InlineFirstList()
        if let failure { throw failure }
    }

    private func check(_ kind: Kind, _ object: UInt64, _ what: String) {
        precondition(phase == .started, "\(what) on object \(object) outside a started transaction")
        let entry = Declared(kind: kind, object: object)
        let isDeclared = declaredSet?.contains(entry) ?? declared.contains(entry)
        precondition(isDeclared, "\(what) on object \(object) was not declared in transaction \(id)")
    }

    private func perform(_ operation: ObjectOperation) throws(ObjectStoreError) {
        try store.apply(operation, replaying: false, tag: tag)
        records.append(LogAppend(type: operation.type.rawValue, transactionID: id, payload: operation.encoded()))
    }

    // MARK: Operations

    public func create(_ object: UInt64, type: ObjectType, mode: UInt32 = 0o100644, uid: UInt32 = 0, gid: UInt32 = 0,
                       timeNs: Int64 = 0) throws(ObjectStoreError) {
        check(.create, object, "create")
        precondition(type != .free, "create of a free object")
        try perform(.create(object: object, type: type, mode: mode, uid: uid, gid: gid, timeNs: timeNs))
    }

    public func destroy(_ object: UInt64) throws(ObjectStoreError) {
        check(.destroy, object, "destroy")
        try perform(.destroy(object: object))
    }

    public func setAttributes(_ object: UInt64, _ change: AttributeChange) throws(ObjectStoreError) {
        check(.attributes, object, "setAttributes")
        try perform(.setAttributes(object: object, change))
    }

    /// Writes `bytes` at `offset`: the aligned middle of a large write to new extents (written
    /// now), the rest through the log. `bytes` must not change until this returns: they are
    /// checksummed once and copied after (a change in between would store data that fails its
    /// own checksum).
    public func write(_ object: UInt64, at offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws(ObjectStoreError) {
        check(.write, object, "write")
        guard !bytes.isEmpty else { return }
        try store.checkRange(object, offset, UInt64(bytes.count))
        let plan = store.writePlan(offset: offset, length: bytes.count)
        if plan.body.isEmpty {
            // A small write: applied and logged from the caller's bytes (the apply checks that
            // the object exists before anything changes).
            try writeInline(object, at: offset, bytes)
            return
        }
        // Before any extent is written: the object must exist.
        _ = try store.existing(object, dataOperation: "write")
        if !plan.head.isEmpty {
            try writeInline(object, at: plan.head.lowerBound, UnsafeRawBufferPointer(rebasing: bytes[0 ..< plan.head.count]))
        }
        for piece in plan.bodyPieces(recordBytesMax: store.settings.recordBytesMax) {
            guard let reservation else { preconditionFailure("write of \(bytes.count) bytes at \(offset) on object \(object) beyond what was declared") }
            let start = Int(piece.lowerBound - offset)
            let data = UnsafeRawBufferPointer(rebasing: bytes[start ..< start + Int(piece.count)])
            let extent = try store.writeExtentData(object, logicalOffset: piece.lowerBound, data: data, reservation: reservation, tag: tag)
            for copy in extent.copies { flushMask |= 1 << UInt64(copy.deviceIndex) }
            do {
                try perform(.writeExtent(object: object, extent))
            } catch {
                store.pool.allocator.free(ExtentCopies(extent.copies))
                throw error
            }
        }
        if !plan.tail.isEmpty {
            let start = Int(plan.tail.lowerBound - offset)
            try writeInline(object, at: plan.tail.lowerBound, UnsafeRawBufferPointer(rebasing: bytes[start ..< start + plan.tail.count]))
        }
    }

    /// One `writeInline` operation: applied, then its record encoded, both from `bytes`.
    /// A 4 KiB write checksums its bytes once, here, where the caller just wrote them: that is the
    /// page's checksum when the write covers one page, and the record's payload checksum follows
    /// from it and the 20-byte header's (`CRC32C.Shift`), so neither the page nor the record's
    /// copy of the data is read again to checksum it.
    private func writeInline(_ object: UInt64, at offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws(ObjectStoreError) {
        assert(CRC32C.shift4096.lengthBytes == Page.bytes && ObjectOperation.writeInlineHeaderBytes == 20, "checksum shift and page size disagree")
        let dataChecksum: UInt32? = bytes.count == Page.bytes ? CRC32C.checksum(bytes) : nil
        try store.applyWriteInline(object, offset: offset, bytes: bytes, tag: tag,
                                   wholePageChecksum: offset % UInt64(Page.bytes) == 0 ? dataChecksum : nil)
        let payload = ObjectOperation.encodeWriteInline(object: object, offset: offset, bytes: bytes)
        let payloadChecksum = dataChecksum.map { data in
            let header = payload.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0 ..< ObjectOperation.writeInlineHeaderBytes])) }
            return CRC32C.shift4096.combine(header, data)
        }
        records.append(LogAppend(type: ObjectRecordType.writeInline.rawValue, transactionID: id, payload: payload,
                                 payloadChecksum: payloadChecksum))
    }

    public func write(_ object: UInt64, at offset: UInt64, _ bytes: [UInt8]) throws(ObjectStoreError) {
        try withBytes(of: bytes) { raw throws(ObjectStoreError) in try write(object, at: offset, raw) }
    }

    /// Deallocates `length` bytes at `offset` (reads return zeros); the size does not change.
    public func punch(_ object: UInt64, offset: UInt64, length: UInt64) throws(ObjectStoreError) {
        check(.punch, object, "punch")
        try perform(.punch(object: object, offset: offset, length: length))
    }

    /// Sets the size; shrinking deallocates everything past it.
    public func truncate(_ object: UInt64, sizeBytes: UInt64) throws(ObjectStoreError) {
        check(.punch, object, "truncate")
        try perform(.truncate(object: object, sizeBytes: sizeBytes))
    }

    public func setXattr(_ object: UInt64, name: String, value: [UInt8]) throws(ObjectStoreError) {
        check(.xattr, object, "setXattr")
        let nameBytes = Array(name.utf8)
        guard (1...DnodeLimits.xattrNameBytesMax).contains(nameBytes.count) else {
            throw .dnode(.xattrNameInvalid(object: object, nameBytes: nameBytes.count, max: DnodeLimits.xattrNameBytesMax))
        }
        guard value.count <= DnodeLimits.xattrValueBytesMax else {
            throw .dnode(.xattrValueTooLarge(object: object, name: name, valueBytes: value.count, max: DnodeLimits.xattrValueBytesMax))
        }
        try perform(.setXattr(object: object, name: nameBytes, value: value))
    }

    public func removeXattr(_ object: UInt64, name: String) throws(ObjectStoreError) {
        check(.xattr, object, "removeXattr")
        let nameBytes = Array(name.utf8)
        guard (1...DnodeLimits.xattrNameBytesMax).contains(nameBytes.count) else {
            throw .dnode(.xattrNameInvalid(object: object, nameBytes: nameBytes.count, max: DnodeLimits.xattrNameBytesMax))
        }
        try perform(.removeXattr(object: object, name: nameBytes))
    }

    public func indexInsert(_ object: UInt64, key: [UInt8], value: [UInt8], mode: IndexInsertMode = .mustNotExist) throws(ObjectStoreError) {
        check(.index, object, "indexInsert")
        guard key.count <= IndexTree.keyBytesMax, !key.isEmpty else {
            throw .index(object: object, .keyTooLong(tree: "object \(object)", keyBytes: key.count, keyBytesMax: IndexTree.keyBytesMax))
        }
        guard value.count <= IndexTree.valueBytesMax else {
            throw .index(object: object, .valueTooLong(tree: "object \(object)", key: key, valueBytes: value.count, valueBytesMax: IndexTree.valueBytesMax))
        }
        try perform(.indexInsert(object: object, key: key, value: value, upsert: mode == .upsert))
    }

    public func indexDelete(_ object: UInt64, key: [UInt8]) throws(ObjectStoreError) {
        check(.index, object, "indexDelete")
        guard key.count <= IndexTree.keyBytesMax, !key.isEmpty else {
            throw .index(object: object, .keyTooLong(tree: "object \(object)", keyBytes: key.count, keyBytesMax: IndexTree.keyBytesMax))
        }
        try perform(.indexDelete(object: object, key: key))
    }
}

/// How a write is split: an unaligned head and tail (and everything, when small) through the
/// log, the aligned middle to new extents.
struct WritePlan {
    var head: Range<UInt64>
    var body: Range<UInt64>
    var tail: Range<UInt64>

    func bodyPieces(recordBytesMax: Int) -> [Range<UInt64>] {
        stride(from: body.lowerBound, to: body.upperBound, by: recordBytesMax).map { start in
            start ..< min(start + UInt64(recordBytesMax), body.upperBound)
        }
    }
}

extension Range where Bound == UInt64 {
    var count: Int { Int(upperBound - lowerBound) }
}

extension ObjectStore {
    func writePlan(offset: UInt64, length: Int) -> WritePlan {
        let end = offset + UInt64(max(0, length))
        let bodyStart = roundUp(offset)
        let bodyEnd = end / 4096 * 4096
        guard length >= settings.smallWriteCutoffBytes, bodyStart < bodyEnd,
              Int(bodyEnd - bodyStart) >= settings.smallWriteCutoffBytes else {
            return WritePlan(head: offset ..< end, body: end ..< end, tail: end ..< end)
        }
        return WritePlan(head: offset ..< bodyStart, body: bodyStart ..< bodyEnd, tail: bodyEnd ..< end)
    }

    /// Writes one piece of a large write to a new extent from the reservation (every copy; not
    /// flushed: the log flushes these devices before the record's block).
    func writeExtentData(_ object: UInt64, logicalOffset: UInt64, data: UnsafeRawBufferPointer,
                         reservation: Reservation, tag: UInt64) throws(ObjectStoreError) -> MappedExtent {
        let copies = pool.allocator.allocate(from: reservation, lengthBytes: UInt64(data.count))
        let staging = stagingBuffers.take()
        defer { stagingBuffers.give(staging) }
        let aligned: UnsafeRawBufferPointer
        if let base = data.baseAddress, Int(bitPattern: base) % 4096 == 0 {
            aligned = data
        } else {
            UnsafeMutableRawBufferPointer(rebasing: staging[0 ..< data.count]).copyMemory(from: data)
            aligned = UnsafeRawBufferPointer(rebasing: staging[0 ..< data.count])
        }
        let checksums = MappedExtent.chunkChecksums(of: aligned)
        for copy in copies {
            do {
                try pool.devices[copy.deviceIndex].write(aligned, at: copy.offsetBytes, fua: false)
            } catch {
                pool.allocator.free(copies)
                throw .io(error)
            }
        }
        return MappedExtent(logicalOffsetBytes: logicalOffset, copies: Array(copies), birthCheckpoint: tag, chunkChecksums: checksums)
    }
}

/// A list whose first element is held inline: a transaction that declares, locks or logs one
/// thing (the common case) allocates no array for it.
struct InlineFirstList<Element> {
    private(set) var first: Element?
    /// The elements after the first.
    private(set) var rest: [Element] = []

    var count: Int { first == nil ? 0 : 1 + rest.count }

    mutating func append(_ element: Element) {
        if first == nil { first = element } else { rest.append(element) }
    }

    func forEach(_ body: (Element) -> Void) {
        guard let first else { return }
        body(first)
        rest.forEach(body)
    }

    func forEachReversed(_ body: (Element) -> Void) {
        guard let first else { return }
        rest.reversed().forEach(body)
        body(first)
    }

    /// Every element in one array (allocates: for the rare case of more than one).
    var array: [Element] { first.map { [$0] + rest } ?? [] }
}

extension InlineFirstList where Element: Equatable {
    func contains(_ element: Element) -> Bool {
        guard let first else { return false }
        return first == element || rest.contains(element)
    }
}
