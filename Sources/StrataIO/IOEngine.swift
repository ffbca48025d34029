// IOEngine — the asynchronous block I/O interface every layer above StrataIO uses.
//
// Model. An engine owns one kernel queue (an io_uring, or a libaio context) and a fixed table
// of request slots. `submit` takes a request (and ownership of its buffer) into a free slot
// and queues it; nothing blocks. `reap(minimum:)` pushes queued requests to the kernel, waits
// until at least `minimum` requests have completed, and hands each completion back with its
// buffer. A request's slot is busy from `submit` until its completion is reaped, so the slot
// table is the bound on everything outstanding: `queueDepth` requests in the kernel at most,
// plus up to `backlogMax` queued behind them or completed-but-unreaped. Beyond that, `submit`
// throws `backlogFull` and the caller must reap.
//
// Threading model: one engine per thread. An engine, its ring and its buffer pool are confined
// to the thread that made them (io_uring SINGLE_ISSUER + DEFER_TASKRUN, as fio does): no lock,
// no atomic and no cross-thread wakeup per I/O. Sixteen caller threads means sixteen engines
// over the same `BlockDevice`s; the kernel's block layer is the only shared structure. The
// alternative (one owner thread per ring fed through a lock-free queue) costs a hand-off and a
// wakeup per request on each side; perf/ measures what per-thread rings cost instead (16
// threads at QD2 against one thread at QD32, both against fio).
//
// Semantics every engine implements identically (the conformance suite runs over all):
//  * reads and writes transfer exactly the requested bytes: short transfers are resubmitted for
//    the remainder, EINTR/EAGAIN are retried, a transfer that makes no progress is EIO;
//  * `writeFUA` is durable at completion (RWF_DSYNC: FUA, or write + flush on devices without);
//  * `flush` makes durable every write that *completed* before the flush was submitted;
//  * `linkNext` orders the next submitted request after this one: the successor is dispatched
//    only when this one completed successfully, and completes with ECANCELED otherwise;
//  * reads are dispatched before queued writes, but writes keep a reserved share of the queue
//    depth so they never starve (the ZFS vdev-queue table: per class min/max in flight).

#if canImport(Glibc)
import Glibc
#endif
import CShims

public enum IOOperation: UInt8, Sendable, CustomStringConvertible {
    case read = 0
    case write = 1
    /// A write that is durable when it completes.
    case writeFUA = 2
    /// Durability barrier for completed writes (fdatasync / cache flush).
    case flush = 3

    @inlinable public var isWrite: Bool { self == .write || self == .writeFUA }
    @inlinable public var usesBuffer: Bool { self != .flush }
    /// Scheduling class: reads, or everything that changes the device.
    @inlinable public var isReadClass: Bool { self == .read }

    public var description: String {
        switch self {
        case .read: return "read"
        case .write: return "write"
        case .writeFUA: return "write (FUA)"
        case .flush: return "flush"
        }
    }
}

/// The outcome of one request, as handed back by `reap`.
public struct IOCompletion: Sendable {
    public var tag: UInt64
    public var operation: IOOperation
    public var deviceIndex: Int
    public var offset: UInt64
    public var length: Int
    /// 0 on success, else a positive errno (ECANCELED when a linked predecessor failed).
    public var errno: Int32

    @inlinable public var succeeded: Bool { errno == 0 }

    @inlinable
    public init(tag: UInt64, operation: IOOperation, deviceIndex: Int, offset: UInt64, length: Int, errno: Int32) {
        self.tag = tag
        self.operation = operation
        self.deviceIndex = deviceIndex
        self.offset = offset
        self.length = length
        self.errno = errno
    }
}

public enum IOEngineKind: String, Sendable, CaseIterable {
    case ioUring = "io_uring"
    case libaio
}

public enum IOEngineChoice: String, Sendable, CaseIterable {
    /// io_uring unless the kernel or a seccomp filter refuses it; then libaio (logged once).
    case automatic
    case ioUring = "io_uring"
    case libaio
}

/// Settings of one engine. Every bound is named here with its reason.
public struct IOEngineConfiguration: Sendable {
    /// Requests in the kernel at once (ring size). 32 matches the QD of the perf workloads and
    /// of a typical NVMe submission queue share; raise it for deep random-read workloads.
    public var queueDepth: Int = 32
    public static let queueDepthMax = 4096
    /// Requests queued behind the kernel or completed but not yet reaped. Bounds the slot table
    /// (and so the memory and the latency of a backlog).
    public var backlogMax: Int = 1024
    public static let backlogMaxLimit = 65536
    /// Read/write priority table (ZFS vdev queue): the dispatcher first fills each class up to
    /// its minimum (reads first), then up to its maximum (reads first). The write minimum is
    /// the share writes always keep under a read flood: they never starve.
    public var readInFlightMin: Int = 1
    public var readInFlightMax: Int = 32
    public var writeInFlightMin: Int = 4
    public var writeInFlightMax: Int = 32
    /// Requests prepared before they are pushed to the kernel from `submit` (fio's
    /// iodepth_batch_submit, default 1). 1 starts every request at once: on the virtio disk
    /// here, waiting to batch cost 10–25% of 4 KiB QD32 throughput (perf/, docs/perf.md).
    /// Larger values trade latency for fewer system calls. `reap` always pushes what is queued.
    public var submitBatch: Int = 1
    /// Register the buffer pool with the ring (falls back, with one log line, on ENOMEM).
    public var registerBuffers: Bool = true
    /// Use SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN (with fio's fallback order on EINVAL).
    public var ringTaskrunFlags: Bool = true
    /// Test hook: faults injected by the engine core (short transfers, EIO, EAGAIN).
    public var faults: IOFaultInjection? = nil

