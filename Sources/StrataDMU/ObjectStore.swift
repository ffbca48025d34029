// ObjectStore — the transactional object core: objects (dnodes, extent maps, xattrs, index
// trees) changed by declare/start/stop transactions, made durable by the intent log, made
// permanent by checkpoints, rebuilt by replay.
//
// Theory
// ------
// State. The durable state is the last committed checkpoint (the uberblock's roots: the log
// head, and the dnode table — an index tree mapping table-block number → the 16 KiB block of 16
// dnodes, plus a `meta` entry holding the next object number) and the intent log after it. The
// in-memory state is that checkpoint with every logged transaction since applied: dirty dnodes
// in the dnode cache (pinned), extent maps and index trees of changed objects, and *pages* —
// 4 KiB chunks written by small writes that have not reached a home extent yet.
//
// Transactions (ObjectStore+Transaction.swift). `declare*` says what a transaction will do;
// `start` reserves data extents (ENOSPC here, before anything changed), takes a hold on the open
// checkpoint, and locks the declared objects (striped mutexes, taken in stripe order: no deadlock);
// each operation validates, then changes memory and produces its log record; `stop` appends the
// records as one group (one log block: whole or absent at replay) and unlocks. Because a
// transaction holds the locks of everything it touches from start to stop, two transactions that
// touch the same object are ordered the same way in memory and in the log, and replay (applying
// records in LSN order) rebuilds exactly the memory state. Commit callbacks fire from the log's
// writer when the group's block is durable; records are appended in stop order, so "T1 stopped
// before T2 ⇒ T2 durable implies T1 durable".
//
// Data path. A write's 4 KiB-aligned middle of at least `smallWriteCutoffBytes` goes to freshly
// allocated extents (≤ `recordBytesMax` each, data class), written before `stop`; its record
// carries the places and chunk checksums, and the log writer flushes those devices before the
// block that holds the record (`appendGroup(flushingFirst:)`). Everything else (small writes and
// unaligned edges) becomes pages (read-modify-write of a partial chunk from its home) and its
// bytes travel in the record — one sequential log append per durable small write, the BlueStore
// deferred write. Reads see pages first, then extents (checksum-verified per 4 KiB chunk), then
// holes (zeros).
//
// Checkpoints (ObjectStore+Checkpoint.swift). A checkpoint is cut in a *switch*: new transactions
// are held off and the running ones finish (the txg quiesce); then, with nothing changing,
// L = the last appended LSN describes the memory state exactly. During the switch — memory work
// only — the log writes its new head, dirty pages get new extents, every dirty extent map, index
// tree, xattr block and dnode-table block is encoded copy-on-write into a staged place
// (StagedMetadataStore), and the pool's allocator is cut (`prepareCheckpoint`), so the space maps
// of checkpoint N count exactly the allocations of transactions ≤ L and of the checkpoint itself.
// Then transactions resume (tagging their changes N+1) while the checkpoint writes the pages and
// staged blocks and commits uberblock N; then the log releases the space ≤ L and the dnode cache
// unpins what N wrote. Triggers: the interval, the log's request at its fill mark, dirty pages at
// `checkpointDirtyPercent` of `dirtyBytesMax`, or a caller (`checkpoint()`).
//
// Replay (ObjectStore+Replay.swift). Open loads the dnode table of the newest uberblock, then
// replays the log after it through the same apply functions the operations use; extents a
// replayed record names are claimed in the allocator (they were allocated after the cut, so the
// durable space maps do not count them). Replay writes nothing; a crash during it leaves the same
// image. After replay a read-write open commits a checkpoint.
//
// Bounds (ObjectStoreSettings): dirty page bytes (`dirtyBytesMax`: transactions wait at it, and
// the log since a checkpoint can never hold more distinct pages, which bounds replay memory too),
// log fill (`logThrottlePercent`: transactions wait so the log never fills under held locks), the
// dnode cache, the index node cache, in-memory object states (`objectStatesMax` clean ones).
//
// Crash contract (DESIGN.md): a transaction whose callback fired is in the log, durable after its
// data; replay applies it whole. The space maps of a checkpoint count exactly what it references.
//
// Concurrency and lock order: stripe locks (object) → `indexLock` (every index tree and the shared
// node cache) → `stateLock` (object table, dirty set, counters). The checkpoint gate is entered
// before any stripe lock. The pool, allocator, log and dnode cache have their own locks, innermost.

