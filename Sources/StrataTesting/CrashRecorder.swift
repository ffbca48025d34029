// CrashRecorder — one recording session over any number of devices, on one global clock.
//
// Theory. A system under test may use several devices (a pool has one per member), and its
// crash behaviour depends on the order of events across them: "flush the data device, then
// write the log record on the log device" is only safe if a crash can never keep the record
// without the data. So the session, not the device, owns the clock: every RecordingDevice
// created by `record(_:base:)` reports to its recorder, which hands out one sequence number per
// event and keeps the per-device bookkeeping that decides durability (a flush on device A
// covers only A's writes that were complete when it was issued). Operations of the system
// under test are logged on the same clock through `OperationContext`, so a crash point knows
// exactly which operations had been issued and acknowledged.
//
// Memory is bounded: payload bytes (plus a fixed per-record overhead) are counted against
// `memoryBudgetBytes`; a write that would pass it is refused with an `IOError` (ENOMEM) naming
// the budget, and `budgetExceeded` latches so a runner can turn it into a clear
// `CrashTestError.memoryBudgetExceeded`. Nothing is persisted: the recording lives in memory
// and is handed out as a value (`recording()`). Payload bytes live in a `PayloadArena`
// (bump-allocated chunks; no allocation per write): a write costs one memcpy plus two short
// critical sections (admit and reserve; publish) and one for its completion. Thread-safe: all
// state is behind one `Mutex`; the memcpy runs outside it, into a range only its writer holds.

import StrataIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A recording session shared by several `RecordingDevice`s: one global event sequence.
///
/// ```swift
/// let recorder = CrashRecorder(memoryBudgetBytes: 64 << 20)
/// let log = recorder.record(logDevice, base: logBase)
/// let data = recorder.record(dataDevice, base: dataBase)
/// // ... run the system on `log` and `data` ...
/// let recording = recorder.recording()
/// ```
public final class CrashRecorder: Sendable {
    /// Default memory budget: 256 MiB of recorded payload. Enough for thousands of metadata
    /// commits; a 1 MiB data stream needs its own budget (see `memoryBudgetBytes`).
    public static let memoryBudgetBytesDefault = 256 << 20
    /// Bookkeeping charged per recorded event on top of its payload.
    public static let recordOverheadBytes = 96

    /// The most payload bytes (plus overhead) this session keeps.
    public let memoryBudgetBytes: Int
    private let state: Mutex<RecorderState>

    /// A new session. `memoryBudgetBytes` bounds the memory the recording may use.
    public init(memoryBudgetBytes: Int = CrashRecorder.memoryBudgetBytesDefault) {
        precondition(memoryBudgetBytes > 0, "memory budget must be positive")
        self.memoryBudgetBytes = memoryBudgetBytes
        var initial = RecorderState()
        initial.writes.reserveCapacity(1024)
        self.state = Mutex(initial)
    }

    /// Adds `device` to the session and returns the recording wrapper to hand to the system
    /// under test. `base` is the device's contents *now* (an immutable image, e.g. a
    /// `MemoryDevice.snapshot()`); crash images are built over it. For a `MemoryDevice` without
    /// a base, a snapshot is taken.
    public func record(_ device: any BlockStorage, base: (any BlockStorage)? = nil) -> RecordingDevice {
        let resolvedBase: (any BlockStorage)? = base ?? (device as? MemoryDevice)?.snapshot()
        if let resolvedBase {
            precondition(resolvedBase.sizeBytes == device.sizeBytes && resolvedBase.blockSizeBytes == device.blockSizeBytes,
                         "base image of \(device.path) has a different geometry")
        }
        let index = state.withLock { state in
            let index = state.devices.count
            state.devices.append(RecordedDevice(index: index, path: device.path, sizeBytes: device.sizeBytes,
                                                blockSizeBytes: device.blockSizeBytes, base: resolvedBase))
            state.undurableWrites.append([])
            return index
        }
        return RecordingDevice(device: device, recorder: self, deviceIndex: index)
    }

    /// The recording so far, as a value (the session can go on).
    public func recording() -> Recording {
        state.withLock { state in
            Recording(devices: state.devices, writes: state.writes, flushes: state.flushes,
                      operations: state.operations, endSequence: state.sequence, payloadBytes: state.payloadBytes)
        }
    }

    /// The current sequence number (the last event's).
    public var sequence: UInt64 { state.withLock { $0.sequence } }

    /// Bytes charged against the budget so far.
    public var usedBytes: Int { state.withLock { $0.usedBytes } }

    /// Address space of the payload arena's chunks (tests: the arena stays near the payload).
    var arenaChunkBytes: Int { state.withLock { $0.arena.chunkBytes } }

    /// The size of the first request refused for lack of budget, if any.
    public var budgetExceeded: (requestedBytes: Int, usedBytes: Int)? { state.withLock { $0.budgetExceeded } }

    // MARK: Operations (the acknowledgement log)

    /// Logs that operation `description` is issued now and returns its context; the system
    /// under test calls `acknowledge()` on it once the operation is durable.
    public func beginOperation(_ description: String) -> OperationContext {
        let index = state.withLock { state in
            let index = state.operations.count
            state.operations.append(RecordedOperation(index: index, description: description,
                                                      issueSequence: state.tick(), acknowledgeSequence: nil))
            return index
        }
        return OperationContext(recorder: self, operationIndex: index, description: description)
    }

