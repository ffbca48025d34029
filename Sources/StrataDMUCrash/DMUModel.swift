// DMUModel — the object store as a dictionary: what every object holds after a prefix of
// transactions, and the snapshot the oracle compares.
//
// Theory. The model applies each step with the store's documented semantics and nothing else:
// a write extends the size and fills the gap with zeros; a punch zeroes [offset, end) inside
// the size and keeps the size; a truncate cuts or zero-extends; a create starts at size 0 with
// every time set to `timeNs` and nlink 2 for a directory, 1 otherwise; setAttributes changes
// the masked fields only; xattrs and index entries are maps. The same model serves the
// generator (keyed by slot, to draw valid steps) and the system under test (keyed by object
// number, to describe what each transaction did).
//
// A snapshot condenses the model to what can be compared cheaply and printed: per object its
// type, size, attributes, a crc32c of its bytes, each xattr's length and crc32c, and the number
// and crc32c of its index entries in key order. `ObjectSnapshot.read(from:)` builds the same
// thing from a store by reading every object whole, so "the image equals the model after prefix
// k" is one `==`.

import StrataDMU
import StrataIO

/// One object of the model.
public struct ModelObject: Sendable {
    public var type: ObjectType
    public var data: [UInt8] = []
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32 = 0
    public var nlink: UInt32
    public var flags: UInt32 = 0
    public var projid: UInt32 = 0
    public var rdev: UInt32 = 0
    public var atimeNs: Int64
    public var mtimeNs: Int64
    public var ctimeNs: Int64
    public var btimeNs: Int64
    public var xattrs: [String: [UInt8]] = [:]
    public var index: [[UInt8]: [UInt8]] = [:]

    init(type: ObjectType, mode: UInt32, uid: UInt32, timeNs: Int64) {
        self.type = type
        self.mode = mode
        self.uid = uid
        self.nlink = type == .directory ? 2 : 1
        self.atimeNs = timeNs
        self.mtimeNs = timeNs
        self.ctimeNs = timeNs
        self.btimeNs = timeNs
    }

    public var sizeBytes: UInt64 { UInt64(data.count) }
    public var isIndex: Bool { type == .index || type == .directory }
}

/// The model: objects by identity (slot for the generator, object number for the system).
public struct DMUModel: Sendable {
    public private(set) var objects: [UInt64: ModelObject] = [:]
    private var cache: [UInt64: ObjectSnapshot] = [:]

    public init() {}