import StrataIO
import StrataLog
import StrataPool
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The settings of an object store, each with its reason.
public struct ObjectStoreSettings: Sendable, Equatable {
    /// Writes below this many bytes (and unaligned edges of larger ones) travel in the log and
    /// reach their home at the next checkpoint. 64 KiB: below it, a random write at home plus a
    /// flush costs more than appending it to the sequential log; above it the log's bandwidth is
    /// better spent on records than on copies of data (BlueStore's deferred-write cutoff is the
    /// same order).
    public var smallWriteCutoffBytes: Int = 64 << 10
    /// Largest extent one write allocates (DESIGN.md: records of up to 1 MiB).
    public var recordBytesMax: Int = 1 << 20
    /// Bytes of pages (small-write data not at home yet) at which transactions wait for a
    /// checkpoint. Also bounds replay memory (see the theory). The bound in force is at most the
    /// data part of the checkpoint reserve (each dirty page needs a new home there): 768 MiB on
    /// a pool of 32 GiB or more with the automatic reserve. 1 GiB, as ZFS's dirty-data bound
    /// (10 % of memory, up to 4 GiB): a checkpoint that covers more overwrites of the same blocks
    /// writes each home once — with 256 MiB, 4 KiB overwrites over 400 MiB of objects wrote
    /// 0.85 pages home per overwrite; with this bound 0.5, and 0.3 once the log (3 GiB) was long
    /// enough for this bound to be what asks for checkpoints (`strata-perf dmu`). The cost is
    /// memory: up to the bound in force of resident 4 KiB pages per store (plus ~100 bytes of
    /// bookkeeping each), and a replay after a crash rebuilds as many (it applies the whole log
    /// before any checkpoint), so an importer needs that much memory too. Lower it for many
    /// stores per process or small machines; the checkpoint switch also places up to half of it
    /// while transactions wait (~25 ms for 270 MiB of pages here).
    public var dirtyBytesMax: Int = 1 << 30
    /// Discard the space each checkpoint frees before it is reused (`Pool.discardsFreedSpace`:
    /// BLKDISCARD on block devices, a punched hole in files; set on the pool at open; bounds in
    /// `Pool.discardLimits`). Default false. Not discarded: what the last checkpoint before an
    /// export or a crash freed (the next import makes it free at once, with no discard). On zram
    /// it keeps the device's memory to what the pool references: without it, every sector the
    /// pool ever wrote keeps its compressed copy (a 4 KiB-overwrite run grew zram by ~3 GB and
    /// stopped only when the allocator came back to sectors it had written).
    public var discardFreedSpace = false
    /// A checkpoint starts when dirty pages reach this percentage of `dirtyBytesMax`.
    public var checkpointDirtyPercent: Int = 50
    /// A checkpoint at least this often while anything changed (bounds replay time).
    public var checkpointIntervalNs: UInt64 = 5_000_000_000
    /// Transactions wait in `start` while the log's segments are at this percentage of its bound,
    /// so a stop (holding locks) never waits for log space a checkpoint would have to free.
    public var logThrottlePercent: Int = 80
    /// Longest a `start` waits for a checkpoint to make room (then `.throttleTimedOut`).
    public var throttleWaitNsMax: UInt64 = 60_000_000_000
    /// Object lock stripes (a power of two).
    public var objectLockStripes: Int = 256
    /// In-memory object states (extent maps, index trees) kept when clean; more are dropped after
    /// a checkpoint and reloaded on demand. An open index tree holds ~17 KiB of scratch plus its
    /// pinned root, so 16 Ki states bound that part to ~280 MiB in the worst case (all indexes).
    public var objectStatesMax: Int = 16_384
    /// Space held back for a checkpoint's own writes (dirty pages going home, copy-on-write
    /// metadata), so foreground allocations can never leave a checkpoint without room — the ZFS
    /// "slop space" idea. 0: automatic, 1/32 of the pool's capacity between 16 MiB and 1 GiB.
    /// A quarter (at least 4 MiB) is held in the metadata class, the rest in the data class; the
    /// dirty-page bound is at most the data part, and dirty objects (≈ 32 KiB of metadata each
    /// at a checkpoint) at most the metadata part.
    public var checkpointReserveBytes: UInt64 = 0
    /// Run checkpoints on a background thread (triggers above). False: only `checkpoint()` runs
    /// them (tests, crash harness).
    public var backgroundCheckpoints: Bool = true
    /// CPUs the checkpoint thread may run on; empty (the default): anywhere. See `placeThreads`.
    public var checkpointCPUs: [Int] = []
    public var log = LogSettings()
    public var dnodeCache = DnodeCacheSettings()
    public var indexNodeCacheBytes: Int = IndexNodeCache.budgetBytesDefault

