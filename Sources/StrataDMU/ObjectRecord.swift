// ObjectRecord — the intent-log records of the object store: one per operation of a transaction.
//
// Theory. A transaction's operations change the in-memory state at once (under the object locks
// the transaction holds) and each produces one record describing the change *as applied*, with
// every value replay needs to reach the same state without consulting anything but the state the
// previous records left: the object number a create was given, the time stamps, the physical
// extents and chunk checksums of a large write, the bytes of a small write. `stop` appends the
// records with `IntentLog.appendGroup`, so they land in one log block: at replay a transaction is
// there whole or not at all. Replay (ObjectStore+Replay.swift) decodes each record and calls the
// same apply function the operation called, so execution and replay cannot drift apart.
//
// Payload layout (little-endian; every record starts with the object number):
//     create         u64 object · u8 type · u8 0 · u16 0 · u32 mode · u32 uid · u32 gid · i64 time
//     destroy        u64 object
//     setAttributes  u64 object · u32 mask · u32 mode · u32 uid · u32 gid · u32 flags · u32 projid ·
//                    u32 nlink · u32 rdev · i64 atime · i64 mtime · i64 ctime · u64 size
//     writeInline    u64 object · u64 offset · u32 length · bytes
//     writeExtent    u64 object · u64 logical offset · u64 length · u64 birth · u8 chunkShift ·
//                    u8 copies · u16 0 · u32 checksum count · copies × (u32 device · u32 0 · u64 offset) ·
//                    checksums × u32
//     punch          u64 object · u64 offset · u64 length
//     truncate       u64 object · u64 size
//     setXattr       u64 object · u8 name bytes · u8 0 · u16 0 · u32 value bytes · name · value
//     removeXattr    u64 object · u8 name bytes · name
//     indexInsert    u64 object · u8 mode (0 must-not-exist, 1 upsert) · u8 key bytes · u16 value bytes · key · value
//     indexDelete    u64 object · u8 key bytes · key
//     nothing        u64 0 (a transaction that changed nothing, logged only for its callback's order)
// A record that does not decode exactly (short, trailing bytes, a length past the payload) is a
// corrupt log: replay stops with an error naming the LSN (the block checksum passed, so this is a
// bug or a newer writer, never a torn write).

import StrataIO
import StrataLog
import StrataPool

/// Record types of the object store in the intent log (0 is reserved by the log).
public enum ObjectRecordType: UInt16, Sendable, CaseIterable {
    case create = 1
    case destroy = 2
    case setAttributes = 3
    case writeInline = 4
    case writeExtent = 5
    case punch = 6
    case truncate = 7
    case setXattr = 8
    case removeXattr = 9
    case indexInsert = 10
    case indexDelete = 11
    /// A transaction that changed nothing (every operation refused) but asked for a commit
    /// callback: the record orders the callback after every transaction stopped before it.
    case nothing = 12
}

/// Which attributes a `setAttributes` changes (Lustre's `la_valid` bits, the ones a dnode holds).
public struct AttributeMask: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let mode = AttributeMask(rawValue: 1 << 0)
    public static let uid = AttributeMask(rawValue: 1 << 1)
    public static let gid = AttributeMask(rawValue: 1 << 2)
    public static let flags = AttributeMask(rawValue: 1 << 3)
    public static let projid = AttributeMask(rawValue: 1 << 4)
    public static let nlink = AttributeMask(rawValue: 1 << 5)
    public static let rdev = AttributeMask(rawValue: 1 << 6)
    public static let atime = AttributeMask(rawValue: 1 << 7)
    public static let mtime = AttributeMask(rawValue: 1 << 8)
    public static let ctime = AttributeMask(rawValue: 1 << 9)
    static let known: AttributeMask = [.mode, .uid, .gid, .flags, .projid, .nlink, .rdev, .atime, .mtime, .ctime]
}

/// New values for `Transaction.setAttributes`; only the fields named in `mask` are applied.
public struct AttributeChange: Sendable, Equatable {
    public var mask: AttributeMask = []
    public var mode: UInt32 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var flags: UInt32 = 0
    public var projid: UInt32 = 0
    public var nlink: UInt32 = 0
    public var rdev: UInt32 = 0
    public var atimeNs: Int64 = 0
    public var mtimeNs: Int64 = 0
    public var ctimeNs: Int64 = 0

    public init() {}

