// Pool commits: checkpoints (space maps, flush, uberblock), policy changes, export.
//
// See Pool.swift for the commit protocol and why a crash at any point leaves a valid root.
// A policy change adds one step before it: the new configuration generation g+1 is written into
// slot (g+1) % 2 of both labels of every device — never the slot of g, which the current root
// names — and the uberblock that follows names g+1. Export is a checkpoint whose uberblock says
// "exported"; the pool object is closed afterwards.

import StrataIO

extension Pool {
    /// Commits a checkpoint: changed space maps, a flush of every device, then a new uberblock
    /// (FUA). `roots` replaces the root pointers of the layers above (nil keeps them). Returns the
    /// committed checkpoint number. Everything the roots point to must already be written; this
    /// flushes before the uberblock.
    @discardableResult
    public func commitCheckpoint(roots: [BlockPointer]? = nil) throws(PoolError) -> UInt64 {
        try state.withLock { state throws(PoolError) in
            try commitLocked(&state, newState: .active, roots: roots)
            return state.uberblock.checkpoint
        }
    }

    /// Changes the policy: a new configuration generation in every label, then a checkpoint that
    /// names it. The allocator follows the new policy from the moment this returns.
    public func setPolicy(_ policy: PoolPolicy) throws(PoolError) {
        try validatePolicy(policy)
        try state.withLock { state throws(PoolError) in
            try checkWritable(state)
            var next = state.configuration
            next.policy = policy
            next.generation += 1
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

    func checkWritable(_ state: PoolState) throws(PoolError) {
        if isReadOnly { throw .readOnly(poolName: state.configuration.name) }
        if state.isClosed { throw .invalidConfiguration("pool '\(state.configuration.name)' is exported (closed)") }
    }

    /// The commit protocol, under the state lock.
    func commitLocked(_ state: inout PoolState, newState: Uberblock.State, roots: [BlockPointer]? = nil,
                      checkpointOverride: UInt64? = nil) throws(PoolError) {
        try checkWritable(state)
        let checkpoint = checkpointOverride ?? state.uberblock.checkpoint + 1
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
        let spaceMapRoots = try writeSpaceMaps(checkpoint: checkpoint, copies: &state.spaceMaps)
        // 3. Everything the uberblock names is durable before it is written.
        for device in devices {
            do { try device.flush() } catch { throw .io(error) }
        }
        // 4. The uberblock, FUA, in both labels of every device.
        let uberblock = Uberblock(poolUUID: state.configuration.uuid, checkpoint: checkpoint, timeNs: Pool.nowNs(),
                                  configurationGeneration: state.configuration.generation, state: newState,
                                  roots: roots ?? state.uberblock.roots, spaceMaps: spaceMapRoots)
        let block = allocateAlignedBuffer(byteCount: Int(DeviceLayout.uberblockSlotBytes))
        defer { block.deallocate() }
        uberblock.encode(into: block)
        let slot = Int(checkpoint % UInt64(DeviceLayout.uberblockSlotCount))
        var written = 0
        var firstError: IOError? = nil
        for (index, device) in devices.enumerated() {
            for labelOffset in state.configuration.members[index].layout.labelOffsets {
                do {
                    try device.write(UnsafeRawBufferPointer(block),
                                     at: DeviceLayout.uberblockSlotOffset(labelOffset: labelOffset, slot: slot), fua: true)
                    written += 1
                } catch {
                    if firstError == nil { firstError = error }
                }
            }
        }
        // One durable copy is enough for the checkpoint to be the pool's root; a device that
        // failed is reported, and the commit still counts as failed to the caller.
        if let firstError { throw .io(firstError) }
        precondition(written == devices.count * 2)
        state.uberblock = uberblock
        // 5. The frees of the previous checkpoint may now be reused.
        allocator.checkpointDurable(checkpoint)
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
