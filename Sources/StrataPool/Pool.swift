// Pool — a named set of devices with roles, opened from its labels, committed by uberblocks.
//
// Theory. A pool is created once (`Pool.create`), then imported (`Pool.importPool`) every time
// a process wants it, and exported when that process is done with it. Everything the pool knows
// about itself is on its devices:
//
//   - the configuration (name, UUID, members and their roles and sizes, policy), in two
//     generation-numbered slots of both labels of every device (PoolConfiguration.swift);
//   - the uberblock ring in both labels of every device (Uberblock.swift), whose newest valid
//     entry names the configuration generation in force, each device's space-map copy, and the
//     roots of the layers above;
//   - the space maps, two copies per device (DeviceLayout.swift, Pool+SpaceMaps.swift).
//
// Commit protocol (`commitCheckpoint`), the only way anything becomes part of the pool's state:
//   1. the allocator closes checkpoint N for frees;
//   2. each device's changed space-map blocks are encoded (a snapshot) and written to the copy
//      that checkpoint N-1 did not name, with that copy's checksum table;
//   3. every device is flushed: all that uberblock N will point to is now durable;
//   4. uberblock N is written into slot N % 32 of both labels of every device, and each device
//      is flushed (steps 3 and 4 run on all devices side by side: DeviceFanOut.swift);
//   5. the allocator learns that N is durable and releases the frees of N-1 — with
//      `discardsFreedSpace`, after discarding them while they are still unallocatable. They are
//      referenced only by checkpoints older than the fallback N-1, so a discard destroys nothing
//      an import could need, exactly as reusing the space would not. After a two-phase commit
//      (`commitPrepared`) the discards wait for `finishPendingDiscards` (or the next cut).
// A crash before step 4 completes on at least one device leaves uberblock N-1 the newest valid
// one, and everything it names is intact (its space-map copy was not written, its configuration
// slot was not overwritten). A crash during step 4 may tear N on some devices; torn copies fail
// their checksum and are skipped; any intact copy of N is as good as all of them.
//
// Concurrency: the control-plane methods (commit, setPolicy, export, status) serialize on one
// lock; the allocator has its own lock and is safe to use from any thread between commits.

import StrataIO
import Synchronization

/// Counters of the discards of freed space (`Pool.discardsFreedSpace`).
public struct DiscardStatistics: Sendable, Equatable {
    /// Ranges discarded (adjacent frees merged) and their bytes.
    public var ranges = 0
    public var bytes: UInt64 = 0
    /// Discards that failed for another reason than "not supported" (the space is free all the
    /// same: a discard is advice to the device, never needed for correctness).
    public var failures = 0
    /// Freed ranges not discarded: shorter than `DiscardLimits.bytesMin`, or past a commit's
    /// `rangesPerCommitMax` (released all the same).
    public var skippedRanges = 0
    /// Device indices that do not support discard (asked once, then skipped).
    public var unsupportedDevices: [Int] = []

    public init() {}
}

/// Bounds of the discards of freed space (`Pool.discardLimits`).
public struct DiscardLimits: Sendable, Equatable {
    /// Freed ranges shorter than this are not discarded. Default 4 KiB (every range): on zram
    /// each 4 KiB discarded is 4 KiB of memory back, and scattered 4 KiB frees are what small
    /// overwrites leave. ZFS's trim skips extents under 32 KiB (`zfs_trim_extent_bytes_min`):
    /// raise it on SSDs where small TRIMs cost more than they give.
    public var bytesMin: UInt64 = 4096
    /// The most ranges one commit discards; the rest are released without a discard. Bounds
    /// how long a commit holds the pool's lock for discards (and, in the object store, how long
    /// the log waits for the checkpoint to finish): 64 Ki ranges, about 0.1 s at ~1.5 µs per
    /// BLKDISCARD on zram; a 4 KiB-overwrite checkpoint here frees ~40–70k.
    public var rangesPerCommitMax = 65_536

    public init() {}

    public var validationProblems: [String] {
        var problems: [String] = []
        if bytesMin == 0 || bytesMin % 4096 != 0 { problems.append("discard bytesMin \(bytesMin) must be a positive multiple of 4096") }
        if rangesPerCommitMax < 1 { problems.append("discard rangesPerCommitMax \(rangesPerCommitMax) must be at least 1") }
        return problems
    }
}

public final class Pool: Sendable {
    /// The devices, indexed like `configuration.members`.
    public let devices: [any BlockStorage]
    public let isReadOnly: Bool
    public let allocator: PoolAllocator
    let state: Mutex<PoolState>