    func apply(to dnode: inout Dnode) {
        if mask.contains(.mode) { dnode.mode = mode }
        if mask.contains(.uid) { dnode.uid = uid }
        if mask.contains(.gid) { dnode.gid = gid }
        if mask.contains(.flags) { dnode.flags = flags }
        if mask.contains(.projid) { dnode.projid = projid }
        if mask.contains(.nlink) { dnode.nlink = nlink }
        if mask.contains(.rdev) { dnode.rdev = rdev }
        if mask.contains(.atime) { dnode.atimeNs = atimeNs }
        if mask.contains(.mtime) { dnode.mtimeNs = mtimeNs }
        if mask.contains(.ctime) { dnode.ctimeNs = ctimeNs }
    }
}

/// One decoded operation: what a record says, and what an operation produces.
enum ObjectOperation: Equatable {
    case create(object: UInt64, type: ObjectType, mode: UInt32, uid: UInt32, gid: UInt32, timeNs: Int64)
    case destroy(object: UInt64)
    case setAttributes(object: UInt64, AttributeChange)
    case writeInline(object: UInt64, offset: UInt64, bytes: [UInt8])
    case writeExtent(object: UInt64, MappedExtent)
    case punch(object: UInt64, offset: UInt64, length: UInt64)
    case truncate(object: UInt64, sizeBytes: UInt64)
    case setXattr(object: UInt64, name: [UInt8], value: [UInt8])
    case removeXattr(object: UInt64, name: [UInt8])
    case indexInsert(object: UInt64, key: [UInt8], value: [UInt8], upsert: Bool)
    case indexDelete(object: UInt64, key: [UInt8])
    case nothing

    var type: ObjectRecordType {
        switch self {
        case .create: .create
        case .destroy: .destroy
        case .setAttributes: .setAttributes
        case .writeInline: .writeInline
        case .writeExtent: .writeExtent
        case .punch: .punch
        case .truncate: .truncate
        case .setXattr: .setXattr
        case .removeXattr: .removeXattr
        case .indexInsert: .indexInsert
        case .indexDelete: .indexDelete
        case .nothing: .nothing
        }
    }

    /// Bytes of the encoded payload (what the log must have room for).
    var payloadBytes: Int {
        switch self {
        case .create: 32
        case .destroy: 8
        case .setAttributes: 8 + 4 * 8 + 8 * 4
        case .writeInline(_, _, let bytes): 20 + bytes.count
        case .writeExtent(_, let extent): 40 + extent.copies.count * 16 + extent.chunkChecksums.count * 4
        case .punch: 24
        case .truncate: 16
        case .setXattr(_, let name, let value): 16 + name.count + value.count
        case .removeXattr(_, let name): 9 + name.count
        case .indexInsert(_, let key, let value, _): 12 + key.count + value.count
        case .indexDelete(_, let key): 9 + key.count
        case .nothing: 8
        }
    }

    /// Bytes before the data in a write-inline payload: object, offset, length.
    static let writeInlineHeaderBytes = 20

    /// The `writeInline` payload for `bytes` written at `offset` of `object`: one allocation,
    /// one copy of the data (the small-write path encodes from the caller's buffer with it).
    static func encodeWriteInline(object: UInt64, offset: UInt64, bytes data: UnsafeRawBufferPointer) -> [UInt8] {
        precondition(data.count <= Int(UInt32.max), "a write-inline record of \(data.count) bytes")
        return [UInt8](unsafeUninitializedCapacity: writeInlineHeaderBytes + data.count) { buffer, count in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            let writer = ByteWriter(raw)
            writer.put(object, at: 0)
            writer.put(offset, at: 8)
            writer.put(UInt32(data.count), at: 16)
            if !data.isEmpty { UnsafeMutableRawBufferPointer(rebasing: raw[writeInlineHeaderBytes...]).copyMemory(from: data) }
            count = writeInlineHeaderBytes + data.count
        }
    }

