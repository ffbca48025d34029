// Recording — what a workload did to its devices, on one global clock: the input of every
// crash image.
//
// Theory. A `CrashRecorder` numbers every event of a session (a write issued or completed, a
// flush issued or completed, an operation issued or acknowledged) with one global sequence
// number, across all of the session's devices. A *crash point* is a sequence number: "power
// failed right after event k". What may be on the media at crash point k follows from the
// crash model of DESIGN.md:
//
//   - a write is *durable* at k when it was FUA and completed by k, or when a flush of the
//     same device that was issued after the write completed has itself completed by k
//     (dm-log-writes semantics: a flush covers exactly the writes complete when it was issued,
//     and only on its own device);
//   - every other write issued by k is *pending*: it may be absent, whole, or torn at 4 KiB
//     granularity;
//   - an operation is *acknowledged* at k when its acknowledgement was logged by k.
//
// `durableSequence` is computed once, when the covering flush completes, so a crash point's
// durable set is a comparison per write. A write that failed with a device error stays pending
// for ever (it may or may not have reached the media). Discards are recorded as writes of
// zeros (a discarded range may read old data or zeros; zeros is the value that matters).
// Invariants: writes, flushes and operations are stored in issue order, so their sequence
// numbers increase with their index; every completion follows its issue.

import StrataIO

/// One device of a recording session.
public struct RecordedDevice: Sendable {
    /// Index in the session (the order devices were added to the recorder).
    public let index: Int
    public let path: String
    public let sizeBytes: UInt64
    public let blockSizeBytes: Int
    /// The device's contents when recording started, if known: crash images are built over it.
    public let base: (any BlockStorage)?
}

/// One write (or discard) as recorded.
public struct RecordedWrite: Sendable {
    public let index: Int
    public let device: Int
    public let offset: UInt64
    public let length: Int
    /// The bytes written; `nil` for a discard (modelled as zeros). A copy of the recorder's
    /// arena bytes, made on each access: keep it rather than asking again.
    public var payload: [UInt8]? { payloadBytes?.array }
    /// Where the recorder keeps the bytes (`nil` for a discard).
    let payloadBytes: PayloadBytes?
    public var isDiscard: Bool { payloadBytes == nil }
    public let isFUA: Bool
    public let issueSequence: UInt64
    /// When the write returned successfully; `nil` while in flight or when it failed.
    public internal(set) var completeSequence: UInt64?
    /// When it became durable (FUA completion, or completion of a covering flush).
    public internal(set) var durableSequence: UInt64?
    /// The device returned an error: the write may or may not be on the media.
    public internal(set) var failed: Bool

    /// Durable at crash point `sequence`.
    public func isDurable(at sequence: UInt64) -> Bool {
        guard let durable = durableSequence else { return false }
        return durable <= sequence
    }

    /// Issued by `sequence` and not durable there: may be lost or torn by a crash at it.
    public func isPending(at sequence: UInt64) -> Bool {
        issueSequence <= sequence && !isDurable(at: sequence)
    }
}

/// One flush as recorded.
public struct RecordedFlush: Sendable {
    public let device: Int
    public let issueSequence: UInt64
    public internal(set) var completeSequence: UInt64?
    /// Writes this flush made durable (complete when it was issued, not yet durable).
    public internal(set) var coveredWrites: [Int]
}

/// One operation of the system under test, as logged by the oracle's `OperationContext`.
public struct RecordedOperation: Sendable {
    public let index: Int
    public let description: String
    public let issueSequence: UInt64
    public internal(set) var acknowledgeSequence: UInt64?

    public func isAcknowledged(at sequence: UInt64) -> Bool {
        guard let acknowledged = acknowledgeSequence else { return false }
        return acknowledged <= sequence
    }
}

/// A finished recording session: every device, write, flush and operation on one clock.
public struct Recording: Sendable {
    public let devices: [RecordedDevice]
    public let writes: [RecordedWrite]
    public let flushes: [RecordedFlush]
    public let operations: [RecordedOperation]
    /// The last sequence number handed out (the clean end of the workload).
    public let endSequence: UInt64
    /// Bytes of payload kept.
    public let payloadBytes: Int

    /// Every sequence at which some write became durable (flush or FUA completions), sorted.
    public var durabilityBoundaries: [UInt64] {
        Array(Set(writes.compactMap(\.durableSequence))).sorted()
    }

    /// Indices of writes pending at crash point `sequence`, in issue order.
    public func pendingWrites(at sequence: UInt64) -> [Int] {
        var result: [Int] = []
        for write in writes {
            if write.issueSequence > sequence { break }
            if !write.isDurable(at: sequence) { result.append(write.index) }
        }
        return result
    }

    /// How many operations were issued by crash point `sequence` (the workload step in
    /// progress, counting from 1; 0 before the first operation).
    public func operationsIssued(at sequence: UInt64) -> Int {
        var low = 0, high = operations.count
        while low < high {
            let middle = (low + high) / 2
            if operations[middle].issueSequence <= sequence { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// How many operations were acknowledged by crash point `sequence`.
    public func operationsAcknowledged(at sequence: UInt64) -> Int {
        operations.reduce(0) { $0 + ($1.isAcknowledged(at: sequence) ? 1 : 0) }
    }
}