    /// Applies `step` to object `id` (the step's slot already resolved). Bad-input steps change
    /// nothing. Preconditions: the step is valid on the model (the generator only draws such).
    public mutating func apply(_ step: DMUStep, to id: UInt64) {
        cache[id] = nil
        switch step {
        case .create(_, let type, let mode, let uid, let timeNs):
            precondition(objects[id] == nil, "model: create of existing \(id)")
            objects[id] = ModelObject(type: type, mode: mode, uid: uid, timeNs: timeNs)
        case .write(_, let offset, let length, let seed):
            let bytes = DMUData.bytes(seed: seed, count: length)
            modify(id) { object in
                let end = Int(offset) + length
                if end > object.data.count { object.data.append(contentsOf: repeatElement(0, count: end - object.data.count)) }
                object.data.withUnsafeMutableBytes { raw in
                    bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: raw[Int(offset) ..< end]).copyMemory(from: $0) }
                }
            }
        case .punch(_, let offset, let length):
            modify(id) { object in
                let start = min(Int(offset), object.data.count)
                let end = min(Int(offset + length), object.data.count)
                if start < end {
                    object.data.withUnsafeMutableBytes { raw in
                        _ = UnsafeMutableRawBufferPointer(rebasing: raw[start ..< end]).initializeMemory(as: UInt8.self, repeating: 0)
                    }
                }
            }
        case .truncate(_, let size):
            modify(id) { object in
                if Int(size) < object.data.count {
                    object.data.removeSubrange(Int(size)...)
                } else {
                    object.data.append(contentsOf: repeatElement(0, count: Int(size) - object.data.count))
                }
            }
        case .setAttributes(_, let change):
            modify(id) { object in
                let mask = change.mask
                if mask.contains(.mode) { object.mode = change.mode }
                if mask.contains(.uid) { object.uid = change.uid }
                if mask.contains(.gid) { object.gid = change.gid }
                if mask.contains(.flags) { object.flags = change.flags }
                if mask.contains(.projid) { object.projid = change.projid }
                if mask.contains(.nlink) { object.nlink = change.nlink }
                if mask.contains(.rdev) { object.rdev = change.rdev }
                if mask.contains(.atime) { object.atimeNs = change.atimeNs }
                if mask.contains(.mtime) { object.mtimeNs = change.mtimeNs }
                if mask.contains(.ctime) { object.ctimeNs = change.ctimeNs }
            }
        case .setXattr(_, let name, let valueBytes, let seed):
            modify(id) { $0.xattrs[name] = DMUData.bytes(seed: seed, count: valueBytes) }
        case .removeXattr(_, let name):
            modify(id) { object in
                let removed = object.xattrs.removeValue(forKey: name)
                precondition(removed != nil, "model: remove of absent xattr \(name)")
            }
        case .indexInsert(_, let key, let valueBytes, let seed, let upsert):
            modify(id) { object in
                precondition(upsert || object.index[key] == nil, "model: insert of present key")
                object.index[key] = DMUData.bytes(seed: seed, count: valueBytes)
            }
        case .indexDelete(_, let key):
            modify(id) { object in
                let removed = object.index.removeValue(forKey: key)
                precondition(removed != nil, "model: delete of absent key")
            }
        case .destroy:
            let removed = objects.removeValue(forKey: id)
            precondition(removed != nil, "model: destroy of absent \(id)")
        case .removeMissingXattr, .insertExistingKey:
            break
        }
    }

    private mutating func modify(_ id: UInt64, _ body: (inout ModelObject) -> Void) {
        guard var object = objects.removeValue(forKey: id) else { preconditionFailure("model: object \(id) does not exist") }
        body(&object)
        objects[id] = object
    }

    /// The snapshot of every object (cached per object until it changes).
    public mutating func snapshot() -> StoreSnapshot {
        var result: [UInt64: ObjectSnapshot] = [:]
        for (id, object) in objects {
            if let cached = cache[id] {
                result[id] = cached
            } else {
                let snapshot = ObjectSnapshot(object)
                cache[id] = snapshot
                result[id] = snapshot
            }
        }
        return StoreSnapshot(objects: result)
    }
}

/// What the oracle compares about one object.
public struct ObjectSnapshot: Equatable, Sendable, CustomStringConvertible {
    public var type: ObjectType
    public var sizeBytes: UInt64
    /// mode, uid, gid, nlink, flags, projid, rdev, atime, mtime, ctime, btime.
    public var attributes: [Int64]
    public var dataDigest: UInt32
    /// "name=length:crc", sorted by name.
    public var xattrs: [String]
    public var indexEntries: Int
    public var indexDigest: UInt32