    public init(queueDepth: Int = 32) {
        self.queueDepth = queueDepth
        readInFlightMax = queueDepth
        writeInFlightMax = queueDepth
        writeInFlightMin = max(1, queueDepth / 8)
        readInFlightMin = 1
    }

    public func validate() throws(IOError) {
        func check(_ name: String, _ value: Int, _ range: ClosedRange<Int>) throws(IOError) {
            guard range.contains(value) else {
                throw .invalidConfiguration(name: name, value: "\(value)", reason: "must be in \(range.lowerBound)...\(range.upperBound)")
            }
        }
        try check("queueDepth", queueDepth, 1...IOEngineConfiguration.queueDepthMax)
        try check("backlogMax", backlogMax, 0...IOEngineConfiguration.backlogMaxLimit)
        try check("readInFlightMax", readInFlightMax, 1...queueDepth)
        try check("writeInFlightMax", writeInFlightMax, 1...queueDepth)
        try check("readInFlightMin", readInFlightMin, 0...readInFlightMax)
        try check("writeInFlightMin", writeInFlightMin, 1...writeInFlightMax)
        try check("submitBatch", submitBatch, 1...queueDepth)
    }
}

/// Faults the engine core injects after the kernel has done the real I/O (tests only).
public struct IOFaultInjection: Sendable {
    /// Each read/write is sent to the kernel in pieces of at most this many bytes, so the
    /// engine sees genuine short completions and must resubmit the remainder.
    public var shortTransferBytesMax: Int? = nil
    /// Every Nth read/write completion is reported as -EAGAIN (and must be retried).
    public var eagainEvery: Int? = nil
    /// Requests overlapping these ranges of this device complete with the errno (latent errors).
    public var failingRanges: [FailingRange] = []

    public struct FailingRange: Sendable {
        public var deviceIndex: Int
        public var range: Range<UInt64>
        public var operation: IOOperation?
        public var errno: Int32
        public init(deviceIndex: Int, range: Range<UInt64>, operation: IOOperation? = nil, errno: Int32 = EIO) {
            self.deviceIndex = deviceIndex
            self.range = range
            self.operation = operation
            self.errno = errno
        }
    }

    public init(shortTransferBytesMax: Int? = nil, eagainEvery: Int? = nil, failingRanges: [FailingRange] = []) {
        self.shortTransferBytesMax = shortTransferBytesMax
        self.eagainEvery = eagainEvery
        self.failingRanges = failingRanges
    }
}

/// Counters an engine keeps (cheap integer increments on the hot path).
public struct IOEngineStatistics: Sendable {
    public var submitted: UInt64 = 0
    public var completed: UInt64 = 0
    public var kernelSubmissions: UInt64 = 0
    public var submitSyscalls: UInt64 = 0
    public var shortTransfersResubmitted: UInt64 = 0
    public var retriesAfterEINTRorEAGAIN: UInt64 = 0
    public var submitBusyRetries: UInt64 = 0
    public init() {}
}

public protocol IOEngine: AnyObject {
    var kind: IOEngineKind { get }
    var devices: [BlockDevice] { get }
    var configuration: IOEngineConfiguration { get }
    /// Whether `pool`'s buffers go through the fixed-buffer path of this engine.
    func usesRegisteredBuffers(of pool: AlignedBufferPool) -> Bool
    /// Registers the pool's slabs with the kernel when the engine supports it. Returns false
    /// (after one log line) when the kernel refused, e.g. ENOMEM from RLIMIT_MEMLOCK.
    @discardableResult func register(_ pool: AlignedBufferPool) -> Bool
    /// Requests submitted and not yet reaped.
    var outstandingCount: Int { get }
    var statistics: IOEngineStatistics { get }

    /// Queues one request. `buffer` must be given for reads and writes and is owned by the
    /// engine until it comes back through `reap`. `linkNext` orders the next submitted request
    /// after this one. Throws (and drops the buffer back to its pool) for a misaligned or
    /// out-of-range request, a read-only device or a full backlog.
    func submit(_ operation: IOOperation, deviceIndex: Int, offset: UInt64, buffer: consuming IOBuffer?,
                tag: UInt64, linkNext: Bool) throws(IOError)
    /// Sends queued requests to the kernel without waiting.
    func submitQueued() throws(IOError)
    /// Waits until at least `minimum` requests (clamped to what is outstanding) have completed,
    /// delivers every completion available, and returns how many were delivered.
    @discardableResult
    func reap(minimum: Int, _ body: (IOCompletion, consuming IOBuffer?) -> Void) throws(IOError) -> Int
}

extension IOEngine {
    @inlinable
    public func submit(_ operation: IOOperation, deviceIndex: Int, offset: UInt64, buffer: consuming IOBuffer?,
                       tag: UInt64) throws(IOError) {
        try submit(operation, deviceIndex: deviceIndex, offset: offset, buffer: buffer, tag: tag, linkNext: false)
    }
}