    func encoded() -> [UInt8] {
        if case .writeInline(let object, let offset, let data) = self {
            return data.withUnsafeBytes { Self.encodeWriteInline(object: object, offset: offset, bytes: $0) }
        }
        var bytes = [UInt8](repeating: 0, count: payloadBytes)
        bytes.withUnsafeMutableBytes { raw in
            let writer = ByteWriter(raw)
            switch self {
            case .create(let object, let type, let mode, let uid, let gid, let timeNs):
                writer.put(object, at: 0)
                writer.put(type.rawValue, at: 8)
                writer.put(mode, at: 12)
                writer.put(uid, at: 16)
                writer.put(gid, at: 20)
                writer.put(timeNs, at: 24)
            case .destroy(let object):
                writer.put(object, at: 0)
            case .setAttributes(let object, let change):
                writer.put(object, at: 0)
                writer.put(change.mask.rawValue, at: 8)
                var offset = 12
                for value in [change.mode, change.uid, change.gid, change.flags, change.projid, change.nlink, change.rdev] {
                    writer.put(value, at: offset)
                    offset += 4
                }
                for value in [change.atimeNs, change.mtimeNs, change.ctimeNs] {
                    writer.put(value, at: offset)
                    offset += 8
                }
                writer.put(UInt64(0), at: offset)
            case .writeInline:
                preconditionFailure("writeInline is encoded by encodeWriteInline")
            case .writeExtent(let object, let extent):
                writer.put(object, at: 0)
                writer.put(extent.logicalOffsetBytes, at: 8)
                writer.put(extent.lengthBytes, at: 16)
                writer.put(extent.birthCheckpoint, at: 24)
                writer.put(extent.chunkShift, at: 32)
                writer.put(UInt8(extent.copies.count), at: 33)
                writer.put(UInt32(extent.chunkChecksums.count), at: 36)
                var offset = 40
                for copy in extent.copies {
                    writer.put(UInt32(copy.deviceIndex), at: offset)
                    writer.put(copy.offsetBytes, at: offset + 8)
                    offset += 16
                }
                for checksum in extent.chunkChecksums {
                    writer.put(checksum, at: offset)
                    offset += 4
                }
            case .punch(let object, let offset, let length):
                writer.put(object, at: 0)
                writer.put(offset, at: 8)
                writer.put(length, at: 16)
            case .truncate(let object, let size):
                writer.put(object, at: 0)
                writer.put(size, at: 8)
            case .setXattr(let object, let name, let value):
                writer.put(object, at: 0)
                writer.put(UInt8(name.count), at: 8)
                writer.put(UInt32(value.count), at: 12)
                writer.put(bytes: name, at: 16)
                writer.put(bytes: value, at: 16 + name.count)
            case .removeXattr(let object, let name):
                writer.put(object, at: 0)
                writer.put(UInt8(name.count), at: 8)
                writer.put(bytes: name, at: 9)
            case .indexInsert(let object, let key, let value, let upsert):
                writer.put(object, at: 0)
                writer.put(UInt8(upsert ? 1 : 0), at: 8)
                writer.put(UInt8(key.count), at: 9)
                writer.put(UInt16(value.count), at: 10)
                writer.put(bytes: key, at: 12)
                writer.put(bytes: value, at: 12 + key.count)
            case .indexDelete(let object, let key):
                writer.put(object, at: 0)
                writer.put(UInt8(key.count), at: 8)
                writer.put(bytes: key, at: 9)
            case .nothing:
                writer.put(UInt64(0), at: 0)
            }
        }
        return bytes
    }

