// Pool commits: checkpoints (space maps, flush, uberblock), policy changes, export.
//
// See Pool.swift for the commit protocol and why a crash at any point leaves a valid root.
// A policy change adds one step before it: the new configuration generation g+1 is written into
// slot (g+1) % 2 of both labels of every device — never the slot of g, which the current root
// names — and the uberblock that follows names g+1. Export is a checkpoint whose uberblock says
// "exported"; the pool object is closed afterwards.

import StrataIO

#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// Commits a checkpoint: changed space maps, a flush of every device, then a new uberblock
    /// (written, then flushed). `roots` replaces the root pointers of the layers above (nil keeps them). Returns the
    /// committed checkpoint number. Everything the roots point to must already be written; this
    /// flushes before the uberblock.
    @discardableResult
    public func commitCheckpoint(roots: [BlockPointer]? = nil) throws(PoolError) -> UInt64 {
        try state.withLock { state throws(PoolError) in
            try commitLocked(&state, newState: .active, roots: roots)
            return state.uberblock.checkpoint
        }
    }

    /// Phase 1 of a two-phase commit (the DMU's checkpoint): closes the allocator's checkpoint N
    /// now — allocations and frees from here on belong to N+1 — and encodes N's space maps as of
    /// this instant. Cheap (memory only), so the caller can cut while its own state is frozen and
    /// do the I/O after unfreezing. Until `commitPrepared` (or `abandonPrepared`) every other
    /// commit (`commitCheckpoint`, `setPolicy`, `export`, another prepare) throws.
    public func prepareCheckpoint() throws(PoolError) -> PreparedCheckpoint {
        try state.withLock { state throws(PoolError) in
            try checkCommittable(state)
            if let failure = state.failure {
                throw .invalidConfiguration("pool '\(state.configuration.name)' is suspended after a failed commit: \(failure)")
            }
            let checkpoint = state.uberblock.checkpoint + 1
            guard checkpoint <= Uberblock.checkpointMax else {
                throw .invalidConfiguration("pool '\(state.configuration.name)': checkpoint limit \(Uberblock.checkpointMax) reached")
            }
            finishPendingDiscardsLocked(&state)
            let (cut, targets) = cutSpaceMaps(checkpoint: checkpoint, copies: &state.spaceMaps)
            state.preparedCheckpoint = checkpoint
            return PreparedCheckpoint(checkpoint: checkpoint, cut: cut, targets: targets)
        }
    }

    /// Phase 2: writes the space maps `prepareCheckpoint` encoded, flushes every device, writes
    /// uberblock N naming `roots` (nil keeps the current ones), flushes again, and releases the
    /// frees of N-1. A failure suspends the pool (re-import to recover).
    @discardableResult
    public func commitPrepared(_ prepared: PreparedCheckpoint, roots: [BlockPointer]? = nil) throws(PoolError) -> UInt64 {
        try state.withLock { state throws(PoolError) in
            precondition(state.preparedCheckpoint == prepared.checkpoint,
                         "commitPrepared(\(prepared.checkpoint)) but the prepared checkpoint is \(state.preparedCheckpoint.map(String.init) ?? "none")")
            state.preparedCheckpoint = nil
            do throws(PoolError) {
                try checkWritable(state)
                if let failure = state.failure {
                    throw .invalidConfiguration("pool '\(state.configuration.name)' is suspended after a failed commit: \(failure)")
                }
                let spaceMapRoots = try writeSpaceMaps(cut: prepared.cut, targets: prepared.targets, copies: &state.spaceMaps)
                try commitUberblock(&state, checkpoint: prepared.checkpoint, newState: .active, roots: roots, spaceMapRoots: spaceMapRoots,
                                    defersDiscards: true)
            } catch {
                if state.failure == nil { state.failure = error.description }
                throw error
            }
            return prepared.checkpoint
        }
    }

    /// Gives up a prepared checkpoint (the caller could not write what it was to name). The
    /// allocator already closed it, so the in-memory state no longer matches any committed root:
    /// the pool is suspended until re-imported.
    public func abandonPrepared(_ prepared: PreparedCheckpoint, reason: String) {
        state.withLock { state in
            precondition(state.preparedCheckpoint == prepared.checkpoint, "abandonPrepared(\(prepared.checkpoint)) not prepared")
            state.preparedCheckpoint = nil
            if state.failure == nil { state.failure = "checkpoint \(prepared.checkpoint) abandoned: \(reason)" }
        }
    }

    /// Suspends the pool: the layer above changed the allocator's state (allocations, frees) for
    /// a checkpoint it then could not cut, so the in-memory state no longer matches anything it
    /// will commit. Every later commit (checkpoints, export, policy changes) is refused until a
    /// re-import, which starts from the last committed root.
    public func suspend(reason: String) {
        state.withLock { state in
            if state.failure == nil { state.failure = reason }
        }
    }

    /// True after a failed or abandoned commit: every later commit is refused until a re-import.
    public var isSuspended: Bool { state.withLock { $0.failure != nil } }

    /// Changes the policy: a new configuration generation in every label, then a checkpoint that
    /// names it. The allocator follows the new policy from the moment this returns.
    public func setPolicy(_ policy: PoolPolicy) throws(PoolError) {
        try validatePolicy(policy)
        try state.withLock { state throws(PoolError) in
            try checkCommittable(state)
            var next = state.configuration
            next.policy = policy
            next.generation += 1
            guard next.generation <= PoolConfiguration.generationMax else {
                throw .invalidConfiguration("pool '\(next.name)': configuration generation limit \(PoolConfiguration.generationMax) reached")
            }
            for index in devices.indices { try writeConfiguration(next, deviceIndex: index) }
            let previous = state.configuration
            state.configuration = next
            do throws(PoolError) {
                try commitLocked(&state, newState: .active)
            } catch {
                state.configuration = previous
                throw error
            }
            allocator.policy = policy
        }
    }

    /// Throws when `policy` is invalid or asks for more copies than this pool's devices allow.
    public func validatePolicy(_ policy: PoolPolicy) throws(PoolError) {
        let problems = policy.validationProblems()
            + Pool.copiesProblems(roles: configuration.members.map(\.role), policy: policy)
        guard problems.isEmpty else { throw .invalidConfiguration(problems.joined(separator: "; ")) }
    }

    /// Marks the pool cleanly closed (an uberblock with state "exported") and closes this object.
    public func export() throws(PoolError) {
        try state.withLock { state throws(PoolError) in
            try commitLocked(&state, newState: .exported)
            state.isClosed = true
        }
    }

    /// Writable, and no two-phase commit in progress.
    func checkCommittable(_ state: PoolState) throws(PoolError) {
        try checkWritable(state)
        if let prepared = state.preparedCheckpoint {
            throw .invalidConfiguration("pool '\(state.configuration.name)': checkpoint \(prepared) is prepared and not committed yet")
        }
    }

    func checkWritable(_ state: PoolState) throws(PoolError) {
        if isReadOnly { throw .readOnly(poolName: state.configuration.name) }
        if state.isClosed { throw .invalidConfiguration("pool '\(state.configuration.name)' is exported (closed)") }
    }

    /// The commit protocol, under the state lock.
    func commitLocked(_ state: inout PoolState, newState: Uberblock.State, roots: [BlockPointer]? = nil,
                      checkpointOverride: UInt64? = nil) throws(PoolError) {
        try checkCommittable(state)
        finishPendingDiscardsLocked(&state)
        let checkpoint = checkpointOverride ?? state.uberblock.checkpoint + 1
        guard checkpoint <= Uberblock.checkpointMax else {
            throw .invalidConfiguration("pool '\(state.configuration.name)': checkpoint limit \(Uberblock.checkpointMax) reached")
        }
        precondition(checkpoint > state.uberblock.checkpoint || checkpointOverride == 1, "checkpoints only move forward")
        if let failure = state.failure {
            throw .invalidConfiguration("pool '\(state.configuration.name)' is suspended after a failed commit: \(failure)")
        }
        do {
            try commitSteps(&state, checkpoint: checkpoint, newState: newState, roots: roots)
        } catch {
            // The allocator closed the checkpoint and some writes may have landed: the in-memory
            // state no longer matches a committed root. Stop committing; re-import to recover.
            state.failure = error.description
            throw error
        }
    }

    private func commitSteps(_ state: inout PoolState, checkpoint: UInt64, newState: Uberblock.State,
                             roots: [BlockPointer]?) throws(PoolError) {
        // 1-2. Space maps (encoded under the allocator's lock, written to the copy N-1 did not name).
        let (cut, targets) = cutSpaceMaps(checkpoint: checkpoint, copies: &state.spaceMaps)
        let spaceMapRoots = try writeSpaceMaps(cut: cut, targets: targets, copies: &state.spaceMaps)
        try commitUberblock(&state, checkpoint: checkpoint, newState: newState, roots: roots, spaceMapRoots: spaceMapRoots)
    }

    /// Steps 3-5: flush everything, write the uberblock everywhere, flush, release N-1's frees.
    private func commitUberblock(_ state: inout PoolState, checkpoint: UInt64, newState: Uberblock.State,
                                 roots: [BlockPointer]?, spaceMapRoots: [SpaceMapRoot], defersDiscards: Bool = false) throws(PoolError) {
        // 3. Everything the uberblock names is durable before it is written: every device is
        //    flushed (side by side) and all flushes complete before any uberblock write starts.
        let devices = self.devices
        for result in DeviceFanOut.run(count: devices.count, { (index: Int) throws(IOError) in try devices[index].flush() }) {
            if case .failure(let error) = result { throw .io(error) }
        }
        // 4. The uberblock into slot N % 32 of both labels of every device, then a flush of each
        //    device (a write followed by a flush: DESIGN.md allows it in place of FUA, and it
        //    costs one flush per device instead of one per label copy).
        let uberblock = Uberblock(poolUUID: state.configuration.uuid, checkpoint: checkpoint, timeNs: Pool.nowNs(),
                                  configurationGeneration: state.configuration.generation, state: newState,
                                  roots: roots ?? state.uberblock.roots, spaceMaps: spaceMapRoots)
        let members = state.configuration.members
        let results = DeviceFanOut.run(count: devices.count) { (index: Int) throws(IOError) in
            let block = allocateAlignedBuffer(byteCount: Int(DeviceLayout.uberblockSlotBytes))
            defer { block.deallocate() }
            uberblock.encode(into: block)
            let slot = Int(checkpoint % UInt64(DeviceLayout.uberblockSlotCount))
            for labelOffset in members[index].layout.labelOffsets {
                try devices[index].write(UnsafeRawBufferPointer(block),
                                         at: DeviceLayout.uberblockSlotOffset(labelOffset: labelOffset, slot: slot), fua: false)
            }
            try devices[index].flush()
        }
        // One durable copy would make checkpoint N the root on the next import, but a device that
        // failed fails the commit: the caller must not count on N.
        for result in results {
            if case .failure(let error) = result { throw .io(error) }
        }
        state.uberblock = uberblock
        // 5. The frees of the previous checkpoint may now be reused: no checkpoint the pool may
        //    import references them (N is durable; N−1, the fallback, freed them). With
        //    `discardsFreedSpace` they are discarded first, while still unallocatable, so no
        //    write can land in a range before its discard. A two-phase commit (the object
        //    store's) leaves that to `finishPendingDiscards`, which the store calls once its log
        //    may allocate again, so discards never hold the log up; the next cut finishes them
        //    if nobody did.
        if state.discard.enabled && !isReadOnly {
            allocator.checkpointDurableHoldingFrees(checkpoint)
            state.discard.pendingCheckpoint = checkpoint
            if !defersDiscards { finishPendingDiscardsLocked(&state) }
        } else {
            allocator.checkpointDurable(checkpoint)
        }
    }

    /// Discards and releases the frees a two-phase commit (`commitPrepared`) left held, if any:
    /// the object store calls it after its checkpoint, outside the log's critical window. Holds
    /// the pool's lock while it discards (bounded by `discardLimits.rangesPerCommitMax`);
    /// allocations go on, the held space stays unallocatable until it returns.
    public func finishPendingDiscards() {
        state.withLock { state in finishPendingDiscardsLocked(&state) }
    }

    func finishPendingDiscardsLocked(_ state: inout PoolState) {
        guard let checkpoint = state.discard.pendingCheckpoint else { return }
        state.discard.pendingCheckpoint = nil
        var budget = state.discard.limits.rangesPerCommitMax
        allocator.releaseHeldFrees(of: checkpoint, skipping: state.discard.unsupported) { deviceIndex, ranges in
            discard(ranges, deviceIndex: deviceIndex, budget: &budget, &state.discard)
        }
    }

    /// Discards freed ranges of one device (the allocator leaves out devices in `unsupported`).
    /// Never fails the commit: a device that does not support discard is skipped from then on
    /// (one log line); another failure is counted and the first one logged.
    private func discard(_ ranges: [Range<UInt64>], deviceIndex: Int, budget: inout Int, _ discard: inout DiscardState) {
        let device = devices[deviceIndex]
        for (position, range) in ranges.enumerated() {
            if budget == 0 {
                discard.statistics.skippedRanges += ranges.count - position
                return
            }
            if range.upperBound - range.lowerBound < discard.limits.bytesMin {
                discard.statistics.skippedRanges += 1
                continue
            }
            budget -= 1
            do {
                try device.discard(offset: range.lowerBound, length: range.upperBound - range.lowerBound)
                discard.statistics.ranges += 1
                discard.statistics.bytes += range.upperBound - range.lowerBound
            } catch {
                if case .system(_, _, let code) = error, code == EOPNOTSUPP || code == ENOTTY || code == ENOSYS {
                    discard.unsupported.insert(deviceIndex)
                    Diagnostics.log("strata pool: \(device.path) does not support discard (\(error)); freed space on it is no longer discarded")
                    return
                }
                if discard.statistics.failures == 0 {
                    Diagnostics.log("strata pool: a discard of freed space failed (\(error)); the space is free all the same, later failures are only counted")
                }
                discard.statistics.failures += 1
            }
        }
    }

    /// Writes `configuration` into its slot (generation % 2) of both labels of one device.
    func writeConfiguration(_ configuration: PoolConfiguration, deviceIndex: Int) throws(PoolError) {
        let block = allocateAlignedBuffer(byteCount: Int(DeviceLayout.configSlotBytes))
        defer { block.deallocate() }
        configuration.encode(deviceIndex: deviceIndex, into: block)
        let slot = Int(configuration.generation % UInt64(DeviceLayout.configSlotCount))
        for labelOffset in configuration.members[deviceIndex].layout.labelOffsets {
            do {
                try devices[deviceIndex].write(UnsafeRawBufferPointer(block),
                                               at: DeviceLayout.configSlotOffset(labelOffset: labelOffset, slot: slot), fua: false)
            } catch {
                throw .io(error)
            }
        }
    }
}