    public init() {}

    public func validationProblems() -> [String] {
        var problems: [String] = []
        if smallWriteCutoffBytes < 4096 || smallWriteCutoffBytes > recordBytesMax {
            problems.append("smallWriteCutoffBytes \(smallWriteCutoffBytes) must be in 4096...recordBytesMax")
        }
        if recordBytesMax < 4096 || recordBytesMax % 4096 != 0 || recordBytesMax > 1 << 22 {
            problems.append("recordBytesMax \(recordBytesMax) must be a multiple of 4096 up to 4 MiB")
        }
        if dirtyBytesMax < 1 << 20 { problems.append("dirtyBytesMax \(dirtyBytesMax) below 1 MiB") }
        if !(1...100).contains(checkpointDirtyPercent) { problems.append("checkpointDirtyPercent \(checkpointDirtyPercent) outside 1...100") }
        if !(10...95).contains(logThrottlePercent) { problems.append("logThrottlePercent \(logThrottlePercent) outside 10...95") }
        if objectLockStripes < 1 || objectLockStripes & (objectLockStripes - 1) != 0 {
            problems.append("objectLockStripes \(objectLockStripes) is not a power of two")
        }
        if objectStatesMax < 16 { problems.append("objectStatesMax \(objectStatesMax) below 16") }
        problems += ThreadSetup.cpuListProblems(checkpointCPUs, "checkpointCPUs")
        problems += log.validationProblems().map { "log: \($0)" }     // again at the log's open, with its copies
        return problems
    }

    /// Places the store's threads: the log writer alone on `writerCPUs`; the completer (commit
    /// callbacks) and the checkpoint thread on `otherCPUs`, where the threads that run
    /// transactions belong too. The writer is on the critical path of every commit: on its own
    /// CPU nothing preempts it; and a callback then wakes its committer on the CPU the
    /// completer runs on, not across CPUs (on a VM, a cross-CPU wakeup is an interrupt sent
    /// through the hypervisor). Default: no placement. A trade, measured in docs/object-store.md
    /// ("Thread placement"): commit latency of small writes falls, large writes (whose data the
    /// committers write themselves) have fewer CPUs.
    public mutating func placeThreads(writerCPUs: [Int], otherCPUs: [Int]) {
        log.writerCPUs = writerCPUs
        log.completerCPUs = otherCPUs
        checkpointCPUs = otherCPUs
    }
}