    /// Decodes a record payload; nil when it is not exactly a valid record of `type`.
    static func decode(type rawType: UInt16, payload raw: UnsafeRawBufferPointer) -> ObjectOperation? {
        guard let type = ObjectRecordType(rawValue: rawType), raw.count >= 8 else { return nil }
        let reader = ByteReader(raw)
        let object = reader.get(UInt64.self, at: 0)
        func bytes(_ start: Int, _ count: Int) -> [UInt8]? {
            guard start >= 0, count >= 0, start + count <= raw.count else { return nil }
            return Array(UnsafeRawBufferPointer(rebasing: raw[start ..< start + count]))
        }
        let operation: ObjectOperation
        switch type {
        case .create:
            guard raw.count == 32, let objectType = ObjectType(rawValue: reader.get(UInt8.self, at: 8)), objectType != .free else { return nil }
            operation = .create(object: object, type: objectType, mode: reader.get(UInt32.self, at: 12), uid: reader.get(UInt32.self, at: 16),
                                gid: reader.get(UInt32.self, at: 20), timeNs: reader.get(Int64.self, at: 24))
        case .destroy:
            guard raw.count == 8 else { return nil }
            operation = .destroy(object: object)
        case .setAttributes:
            guard raw.count == 72 else { return nil }
            var change = AttributeChange()
            change.mask = AttributeMask(rawValue: reader.get(UInt32.self, at: 8))
            guard AttributeMask.known.isSuperset(of: change.mask) else { return nil }
            change.mode = reader.get(UInt32.self, at: 12)
            change.uid = reader.get(UInt32.self, at: 16)
            change.gid = reader.get(UInt32.self, at: 20)
            change.flags = reader.get(UInt32.self, at: 24)
            change.projid = reader.get(UInt32.self, at: 28)
            change.nlink = reader.get(UInt32.self, at: 32)
            change.rdev = reader.get(UInt32.self, at: 36)
            change.atimeNs = reader.get(Int64.self, at: 40)
            change.mtimeNs = reader.get(Int64.self, at: 48)
            change.ctimeNs = reader.get(Int64.self, at: 56)
            operation = .setAttributes(object: object, change)
        case .writeInline:
            guard raw.count >= 20 else { return nil }
            let length = Int(reader.get(UInt32.self, at: 16))
            guard raw.count == 20 + length, length > 0, let data = bytes(20, length) else { return nil }
            operation = .writeInline(object: object, offset: reader.get(UInt64.self, at: 8), bytes: data)
        case .writeExtent:
            guard raw.count >= 40 else { return nil }
            let length = reader.get(UInt64.self, at: 16)
            let chunkShift = reader.get(UInt8.self, at: 32)
            let copyCount = Int(reader.get(UInt8.self, at: 33))
            let checksumCount = Int(reader.get(UInt32.self, at: 36))
            guard (1...ExtentMapLimits.copiesMax).contains(copyCount), checksumCount <= ExtentMapLimits.chunkCountMax,
                  raw.count == 40 + copyCount * 16 + checksumCount * 4 else { return nil }
            var copies: [Extent] = []
            for index in 0..<copyCount {
                copies.append(Extent(deviceIndex: Int(reader.get(UInt32.self, at: 40 + index * 16)),
                                     offsetBytes: reader.get(UInt64.self, at: 48 + index * 16), lengthBytes: length))
            }
            let base = 40 + copyCount * 16
            let checksums = (0..<checksumCount).map { reader.get(UInt32.self, at: base + $0 * 4) }
            var extent = MappedExtent.unchecked
            extent.logicalOffsetBytes = reader.get(UInt64.self, at: 8)
            extent.lengthBytes = length
            extent.copies = copies
            extent.birthCheckpoint = reader.get(UInt64.self, at: 24)
            extent.chunkShift = chunkShift
            extent.chunkChecksums = checksums
            guard extent.formatViolation == nil,
                  copies.allSatisfy({ $0.offsetBytes % ExtentMapLimits.blockBytes == 0 && $0.offsetBytes <= UInt64.max - length }) else { return nil }
            operation = .writeExtent(object: object, extent)
        case .punch:
            guard raw.count == 24 else { return nil }
            operation = .punch(object: object, offset: reader.get(UInt64.self, at: 8), length: reader.get(UInt64.self, at: 16))
        case .truncate:
            guard raw.count == 16 else { return nil }
            operation = .truncate(object: object, sizeBytes: reader.get(UInt64.self, at: 8))
        case .setXattr:
            guard raw.count >= 16 else { return nil }
            let nameBytes = Int(reader.get(UInt8.self, at: 8))
            let valueBytes = Int(reader.get(UInt32.self, at: 12))
            guard raw.count == 16 + nameBytes + valueBytes, let name = bytes(16, nameBytes), let value = bytes(16 + nameBytes, valueBytes)
            else { return nil }
            operation = .setXattr(object: object, name: name, value: value)
        case .removeXattr:
            guard raw.count >= 9 else { return nil }
            let nameBytes = Int(reader.get(UInt8.self, at: 8))
            guard raw.count == 9 + nameBytes, let name = bytes(9, nameBytes) else { return nil }
            operation = .removeXattr(object: object, name: name)
        case .indexInsert:
            guard raw.count >= 12 else { return nil }
            let mode = reader.get(UInt8.self, at: 8)
            let keyBytes = Int(reader.get(UInt8.self, at: 9))
            let valueBytes = Int(reader.get(UInt16.self, at: 10))
            guard mode <= 1, raw.count == 12 + keyBytes + valueBytes, let key = bytes(12, keyBytes),
                  let value = bytes(12 + keyBytes, valueBytes) else { return nil }
            operation = .indexInsert(object: object, key: key, value: value, upsert: mode == 1)
        case .indexDelete:
            guard raw.count >= 9 else { return nil }
            let keyBytes = Int(reader.get(UInt8.self, at: 8))
            guard raw.count == 9 + keyBytes, let key = bytes(9, keyBytes) else { return nil }
            operation = .indexDelete(object: object, key: key)
        case .nothing:
            guard raw.count == 8, object == 0 else { return nil }
            operation = .nothing
        }
        return operation
    }
}

extension MappedExtent {
    /// A placeholder the decoder fills field by field and then checks with `formatViolation`
    /// (the public initializer traps on a violation, which a corrupt record must not cause).
    static var unchecked: MappedExtent {
        MappedExtent(logicalOffsetBytes: 0, copies: [Extent(deviceIndex: 0, offsetBytes: 0, lengthBytes: 4096)],
                     birthCheckpoint: 0, chunkChecksums: [0])
    }
}