    init(_ object: ModelObject) {
        type = object.type
        sizeBytes = object.sizeBytes
        attributes = [Int64(object.mode), Int64(object.uid), Int64(object.gid), Int64(object.nlink), Int64(object.flags),
                      Int64(object.projid), Int64(object.rdev), object.atimeNs, object.mtimeNs, object.ctimeNs, object.btimeNs]
        dataDigest = CRC32C.checksum(object.data)
        xattrs = object.xattrs.keys.sorted().map { ObjectSnapshot.xattrEntry($0, object.xattrs[$0]!) }
        indexEntries = object.index.count
        var digest: UInt32 = 0
        for key in object.index.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            digest = ObjectSnapshot.indexDigest(key: key, value: object.index[key]!, continuing: digest)
        }
        indexDigest = digest
    }

    /// Reads object `object` of `store` whole: attributes, every byte (checksum-verified by the
    /// store), every xattr, every index entry in iteration order.
    public init(reading object: UInt64, from store: ObjectStore) throws {
        let dnode = try store.attributes(object)
        type = dnode.type
        sizeBytes = dnode.sizeBytes
        attributes = [Int64(dnode.mode), Int64(dnode.uid), Int64(dnode.gid), Int64(dnode.nlink), Int64(dnode.flags),
                      Int64(dnode.projid), Int64(dnode.rdev), dnode.atimeNs, dnode.mtimeNs, dnode.ctimeNs, dnode.btimeNs]
        var digest = CRC32C.checksum([UInt8]())
        if dnode.type == .regular || dnode.type == .symlink {
            var offset: UInt64 = 0
            while offset < dnode.sizeBytes {
                let length = Int(min(dnode.sizeBytes - offset, 4 << 20))
                let bytes = try store.read(object, at: offset, length: length)
                guard bytes.count == length else {
                    throw DMUCrashError("object \(object): read of \(length) bytes at \(offset) returned \(bytes.count) (size \(dnode.sizeBytes))")
                }
                digest = CRC32C.checksum(bytes, continuing: digest)
                offset += UInt64(length)
            }
        }
        dataDigest = digest
        var entries: [String] = []
        for name in try store.xattrNames(object) {
            guard let value = try store.xattr(object, name: name) else {
                throw DMUCrashError("object \(object): xattr \(name) is listed but has no value")
            }
            entries.append(ObjectSnapshot.xattrEntry(name, value))
        }
        xattrs = entries.sorted()
        var count = 0
        var indexDigest: UInt32 = 0
        if dnode.type == .index || dnode.type == .directory {
            var position = IndexPosition.first
            while true {
                let batch = try store.indexEntries(object, from: position, limit: 64)
                for entry in batch.entries {
                    count += 1
                    indexDigest = ObjectSnapshot.indexDigest(key: entry.key, value: entry.value, continuing: indexDigest)
                }
                guard !batch.reachedEnd, let cookie = batch.cookie else { break }
                position = .after(cookie)
            }
        }
        indexEntries = count
        self.indexDigest = indexDigest
    }

    static func xattrEntry(_ name: String, _ value: [UInt8]) -> String {
        "\(name)=\(value.count):\(String(CRC32C.checksum(value), radix: 16))"
    }

    static func indexDigest(key: [UInt8], value: [UInt8], continuing digest: UInt32) -> UInt32 {
        var digest = CRC32C.checksum([UInt8(truncatingIfNeeded: key.count), UInt8(truncatingIfNeeded: key.count >> 8)], continuing: digest)
        digest = CRC32C.checksum(key, continuing: digest)
        digest = CRC32C.checksum([UInt8(truncatingIfNeeded: value.count), UInt8(truncatingIfNeeded: value.count >> 8)], continuing: digest)
        return CRC32C.checksum(value, continuing: digest)
    }

    public var description: String {
        var text = "\(type) size \(sizeBytes)"
        if type == .regular || type == .symlink { text += " data \(String(dataDigest, radix: 16))" }
        text += " attrs \(attributes.map(String.init).joined(separator: ","))"
        if !xattrs.isEmpty { text += " xattrs [\(xattrs.joined(separator: " "))]" }
        if type == .index || type == .directory { text += " index \(indexEntries):\(String(indexDigest, radix: 16))" }
        return text
    }
}

/// What the oracle compares: every object of the store.
public struct StoreSnapshot: Equatable, Sendable, CustomStringConvertible {
    public var objects: [UInt64: ObjectSnapshot]

    public init(objects: [UInt64: ObjectSnapshot] = [:]) { self.objects = objects }

    public var description: String {
        guard !objects.isEmpty else { return "no objects" }
        return "\(objects.count) objects {" + objects.keys.sorted().map { "#\($0): \(objects[$0]!)" }.joined(separator: "; ") + "}"
    }
}

/// A failure of the store or of its model during a workload or a check (not a crash).
public struct DMUCrashError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