/// Errors of the object store, each naming the object and the value involved.
public enum ObjectStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidSettings([String])
    case noSuchObject(object: UInt64)
    case objectExists(object: UInt64)
    case wrongType(object: UInt64, type: ObjectType, operation: String)
    case readPastEnd(object: UInt64, offsetBytes: UInt64, sizeBytes: UInt64)
    case rangeInvalid(object: UInt64, offsetBytes: UInt64, lengthBytes: UInt64)
    case noSuchXattr(object: UInt64, name: String)
    case noSpace(String)
    case transactionTooLarge(logBytes: Int, logBytesMax: Int)
    case throttleTimedOut(waitedNs: UInt64, reason: String)
    case readOnly(String)
    case failed(String)
    case index(object: UInt64, IndexTreeError)
    case dnode(DnodeError)
    case extentMap(ExtentMapError)
    case metadata(MetadataStoreError)
    case io(IOError)
    case log(LogError)
    case pool(PoolError)
    case corruptLog(lsn: LSN, reason: String)
    case corrupt(String)

    public var description: String {
        switch self {
        case .invalidSettings(let problems): return "invalid object store settings: " + problems.joined(separator: "; ")
        case .noSuchObject(let object): return "object \(object) does not exist"
        case .objectExists(let object): return "object \(object) already exists"
        case .wrongType(let object, let type, let operation): return "object \(object) is a \(type) object: \(operation) is not possible on it"
        case .readPastEnd(let object, let offset, let size): return "object \(object): read at offset \(offset) is past its end (size \(size))"
        case .rangeInvalid(let object, let offset, let length): return "object \(object): range \(offset)+\(length) is empty or past 2^63"
        case .noSuchXattr(let object, let name): return "object \(object) has no xattr \(name)"
        case .noSpace(let message): return "no space: \(message)"
        case .transactionTooLarge(let bytes, let max): return "transaction needs \(bytes) bytes of log records; one log batch holds \(max)"
        case .throttleTimedOut(let waited, let reason): return "transaction waited \(waited / 1_000_000) ms for a checkpoint (\(reason))"
        case .readOnly(let message): return "read-only: \(message)"
        case .failed(let message): return "object store failed: \(message); re-import the pool"
        case .index(let object, let error): return "object \(object): \(error)"
        case .dnode(let error): return error.description
        case .extentMap(let error): return error.description
        case .metadata(let error): return error.description
        case .io(let error): return error.description
        case .log(let error): return error.description
        case .pool(let error): return error.description
        case .corruptLog(let lsn, let reason): return "intent log record \(lsn) cannot be replayed: \(reason)"
        case .corrupt(let message): return "corrupt object store metadata: \(message)"
        }
    }
}

/// The bounds a store enforces, derived from its settings and its pool's size.
public struct StoreLimits: Sendable, Equatable {
    public var dataReserveBytes: UInt64
    public var metadataReserveBytes: UInt64
    /// Dirty pages at which transactions wait (≤ `dirtyBytesMax`, ≤ the data reserve).
    public var dirtyPageBytesMax: Int
    /// Dirty objects at which transactions wait (their checkpoint metadata fits the reserve).
    public var dirtyObjectsMax: Int
    /// Estimated metadata a dirty object costs a checkpoint: an extent-map or index block and
    /// its share of a dnode-table block, rounded up.
    public static let metadataBytesPerDirtyObject: UInt64 = 32 << 10

    init(settings: ObjectStoreSettings, capacityBytes: UInt64) {
        let total = settings.checkpointReserveBytes > 0
            ? settings.checkpointReserveBytes : min(max(capacityBytes / 32, 16 << 20), 1 << 30)
        let reserveUnit: UInt64 = 1 << 20
        metadataReserveBytes = max(total / 4, 4 << 20) / reserveUnit * reserveUnit
        dataReserveBytes = max(total - min(total, metadataReserveBytes), 4 << 20) / reserveUnit * reserveUnit
        dirtyPageBytesMax = min(settings.dirtyBytesMax, Int(dataReserveBytes))
        dirtyObjectsMax = max(16, Int(metadataReserveBytes / StoreLimits.metadataBytesPerDirtyObject))
    }
}

/// Counters of the object store (cumulative since open).
public struct ObjectStoreStatistics: Sendable, Equatable {
    public var transactions = 0
    public var checkpoints = 0
    /// Longest and last switch (transactions held off), and the last checkpoint's total time.
    public var switchNsMax: UInt64 = 0
    /// The longest wait of a switch for the transactions in flight to stop (part of the switch).
    public var quiesceNsMax: UInt64 = 0
    public var lastSwitchNs: UInt64 = 0
    public var lastCheckpointNs: UInt64 = 0
    public var checkpointBytesWritten: UInt64 = 0
    public var checkpointNsTotal: UInt64 = 0
    public var pageBytesWrittenBack: UInt64 = 0
    public var replayedRecords = 0
    public var replayNs: UInt64 = 0
    public var dirtyPageBytes = 0
    public var objectStates = 0
    public var throttleWaits = 0
    /// Metadata reads the first copy failed (I/O error or checksum) and the second served: a
    /// non-zero count means a damaged copy that `strata pool check` will name.
    public var metadataFallbackReads = 0
    public init() {}
}

