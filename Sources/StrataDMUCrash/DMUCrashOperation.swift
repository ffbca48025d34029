// DMUCrashOperation — what an object-store crash workload does: transactions of several steps,
// checkpoints, syncs and batch starts.
//
// Theory. A workload is a pure function of its seed (Workload.swift), but object numbers are
// handed out by the store (`declareCreate`), so steps name objects by *slot*: slot k is the
// object the k-th create of the workload made. The system under test binds each slot to the
// number its create got; the generator, which never sees a store, mirrors the state in a model
// keyed by slot. Bytes are named by a seed and a length (`DMUData.bytes`), so operations stay
// small to print and the workload, the live run and the model agree on every byte.

import StrataDMU
import StrataTesting

/// One operation inside a transaction.
public enum DMUStep: Sendable, CustomStringConvertible {
    case create(slot: Int, type: ObjectType, mode: UInt32, uid: UInt32, timeNs: Int64)
    /// `length` bytes of `DMUData.bytes(seed:count:)` at `offset` (regular objects).
    case write(slot: Int, offset: UInt64, length: Int, seed: UInt64)
    case punch(slot: Int, offset: UInt64, length: UInt64)
    case truncate(slot: Int, sizeBytes: UInt64)
    case setAttributes(slot: Int, AttributeChange)
    case setXattr(slot: Int, name: String, valueBytes: Int, seed: UInt64)
    case removeXattr(slot: Int, name: String)
    /// Insert (`upsert` false: the key must be new) a value of `valueBytes` bytes seeded by `seed`.
    case indexInsert(slot: Int, key: [UInt8], valueBytes: Int, seed: UInt64, upsert: Bool)
    case indexDelete(slot: Int, key: [UInt8])
    case destroy(slot: Int)
    /// Bad input the store must refuse with a typed error and no change, inside a transaction
    /// that goes on: removing an xattr that is not there.
    case removeMissingXattr(slot: Int, name: String)
    /// Bad input: a `mustNotExist` insert of a key that is present.
    case insertExistingKey(slot: Int, key: [UInt8])

    public var slot: Int {
        switch self {
        case .create(let slot, _, _, _, _), .write(let slot, _, _, _), .punch(let slot, _, _), .truncate(let slot, _),
             .setAttributes(let slot, _), .setXattr(let slot, _, _, _), .removeXattr(let slot, _),
             .indexInsert(let slot, _, _, _, _), .indexDelete(let slot, _), .destroy(let slot),
             .removeMissingXattr(let slot, _), .insertExistingKey(let slot, _):
            return slot
        }
    }

    public var description: String {
        switch self {
        case .create(let slot, let type, let mode, _, _): return "create s\(slot) \(type) mode \(String(mode, radix: 8))"
        case .write(let slot, let offset, let length, _): return "write s\(slot) \(offset)+\(length)"
        case .punch(let slot, let offset, let length): return "punch s\(slot) \(offset)+\(length)"
        case .truncate(let slot, let size): return "truncate s\(slot) to \(size)"
        case .setAttributes(let slot, let change): return "setattr s\(slot) mask \(String(change.mask.rawValue, radix: 16))"
        case .setXattr(let slot, let name, let bytes, _): return "setxattr s\(slot) \(name) (\(bytes) B)"
        case .removeXattr(let slot, let name): return "rmxattr s\(slot) \(name)"
        case .indexInsert(let slot, let key, let bytes, _, let upsert): return "\(upsert ? "upsert" : "insert") s\(slot) \(DMUData.show(key)) (\(bytes) B)"
        case .indexDelete(let slot, let key): return "delete s\(slot) \(DMUData.show(key))"
        case .destroy(let slot): return "destroy s\(slot)"
        case .removeMissingXattr(let slot, let name): return "rmxattr s\(slot) \(name) (absent: must fail)"
        case .insertExistingKey(let slot, let key): return "insert s\(slot) \(DMUData.show(key)) (present: must fail)"
        }
    }
}

/// One operation of a workload (what the harness issues and acknowledges).
public enum DMUOperation: Sendable, CustomStringConvertible {
    /// One transaction: declare every step, start, perform them in order, stop. Acknowledged by
    /// its commit callback.
    case transaction(id: Int, steps: [DMUStep])
    /// `ObjectStore.checkpoint()`; acknowledged when it returns.
    case checkpoint
    /// `ObjectStore.sync()`; acknowledged when it returns.
    case sync
    /// `ObjectStore.commitAsync()` (with the caller-leads writer: writes the batch now).
    case commitAsync

    public var description: String {
        switch self {
        case .transaction(let id, let steps):
            let shown = steps.prefix(4).map(\.description).joined(separator: ", ")
            return "t\(id) [\(shown)\(steps.count > 4 ? ", … \(steps.count) steps" : "")]"
        case .checkpoint: return "checkpoint"
        case .sync: return "sync"
        case .commitAsync: return "commitAsync"
        }
    }
}

/// Deterministic bytes, and how keys are printed.
public enum DMUData {
    /// `count` bytes drawn from `seed` (8 at a time: fast enough in a debug build for MiBs).
    public static func bytes(seed: UInt64, count: Int) -> [UInt8] {
        // The seed is mixed first (splitmix64's increment and another odd constant), as the
        // recorded workloads were generated: the same seed gives the same bytes as before.
        var random = SeededRandom(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 0x2545_F491_4F6C_DD1D)
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { raw in
            var offset = 0
            while offset + 8 <= count {
                raw.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
                offset += 8
            }
            var last = random.next()
            while offset < count {
                raw[offset] = UInt8(truncatingIfNeeded: last)
                last >>= 8
                offset += 1
            }
        }
        return result
    }

    public static func show(_ key: [UInt8]) -> String {
        let text = String(decoding: key.prefix(24), as: UTF8.self)
        return key.count > 24 ? "\(text)…(\(key.count) B)" : text
    }
}
