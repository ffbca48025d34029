// LogSettings — the bounds of the intent log, each a named setting with its default and reason.
//
// Every bound of the log lives here (STYLE.md: limits end in `Max` and live together). They are
// in-memory settings of one open log, not on-disk format: a log written with one segment size is
// replayed with the segment size its head and blocks record, whatever the settings say.

import StrataIO

/// How the log's bounds and batching behave. Validate with `validationProblems()`.
public struct LogSettings: Sendable, Equatable {
    /// How durable a batch is made.
    public enum Durability: Sendable, Equatable {
        /// One FUA write per batch (RWF_DSYNC on files and devices without FUA): one I/O.
        case fua
        /// A plain write, then a flush of the device: for devices whose FUA is slow or absent.
        case writeThenFlush
    }

    /// Who writes batches.
    public enum Writer: Sendable, Equatable {
        /// A dedicated writer thread: a batch starts as soon as the previous one is durable and
        /// something was appended (self-clocking group commit: the next batch forms while the
        /// current one flushes). Appends and callbacks never wait for a caller to sync.
        case dedicatedThread
        /// No thread: `sync()` and `commitAsync()` write the pending batch on the calling thread
        /// (one caller leads, the others wait for its batch). Deterministic — the crash tests use
        /// it so that a seed always gives the same recording — and fine for single-threaded tools.
        case callerLeads
    }

    /// Size of one log segment, the unit the log allocates from the pool's `.log` class, chains
    /// and releases. Default 32 MiB: a chain hop (and a preallocation) every 32 MiB is rare
    /// (32 per GiB), replay reads long sequential runs, a checkpoint releases log space in steps
    /// small enough that at most one segment of already-covered records is re-read at replay
    /// (≤ 32 MiB, ~40 ms), and the default `logBytesMax` is 96 segments — what a head can list at
    /// the pool's maximum of four log copies, so the default is valid at every copy count.
    /// A multiple of 1 MiB (of 64 KiB up to 1 MiB: small logs for tests — the allocator places
    /// extents of up to 1 MiB inside one 1 MiB region). `ObjectStore.open` shrinks it on a pool
    /// too small for four segments in a quarter of its capacity.
    public var segmentBytes: UInt64 = 32 << 20
    /// The most log space the log may own (segments, including the preallocated next one). When
    /// the writer needs a segment past it, it stops, requests a checkpoint, and appends wait
    /// (bounded by `appendWaitNsMax`). `ObjectStore.open` caps it at a quarter of the pool.
    ///
    /// Default 3 GiB, sized so that under small overwrites the dirty-data bound, not the log,
    /// triggers checkpoints: a checkpoint is asked for at `checkpointRequestPercent` (1.5 GiB),
    /// and the longer the log runs between checkpoints, the more overwrites of the same page one
    /// write home covers. Durable 4 KiB overwrites over 400 MiB of objects on zram
    /// (`strata-perf dmu`): 1 GiB wrote 0.56–0.61 pages home per overwrite (checkpoints asked for
    /// by the log), 3 GiB 0.27–0.34 (asked for by the dirty bound), +13–19 % overwrites per
    /// second. The cost is replay time after a crash with a full log: a full 3 GiB log replayed
    /// in 2.1 s on zram here (1 GiB: 1.1–1.2 s; the issue-6 target is ≤ 2 s per GiB); with
    /// checkpoints asked for at half, a crash under load usually finds 1.5–2 GiB. Lower it where
    /// import time matters more than small-write throughput.
    public var logBytesMax: UInt64 = 3 << 30
    /// The largest batch (one log block, one write). Default 1 MiB: DESIGN.md moves data in
    /// records of up to 1 MiB; one such write reaches a device's sequential bandwidth, and it
    /// bounds a batch's write time (~1 ms at 1 GB/s), hence the latency of the batch behind it.
    /// Also bounds a record: payload ≤ batchBytesMax − 160 (block and record headers).
    public var batchBytesMax: Int = 1 << 20
    /// Ask for a checkpoint when the log owns this share of `logBytesMax`. Default 50: the
    /// checkpoint then runs while the other half of the log absorbs new records, so foreground
    /// appends stall only when records arrive faster than checkpoints retire them.
    public var checkpointRequestPercent: Int = 50
    /// The longest an append waits for room (a full batch buffer behind a slow device, or a full
    /// log waiting for a checkpoint) before it throws. Default 10 s: longer than a checkpoint of a
    /// healthy pool, short enough that a stuck pool surfaces as an error rather than a hang.
    public var appendWaitNsMax: UInt64 = 10_000_000_000
    /// How long the dedicated writer lets a batch gather records before writing it when nobody
    /// asked (`sync`, `commitAsync`) and it is less than half full. Default 0: write at once —
    /// the batch forming behind an in-flight flush is the group commit. Raise it only to trade
    /// latency for larger batches on devices whose flushes are very expensive.
    public var batchDelayNs: UInt64 = 0
    public var durability: Durability = .fua
    public var writer: Writer = .dedicatedThread
    /// Nice value of the completer thread (dedicated-writer mode), which runs commit callbacks.
    /// Default −5: a callback typically wakes the thread that committed; at equal priority the
    /// woken thread preempts the completer after each callback (25k preemptions in 3 s of 4 KiB
    /// overwrites), so committers woke to one finished transaction each and slept again. Ahead of
    /// them, the completer runs a batch's callbacks through first: +7–16 % durable 4 KiB
    /// overwrites and p50 commit latency 224 → 191 µs on zram, 16 threads (`strata-perf dmu`).
    /// Lowering a nice value needs CAP_SYS_NICE (root usually has it; containers often drop it):
    /// without it the thread keeps the opener's value and the first log opened says so. A thread
    /// created inside a callback inherits this value (Linux threads inherit their creator's nice):
    /// hand work to threads that exist instead. 0 leaves the priority as inherited. −20…19.
    public var completerNice: Int32 = -5
    /// Nice value of the writer thread. Default 0 (left as inherited from the thread that opened
    /// the log): a writer ahead of the appenders writes smaller batches (−5: 23 → 20 records per
    /// batch, −20: 4 records, and fewer overwrites per second). −20…19.
    public var writerNice: Int32 = 0
    /// CPUs the writer thread may run on; empty (the default): wherever the scheduler puts it.
    /// See `ObjectStoreSettings.placeThreads` and docs/object-store.md, "Thread placement".
    public var writerCPUs: [Int] = []
    /// CPUs the completer thread (commit callbacks) may run on; empty (the default): anywhere.
    public var completerCPUs: [Int] = []
    /// Planted bug for the crash tests' failure proof: callbacks fire after the batch is written
    /// but before it is made durable. Never set outside tests.
    @_spi(LogTesting) public var firesCallbacksBeforeDurable = false