/// A 4 KiB chunk of an object written by a small write and not yet at home.
final class Page {
    let bytes: UnsafeMutableRawBufferPointer
    /// Handed to a checkpoint's writeback: the writer reads it, so a change must copy it first.
    var isStaged = false
    /// crc32c of `bytes`, kept current by every change (computed by the writer's thread, so the
    /// checkpoint's switch does not hash the dirty pages while transactions wait).
    var checksum: UInt32 = 0

    init() { bytes = PagePool.shared.take() }
    init(copying other: Page) {
        bytes = PagePool.shared.take()
        bytes.copyMemory(from: UnsafeRawBufferPointer(other.bytes))
        checksum = other.checksum
    }
    deinit { PagePool.shared.give(bytes) }

    static let bytes = 4096
}

/// The memory pages come from: 2 MiB slabs, in transparent huge pages where the system allows
/// (`madvise(MADV_HUGEPAGE)`), cut into 4 KiB pages kept on a free list. A page costs no
/// malloc and, in steady state, no page fault (replay of a log of small writes faulted once
/// per 4 KiB page before: a fifth of its time). Slabs are never returned to the system: the
/// pages in use are bounded by the stores' dirty-page bounds (`StoreLimits.dirtyPageBytesMax`
/// plus pages being written back), so the pool's size is the peak of that sum.
final class PagePool: @unchecked Sendable {
    static let shared = PagePool()
    static let slabBytes = 2 << 20

    private let monitor = Monitor()
    private var free: [UnsafeMutableRawPointer] = []
    private(set) var slabCount = 0

    func take() -> UnsafeMutableRawBufferPointer {
        monitor.lock()
        defer { monitor.unlock() }
        if free.isEmpty { addSlab() }
        return UnsafeMutableRawBufferPointer(start: free.removeLast(), count: Page.bytes)
    }

    func give(_ page: UnsafeMutableRawBufferPointer) {
        monitor.lock()
        free.append(page.baseAddress!)
        monitor.unlock()
    }

    /// Lock held.
    private func addSlab() {
        var memory: UnsafeMutableRawPointer? = nil
        let result = posix_memalign(&memory, PagePool.slabBytes, PagePool.slabBytes)
        precondition(result == 0 && memory != nil, "posix_memalign of a \(PagePool.slabBytes)-byte page slab failed: \(result)")
        _ = madvise(memory, PagePool.slabBytes, MADV_HUGEPAGE)       // a hint; refusal is fine
        let count = PagePool.slabBytes / Page.bytes
        free.reserveCapacity(free.count + count)
        for index in stride(from: count - 1, through: 0, by: -1) { free.append(memory! + index * Page.bytes) }
        slabCount += 1
    }
}

/// The in-memory state of one object beyond its dnode (guarded by the object's stripe lock).
final class ObjectState {
    let number: UInt64
    /// Loaded on first use for regular objects.
    var extentMap: ExtentMap?
    /// Chunk index → page.
    var pages: [UInt64: Page] = [:]
    /// Loaded on first use for index and directory objects (guarded by `indexLock` too).
    var index: IndexTree?

    init(number: UInt64) { self.number = number }
    var isClean: Bool { pages.isEmpty && !(extentMap?.isDirty ?? false) && !(index?.isDirty ?? false) }
}

public final class ObjectStore: @unchecked Sendable {
    public let pool: Pool
    public let settings: ObjectStoreSettings
    /// Nil on a read-only pool (set once, by `open`, before the store is shared).
    public internal(set) var log: IntentLog?
    public let dnodes: DnodeCache
    let metadata: StagedMetadataStore
    let indexCache: IndexNodeCache
    /// The dnode table (block number → table block pointer, plus `meta`); under `indexLock`.
    let table: IndexTree
    let stripes: [Monitor]
    let stagingBuffers: StagingBuffers
    /// Every index tree and the shared node cache.
    let indexLock = Monitor()
    /// Object states, dirty set, counters, gate, checkpoint requests.
    let stateLock = Monitor()
    /// One checkpoint at a time.
    let checkpointLock = Monitor()

    /// The next transaction's ID (log records carry it); taken without `stateLock`.
    let transactionIDs = Atomic<UInt64>(1)