    struct PoolState: Sendable {
        var configuration: PoolConfiguration
        var uberblock: Uberblock
        var spaceMaps: [SpaceMapCopies]
        /// Per device: label slots found damaged at import (and whether they were repaired).
        var labelDamage: [LabelDamage]
        var importReport = ImportReport(wasExported: false, skipped: [])
        var isClosed = false
        /// Set when a commit failed part-way; every later commit is refused.
        var failure: String? = nil
        /// The checkpoint `prepareCheckpoint` cut and `commitPrepared` has not committed yet.
        var preparedCheckpoint: UInt64? = nil
        var discard = DiscardState()
    }

    /// Discards of freed space (Pool+Commit.swift, step 5).
    struct DiscardState: Sendable {
        var enabled = false
        var limits = DiscardLimits()
        /// A two-phase commit's checkpoint whose released frees wait for `finishPendingDiscards`
        /// (the allocator holds them unallocatable meanwhile).
        var pendingCheckpoint: UInt64?
        var statistics = DiscardStatistics()
        /// Devices that refused a discard as unsupported: not asked again while the pool is open.
        var unsupported: Set<Int> = []
    }

    struct LabelDamage: Sendable {
        var notes: [String]
        var slots: [DeviceLabels.DamagedSlot]
        var repaired: Bool
        static let none = LabelDamage(notes: [], slots: [], repaired: false)
    }

    init(devices: [any BlockStorage], isReadOnly: Bool, allocator: PoolAllocator, state: PoolState) {
        precondition(devices.count == state.configuration.members.count, "\(devices.count) devices for \(state.configuration.members.count) members")
        precondition(state.spaceMaps.count == devices.count)
        self.devices = devices
        self.isReadOnly = isReadOnly
        self.allocator = allocator
        self.state = Mutex(state)
    }

    public var configuration: PoolConfiguration { state.withLock { $0.configuration } }
    public var name: String { configuration.name }
    public var uuid: PoolUUID { configuration.uuid }
    /// The newest committed uberblock.
    public var uberblock: Uberblock { state.withLock { $0.uberblock } }

    /// Whether space that checkpoints free is discarded before it can be reused: BLKDISCARD on
    /// block devices, a punched hole in files (Pool+Commit.swift, step 5). Off by default, as
    /// ZFS's autotrim and BlueStore's bdev_enable_discard: a discard costs a system call per
    /// freed range on the checkpoint thread, and some SSDs are slow at it. Turn it on for thin or
    /// memory-backed devices (zram keeps the memory of every sector ever written until it is
    /// discarded or rewritten) and SSDs that benefit from TRIM. In memory only, for this open
    /// pool (`ObjectStoreSettings.discardFreedSpace` sets it at open); ignored on a read-only pool.
    /// The frees of the last checkpoint before an export or a crash are never discarded: the
    /// next import makes them free at once. Bounds: `discardLimits`.
    public var discardsFreedSpace: Bool {
        get { state.withLock { $0.discard.enabled } }
        set { state.withLock { $0.discard.enabled = newValue } }
    }

    /// The bounds of discards (see `DiscardLimits`). Traps on invalid limits.
    public var discardLimits: DiscardLimits {
        get { state.withLock { $0.discard.limits } }
        set {
            precondition(newValue.validationProblems.isEmpty, "invalid discard limits: \(newValue.validationProblems)")
            state.withLock { $0.discard.limits = newValue }
        }
    }

    /// What the discards of freed space did since import.
    public var discardStatistics: DiscardStatistics {
        state.withLock { state in
            var statistics = state.discard.statistics
            statistics.unsupportedDevices = state.discard.unsupported.sorted()
            return statistics
        }
    }

    /// Planted bug for the crash tests' failure proof: every extent is discarded as it is freed,
    /// before the transaction or checkpoint that frees it is durable, so a crash can leave a
    /// durable block zeroed. Never call outside tests.
    @_spi(CrashTesting) public func discardAtFreeForTesting() {
        let devices = self.devices
        allocator.observeFreesForTesting { extent in
            try? devices[extent.deviceIndex].discard(offset: extent.offsetBytes, length: extent.lengthBytes)
        }
    }

    static func nowNs() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// A checkpoint whose allocator cut is taken (`Pool.prepareCheckpoint`) and whose uberblock is
/// not written yet (`Pool.commitPrepared`).
public struct PreparedCheckpoint: Sendable {
    public let checkpoint: UInt64
    let cut: CheckpointCut
    let targets: [Int]
}

#if canImport(Glibc)
import Glibc
#endif
