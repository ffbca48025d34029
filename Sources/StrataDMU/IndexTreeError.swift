// IndexTreeError — what an index tree operation can fail with.
//
// Operating errors only (bad input from a caller, a block that fails its checksum or its format,
// a store that cannot read or write); programmer errors (changing a tree while iterating it, a
// node page of the wrong size) trap. Every case names the tree, and the block pointer or the key
// and the limit involved, so the message alone says what and where.

import StrataPool

public enum IndexTreeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A key longer than `IndexTree.keyBytesMax`.
    case keyTooLong(tree: String, keyBytes: Int, keyBytesMax: Int)
    /// A value longer than `IndexTree.valueBytesMax`.
    case valueTooLong(tree: String, key: [UInt8], valueBytes: Int, valueBytesMax: Int)
    /// `insert(_:_:mode: .mustNotExist)` of a key already present (Lustre's -EEXIST).
    case keyExists(tree: String, key: [UInt8])
    /// `delete` of a key not present (Lustre's -ENOENT).
    case keyNotFound(tree: String, key: [UInt8])
    /// A node block whose crc32c does not match its parent's pointer.
    case checksumMismatch(tree: String, pointer: BlockPointer, found: UInt32)
    /// A node block that passed its checksum but is not a well-formed node where it was found.
    case malformedNode(tree: String, pointer: BlockPointer, reason: String)
    /// A cookie that does not decode.
    case invalidCookie(tree: String, reason: String)
    /// The metadata store failed (I/O error, no space).
    case store(tree: String, pointer: BlockPointer?, MetadataStoreError)
    /// A structural invariant found broken by `verify()`.
    case invariant(tree: String, pointer: BlockPointer?, message: String)

    public var description: String {
        switch self {
        case .keyTooLong(let tree, let keyBytes, let keyBytesMax):
            return "index \(tree): key of \(keyBytes) bytes exceeds the limit of \(keyBytesMax) bytes"
        case .valueTooLong(let tree, let key, let valueBytes, let valueBytesMax):
            return "index \(tree): value of \(valueBytes) bytes for key \(IndexTreeError.show(key)) exceeds the limit of \(valueBytesMax) bytes"
        case .keyExists(let tree, let key):
            return "index \(tree): key \(IndexTreeError.show(key)) already exists"
        case .keyNotFound(let tree, let key):
            return "index \(tree): key \(IndexTreeError.show(key)) not found"
        case .checksumMismatch(let tree, let pointer, let found):
            return "index \(tree): node at \(IndexTreeError.show(pointer)): checksum \(found) does not match its pointer's \(pointer.checksum)"
        case .malformedNode(let tree, let pointer, let reason):
            return "index \(tree): node at \(IndexTreeError.show(pointer)) is malformed: \(reason)"
        case .invalidCookie(let tree, let reason):
            return "index \(tree): invalid iteration cookie: \(reason)"
        case .store(let tree, let pointer, let error):
            return "index \(tree): \(pointer.map { "node at \(IndexTreeError.show($0)): " } ?? "")\(error)"
        case .invariant(let tree, let pointer, let message):
            return "index \(tree): \(pointer.map { "node at \(IndexTreeError.show($0)): " } ?? "")\(message)"
        }
    }

    /// A key as text when it is printable ASCII, else as hex; long keys are cut.
    static func show(_ key: [UInt8]) -> String {
        let shown = key.prefix(64)
        let suffix = key.count > 64 ? "…(\(key.count) bytes)" : ""
        if !shown.isEmpty, shown.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            return "\"" + String(decoding: shown, as: UTF8.self) + "\"" + suffix
        }
        return "0x" + shown.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() + suffix
    }

    static func show(_ pointer: BlockPointer) -> String {
        "device \(pointer.deviceIndex) offset \(pointer.offsetBytes) length \(pointer.lengthBytes) (born in checkpoint \(pointer.birthCheckpoint))"
    }
}