    func acknowledge(operation index: Int) {
        state.withLock { state in
            precondition(index < state.operations.count, "acknowledging unknown operation \(index)")
            if state.operations[index].acknowledgeSequence == nil {
                state.operations[index].acknowledgeSequence = state.tick()
            }
        }
    }

    // MARK: Device events (called by RecordingDevice)

    func beginWrite(device: Int, path: String, offset: UInt64, bytes: UnsafeRawBufferPointer?, length: Int,
                    fua: Bool) throws(IOError) -> Int {
        let charge = (bytes?.count ?? 0) + CrashRecorder.recordOverheadBytes
        let budget = memoryBudgetBytes
        // Admission and arena reservation together: a refused write reserves nothing.
        let admitted = state.withLock { state -> PayloadBytes?? in
            guard state.usedBytes + charge <= budget else {
                if state.budgetExceeded == nil { state.budgetExceeded = (charge, state.usedBytes) }
                return nil
            }
            state.usedBytes += charge
            guard let bytes, bytes.count > 0 else { return .some(nil) }
            return .some(state.arena.reserve(bytes.count, memoryBudgetBytes: budget))
        }
        guard let payload = admitted else {
            throw .device(path: path, operation: "record write (crash recorder memory budget of \(budget) bytes exceeded)",
                          offset: offset, length: UInt64(length), errno: ENOMEM)
        }
        if let payload, let source = bytes?.baseAddress {
            // Copy outside the lock, into the range reserved for this write alone; the write is
            // published (below) only once its bytes are in place.
            memcpy(payload.chunk.base + payload.offset, source, payload.count)
        }
        let stored = payload ?? (bytes != nil ? CrashRecorder.emptyPayload : nil)
        return state.withLock { state in
            let index = state.writes.count
            state.writes.append(RecordedWrite(index: index, device: device, offset: offset, length: length,
                                              payloadBytes: stored, isFUA: fua, issueSequence: state.tick(),
                                              completeSequence: nil, durableSequence: nil, failed: false))
            state.payloadBytes += stored?.count ?? 0
            state.undurableWrites[device].append(index)
            return index
        }
    }

    /// The payload of an empty write (never issued by a RecordingDevice, which refuses empty
    /// requests; kept so `payload` is `[]`, not `nil`, if one ever is).
    static let emptyPayload = PayloadBytes(chunk: PayloadChunk(capacity: 64), offset: 0, count: 0)

    func completeWrite(_ index: Int) {
        state.withLock { state in
            let sequence = state.tick()
            precondition(state.writes[index].completeSequence == nil, "write \(index) completed twice")
            state.writes[index].completeSequence = sequence
            if state.writes[index].isFUA {
                state.writes[index].durableSequence = sequence
                state.undurableWrites[state.writes[index].device].removeAll { $0 == index }
            }
        }
    }

    func failWrite(_ index: Int) {
        state.withLock { state in
            state.writes[index].failed = true
            _ = state.tick()
        }
    }

    func beginFlush(device: Int) -> Int {
        state.withLock { state in
            let sequence = state.tick()
            let covered = state.undurableWrites[device].filter { write in
                guard let completed = state.writes[write].completeSequence else { return false }
                return completed < sequence
            }
            state.flushes.append(RecordedFlush(device: device, issueSequence: sequence, completeSequence: nil,
                                               coveredWrites: covered))
            return state.flushes.count - 1
        }
    }

    func completeFlush(_ index: Int) {
        state.withLock { state in
            let sequence = state.tick()
            state.flushes[index].completeSequence = sequence
            let device = state.flushes[index].device
            var newlyDurable: Set<Int> = []
            for write in state.flushes[index].coveredWrites where state.writes[write].durableSequence == nil {
                state.writes[write].durableSequence = sequence
                newlyDurable.insert(write)
            }
            if !newlyDurable.isEmpty { state.undurableWrites[device].removeAll { newlyDurable.contains($0) } }
        }
    }

    func failFlush(_ index: Int) {
        state.withLock { state in _ = state.tick() }
    }
}

struct RecorderState {
    var sequence: UInt64 = 0
    var devices: [RecordedDevice] = []
    var writes: [RecordedWrite] = []
    var flushes: [RecordedFlush] = []
    var operations: [RecordedOperation] = []
    /// Per device: writes not yet durable (in flight, completed-unflushed, or failed).
    var undurableWrites: [[Int]] = []
    var usedBytes = 0
    var payloadBytes = 0
    var budgetExceeded: (requestedBytes: Int, usedBytes: Int)? = nil
    /// Where admitted writes' bytes are kept.
    var arena = PayloadArena()

    mutating func tick() -> UInt64 {
        sequence += 1
        return sequence
    }
}

/// The handle a system under test gets with each operation: call `acknowledge()` when the
/// operation is durable (its commit callback fired, its call returned with a durability
/// guarantee). Acknowledging twice is harmless; the first one counts.
public final class OperationContext: Sendable {
    public let recorder: CrashRecorder
    /// Position of the operation in the workload (0-based).
    public let operationIndex: Int
    public let description: String

    init(recorder: CrashRecorder, operationIndex: Int, description: String) {
        self.recorder = recorder
        self.operationIndex = operationIndex
        self.description = description
    }

    /// Logs the acknowledgement on the session clock.
    public func acknowledge() {
        recorder.acknowledge(operation: operationIndex)
    }
}