    // MARK: State under `stateLock`
    var objects: [UInt64: ObjectState] = [:]
    var dirtyObjects: Set<UInt64> = []
    var nextObject: UInt64 = 1
    /// The checkpoint changes are tagged with (the one the next cut closes).
    var openCheckpoint: UInt64
    var dirtyPageBytes = 0
    var inFlight = 0
    var quiescing = false
    var checkpointRequested = false
    /// Checkpoints asked for that must run even with nothing dirty (to release deferred frees).
    var forcedCheckpoints = 0
    var lastCheckpointNs: UInt64
    var failure: String?
    var isClosed = false
    var stats = ObjectStoreStatistics()
    var checkpointThread: pthread_t?
    /// The held checkpoint reserve (released during a checkpoint's switch, taken again after);
    /// empty when it could not be taken — then transactions that allocate are refused.
    var reserves: [Reservation] = []
    /// The reserve was released for a checkpoint's switch: only that checkpoint takes it again.
    var reserveLentToCheckpoint = false
    /// The bounds in force (from the settings and the pool's size).
    public let limits: StoreLimits

    static let metaKey: [UInt8] = Array("meta".utf8)
    static let metaFormatVersion: UInt32 = 1

    init(pool: Pool, settings: ObjectStoreSettings, log: IntentLog?, table: IndexTree, metadata: StagedMetadataStore,
         indexCache: IndexNodeCache, nextObject: UInt64) {
        self.pool = pool
        self.settings = settings
        self.log = log
        self.table = table
        self.metadata = metadata
        self.indexCache = indexCache
        self.dnodes = DnodeCache(settings: settings.dnodeCache)
        self.stripes = (0..<settings.objectLockStripes).map { _ in Monitor() }
        self.stagingBuffers = StagingBuffers(bytes: settings.recordBytesMax)
        self.nextObject = nextObject
        self.openCheckpoint = pool.uberblock.checkpoint + 1
        self.lastCheckpointNs = Monitor.nowNs()
        self.limits = StoreLimits(settings: settings, capacityBytes: pool.allocator.devices.reduce(0) { $0 + $1.sizeBytes })
    }

    // MARK: Public queries

    public var statistics: ObjectStoreStatistics {
        stateLock.withLock {
            var result = stats
            result.dirtyPageBytes = dirtyPageBytes
            result.objectStates = objects.count
            result.metadataFallbackReads = metadata.fallbackReadCount
            return result
        }
    }

    /// The next object number a create would get.
    public var nextObjectNumber: UInt64 { stateLock.withLock { nextObject } }

    public var isReadOnly: Bool { log == nil }

    // MARK: Helpers shared by the operations

    func stripe(of object: UInt64) -> Int { Int(truncatingIfNeeded: (object &* 0x9E37_79B9_7F4A_7C15) >> 40) & (stripes.count - 1) }

    func checkUsable() throws(ObjectStoreError) {
        let (failure, closed) = stateLock.withLock { (self.failure, isClosed) }
        if let failure { throw .failed(failure) }
        if closed { throw .failed("the object store is closed") }
    }

    /// Records a failure after which memory and the log no longer agree; every later transaction
    /// and checkpoint is refused.
    func fail(_ reason: String) {
        stateLock.withLock {
            if failure == nil { failure = reason }
            stateLock.broadcast()
        }
    }

    /// The object's state (created on first use). Caller holds the object's stripe lock.
    func state(of object: UInt64) -> ObjectState {
        stateLock.withLock {
            if let state = objects[object] { return state }
            let state = ObjectState(number: object)
            objects[object] = state
            return state
        }
    }

    func markDirty(_ object: UInt64) {
        stateLock.withLock { _ = dirtyObjects.insert(object) }
    }

    /// The dnode of `object`, from the cache or its table block; nil when it does not exist.
    func loadDnode(_ object: UInt64) throws(ObjectStoreError) -> Dnode? {
        switch dnodes.lookup(object) {
        case .present(let dnode): return dnode
        case .destroyed: return nil
        case .absent: break
        }
        guard object > 0 else { return nil }
        let blockIndex = DnodeTableBlock.blockIndex(of: object)
        indexLock.lock()
        defer { indexLock.unlock() }
        let slots = try readTableBlock(blockIndex)
        var found: Dnode? = nil
        for case let dnode? in slots {
            if case .present(let cached) = dnodes.insertClean(dnode), cached.objectNumber == object { found = cached }
        }
        if found == nil, case .present(let cached) = dnodes.lookup(object) { found = cached }
        return found
    }

