// IntentLog+Check — what a consistency checker needs from the log: the space the log owns as of
// the committed checkpoint, and the space it claims after it.
//
// The head's segments and the head block itself were allocated before the checkpoint's cut, so
// the durable space maps count them: a checker must find them allocated and referenced once.
// Segments named only by blocks written after the cut (`claimedAfterCheckpoint`) are free in the
// durable maps (open claims them) and must not be reported as leaks or double references.

import StrataIO
import StrataPool

/// The extents of a log as found on disk (`IntentLog.ownedSpace`).
public struct LogSpace: Sendable, Equatable {
    /// The head block's copies and the segments the head lists.
    public var durable: [Extent]
    /// Segments after those, named by log blocks (allocated after the checkpoint's cut).
    public var claimedAfterCheckpoint: [Extent]
    public var summary: LogReplaySummary
}

extension IntentLog {
    /// Walks the log named by `root` (reads only) and returns the space it owns, calling `body`
    /// for every record replay would apply. Throws what `replay` throws.
    public static func ownedSpace(pool: Pool, root: BlockPointer,
                                  _ body: (LogRecord, RawSpan) throws -> Void = { _, _ in }) throws -> LogSpace {
        let head = try readHead(pool: pool, root: root)
        let result = try scan(pool: pool, root: root, body)
        return LogSpace(durable: head.headCopies + head.segments.flatMap { $0 },
                        claimedAfterCheckpoint: result.claimed.flatMap { $0 }, summary: result.summary)
    }
}
