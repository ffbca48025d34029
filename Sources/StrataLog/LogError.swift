// LogError — the operating errors of the intent log.
//
// Programmer errors trap (appending to a log no uberblock names yet, checkpoints out of order, a
// covered LSN past the last appended one). What a correct caller can meet is thrown, and every
// message names the device, offset and sizes involved so that it can be acted on alone.

import StrataIO
import StrataPool

public enum LogError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A record larger than one batch can carry.
    case recordTooLarge(payloadBytes: Int, payloadBytesMax: Int)
    /// An append waited `waitedNs` for room in a full log (the checkpoint it requested did not
    /// release segments in time).
    case logFull(logBytesMax: UInt64, segmentBytes: UInt64, waitedNs: UInt64)
    /// An append waited `waitedNs` for room in the batch buffers (the device is not keeping up).
    case appendTimedOut(waitedNs: UInt64, batchBytesMax: Int)
    /// A device failed under the log; the log stops (what reached the device is unknown).
    case io(IOError)
    /// No log-class space for a segment or head.
    case noSpace(String)
    /// The head named by the uberblock cannot be used.
    case corruptHead(path: String, offsetBytes: UInt64, detail: String)
    /// A block passed its checksum but its contents are wrong (not a torn tail: corruption).
    case corruptBlock(path: String, offsetBytes: UInt64, detail: String)
    /// The log was written by a newer format.
    case unsupportedVersion(path: String, offsetBytes: UInt64, what: String, version: UInt16, supported: UInt16)
    /// Invalid settings.
    case invalidSettings([String])
    /// The log failed earlier (a device error or allocation failure in the writer): nothing more
    /// is accepted; reopen the pool.
    case failed(String)
    /// The log was closed.
    case closed

    public var description: String {
        switch self {
        case .recordTooLarge(let bytes, let max):
            return "log record payload of \(bytes) bytes exceeds the limit of \(max) bytes (batchBytesMax minus headers)"
        case .logFull(let max, let segment, let waited):
            return "intent log full: \(max) bytes (\(max / segment) segments of \(segment) bytes) in use; waited \(waited / 1_000_000) ms for a checkpoint to release space"
        case .appendTimedOut(let waited, let batch):
            return "append waited \(waited / 1_000_000) ms for room in the \(batch)-byte batch buffers (log device not keeping up)"
        case .io(let error): return "intent log I/O: \(error)"
        case .noSpace(let detail): return "intent log: \(detail)"
        case .corruptHead(let path, let offset, let detail): return "\(path): intent-log head at offset \(offset): \(detail)"
        case .corruptBlock(let path, let offset, let detail): return "\(path): intent-log block at offset \(offset): \(detail)"
        case .unsupportedVersion(let path, let offset, let what, let version, let supported):
            return "\(path): \(what) at offset \(offset) has format version \(version); this build reads \(supported)"
        case .invalidSettings(let problems): return "invalid log settings: " + problems.joined(separator: "; ")
        case .failed(let why): return "intent log stopped after an earlier failure: \(why)"
        case .closed: return "intent log is closed"
        }
    }
}