    /// The 16 slots of a table block as of the in-memory table (all nil when absent). `indexLock` held.
    func readTableBlock(_ blockIndex: UInt64) throws(ObjectStoreError) -> [Dnode?] {
        let value: [UInt8]?
        do { value = try table.lookup(Self.tableKey(blockIndex)) } catch { throw .index(object: 0, error) }
        guard let value else { return Array(repeating: nil, count: DnodeTableBlock.dnodesPerBlock) }
        let pointer = try Self.decodePointer(value, what: "dnode table block \(blockIndex)")
        guard pointer.lengthBytes == UInt64(DnodeTableBlock.blockBytes) else {
            throw .corrupt("dnode table block \(blockIndex): pointer of \(pointer.lengthBytes) bytes, not \(DnodeTableBlock.blockBytes)")
        }
        let buffer = allocateAlignedBuffer(byteCount: DnodeTableBlock.blockBytes)
        defer { buffer.deallocate() }
        do { try metadata.read(pointer, into: buffer) } catch { throw .metadata(error) }
        do { return try DnodeTableBlock.decode(UnsafeRawBufferPointer(buffer), blockIndex: blockIndex) } catch { throw .dnode(error) }
    }

    static func tableKey(_ blockIndex: UInt64) -> [UInt8] { withUnsafeBytes(of: blockIndex.bigEndian) { Array($0) } }

    static func decodePointer(_ value: [UInt8], what: String) throws(ObjectStoreError) -> BlockPointer {
        guard value.count == BlockPointer.encodedByteCount else { throw .corrupt("\(what): pointer of \(value.count) bytes") }
        let pointer = value.withUnsafeBytes { BlockPointer.decode(from: $0, at: 0) }
        if let problem = pointer.formatProblem { throw .metadata(.unreadablePointer(pointer: pointer, problem: "\(what): \(problem)")) }
        guard !pointer.isNull, pointer.lengthBytes > 0 else { throw .corrupt("\(what): null pointer") }
        return pointer
    }

    static func encodePointer(_ pointer: BlockPointer) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: BlockPointer.encodedByteCount)
        bytes.withUnsafeMutableBytes { pointer.encode(into: $0, at: 0) }
        return bytes
    }

    /// The extent map of a regular object (loaded on first use). Stripe lock held.
    func extentMap(of state: ObjectState, dnode: Dnode) throws(ObjectStoreError) -> ExtentMap {
        if let map = state.extentMap { return map }
        do {
            let map = try ExtentMap.load(object: state.number, root: dnode.extentMap, store: metadata)
            state.extentMap = map
            return map
        } catch {
            throw .extentMap(error)
        }
    }

    /// The index tree of an index or directory object (loaded on first use). Stripe lock and
    /// `indexLock` held.
    func indexTree(of state: ObjectState, dnode: Dnode) throws(ObjectStoreError) -> IndexTree {
        if let tree = state.index { return tree }
        let root: BlockPointer
        if case .tree(let pointer) = dnode.extentMap { root = pointer } else { root = .null }
        do {
            let tree = try IndexTree(root: root, store: metadata, name: "object \(state.number)", cache: indexCache)
            state.index = tree
            return tree
        } catch {
            throw .index(object: state.number, error)
        }
    }
}

/// `withUnsafeBytes` for bodies with typed throws (the standard library's rethrows untyped).
@inline(__always)
func withBytes<Result>(of array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(ObjectStoreError) -> Result) throws(ObjectStoreError) -> Result {
    let outcome: Swift.Result<Result, ObjectStoreError> = array.withUnsafeBytes { raw in
        do throws(ObjectStoreError) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try outcome.get()
}

@inline(__always)
func withMutableBytes<Result>(of array: inout [UInt8], _ body: (UnsafeMutableRawBufferPointer) throws(ObjectStoreError) -> Result) throws(ObjectStoreError) -> Result {
    let outcome: Swift.Result<Result, ObjectStoreError> = array.withUnsafeMutableBytes { raw in
        do throws(ObjectStoreError) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try outcome.get()
}