    public init() {}

    /// The largest payload one record can carry with these settings.
    public var payloadBytesMax: Int { batchBytesMax - LogBlock.headerBytes - LogBlock.recordHeaderBytes }

    /// Segments the log may own: `logBytesMax / segmentBytes`.
    public var segmentCountMax: Int { Int(logBytesMax / segmentBytes) }

    /// Everything wrong with these settings (empty when valid), for `copies` log copies.
    public func validationProblems(copies: Int = 1) -> [String] {
        var problems: [String] = []
        if !(-20...19).contains(completerNice) { problems.append("completerNice \(completerNice) outside -20...19") }
        if !(-20...19).contains(writerNice) { problems.append("writerNice \(writerNice) outside -20...19") }
        let segmentAligned = segmentBytes <= 1 << 20 ? segmentBytes % (64 << 10) == 0 : segmentBytes % (1 << 20) == 0
        if segmentBytes == 0 || !segmentAligned || segmentBytes > 1 << 30 {
            problems.append("segmentBytes \(segmentBytes) must be a multiple of 64 KiB up to 1 MiB, or of 1 MiB up to 1 GiB")
        }
        if batchBytesMax < 2 * LogBlock.unitBytes || batchBytesMax % LogBlock.unitBytes != 0 || UInt64(batchBytesMax) > segmentBytes {
            problems.append("batchBytesMax \(batchBytesMax) must be a multiple of 4096, at least 8192 and at most segmentBytes \(segmentBytes)")
        }
        let headLimit = LogHead.segmentCountMax(copies: min(max(1, copies), LogBlock.nextSegmentCopiesMax))
        if segmentBytes > 0 && (segmentCountMax < 3 || segmentCountMax > headLimit) {
            problems.append("logBytesMax \(logBytesMax) / segmentBytes \(segmentBytes) = \(segmentCountMax) segments; must be 3...\(headLimit) (the log head lists them)")
        }
        if !(1...100).contains(checkpointRequestPercent) {
            problems.append("checkpointRequestPercent \(checkpointRequestPercent) must be 1...100")
        }
        problems += ThreadSetup.cpuListProblems(writerCPUs, "writerCPUs") + ThreadSetup.cpuListProblems(completerCPUs, "completerCPUs")
        return problems
    }
}
