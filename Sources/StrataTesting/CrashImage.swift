// CrashImage — one state the devices of a recording may be in after a power failure.
//
// Theory. A crash image is named, not stored: a crash point (a sequence number of the
// recording) plus the pending writes that reached the media, each whole or torn. Everything
// else follows from the recording: every write durable at the crash point is in the image (in
// completion order, newest wins per block), every pending write not listed is lost. Listed
// writes are applied with the same newest-wins rule, so a lost-then-kept pair of writes to one
// block never shows the older bytes over the newer (a device does not reorder writes to the
// same block it has completed in order); reordering of writes to different blocks is exactly
// "any subset survives", which is what the list expresses.
//
// Tearing is at `tearUnitBytes` (4 KiB) granularity: a torn write keeps the listed 4 KiB units
// (counted from the first 4 KiB-aligned unit the write touches) and loses the others.
// Invariants: `persisted` names each write at most once, only writes pending at `crashPoint`,
// and `keptUnits`, when present, is a sorted non-empty proper subset of the write's units.
// Being a small value, an image can be regenerated from (seed, index) and replayed.

/// One crash state of a recording: a crash point plus the pending writes that survived it.
public struct CrashImage: Sendable, Hashable, CustomStringConvertible {
    /// The unit a write may be torn at: 4 KiB, the atomic write unit the crash model assumes.
    public static let tearUnitBytes = 4096

    /// How the image was chosen.
    public enum Kind: String, Sendable, Hashable {
        /// Exactly the durable writes at a flush/FUA completion (dm-log-writes replay to a FUA).
        case boundary
        /// One of every combination of the pending writes just before a boundary.
        case exhaustive
        /// A seeded random choice (drop, keep, tear) at a random crash point.
        case random
    }

    /// A pending write that reached the media.
    public struct PersistedWrite: Sendable, Hashable {
        /// Index in `Recording.writes`.
        public let writeIndex: Int
        /// The 4 KiB units kept when the write was torn; `nil` when it is whole.
        public let keptUnits: [Int]?

        public init(writeIndex: Int, keptUnits: [Int]? = nil) {
            self.writeIndex = writeIndex
            self.keptUnits = keptUnits
        }
    }

    public let crashPoint: UInt64
    public let kind: Kind
    public let persisted: [PersistedWrite]

    public init(crashPoint: UInt64, kind: Kind, persisted: [PersistedWrite] = []) {
        assert(Set(persisted.map(\.writeIndex)).count == persisted.count, "a write persisted twice")
        self.crashPoint = crashPoint
        self.kind = kind
        self.persisted = persisted
    }

    public var description: String {
        let kept = persisted.map { write in
            if let units = write.keptUnits {
                return "w\(write.writeIndex)[torn: units \(units.map(String.init).joined(separator: ","))]"
            }
            return "w\(write.writeIndex)"
        }
        return "\(kind.rawValue) image at crash point \(crashPoint), pending writes kept: "
            + (kept.isEmpty ? "none" : kept.joined(separator: " "))
    }

    /// The number of 4 KiB tear units a write of `length` bytes at `offset` touches.
    public static func tearUnitCount(offset: UInt64, length: Int) -> Int {
        let unit = UInt64(tearUnitBytes)
        let first = offset / unit
        let end = (offset + UInt64(length) + unit - 1) / unit
        return Int(end - first)
    }
}
