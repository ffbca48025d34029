// MetadataStore — where the DMU's copy-on-write metadata blocks live.
//
// Theory. Every metadata structure of the DMU (index-tree nodes, dnode-table blocks, extent-map
// blocks, xattr blocks) is a block that is never overwritten in place: a changed block is written
// to a newly allocated place at the next checkpoint and its parent's pointer is updated; the old
// place is freed in that checkpoint and becomes reusable once the checkpoint after it is durable
// (the pool allocator's deferred frees). The checksum of a block lives in its parent's pointer
// (`BlockPointer.checksum`), so a block that was torn, misdirected or rotted is caught on read.
//
// The protocol keeps the structures independent of the pool, so they can be tested against
// `MemoryMetadataStore` and run on a `PoolMetadataStore` unchanged:
//   - `writeNew` allocates (class metadata), writes, and returns the pointer with the checksum
//     and the birth checkpoint; nothing is durable until the pool's next commit flushes;
//   - `read` fills the buffer and verifies the checksum (a mismatch is an error naming the
//     pointer); a block with two copies is read from the second when the first fails, and an
//     error names every copy only when all fail;
//   - `free` releases a block the next checkpoint no longer references (every copy; deferred by
//     the pool).
// Block lengths are multiples of 4 KiB.

import StrataIO
import StrataPool
import Synchronization

public enum MetadataStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The block read at `pointer` (one copy: a two-copy block's error names the copy alone, as a
    /// one-address pointer) does not match its checksum.
    case checksumMismatch(pointer: BlockPointer, path: String, found: UInt32)
    case noSpace(String)
    case io(IOError)
    /// The pool keeps more copies of metadata than a block pointer can name.
    case tooManyCopies(pool: String, copies: Int, copiesMax: Int)
    /// The pointer's bytes are not a form this build can follow (`BlockPointer.formatProblem`).
    case unreadablePointer(pointer: BlockPointer, problem: String)
    /// Every copy of a multi-copy block failed: one error per copy, in copy order.
    case everyCopyFailed(pointer: BlockPointer, errors: [MetadataStoreError])

    public var description: String {
        switch self {
        case .checksumMismatch(let pointer, let path, let found):
            return "\(path): metadata block at offset \(pointer.offsetBytes) length \(pointer.lengthBytes) (born in checkpoint \(pointer.birthCheckpoint)): checksum \(found) does not match its pointer's \(pointer.checksum)"
        case .noSpace(let message): return message
        case .io(let error): return error.description
        case .tooManyCopies(let pool, let copies, let copiesMax):
            return "pool '\(pool)' keeps copies.metadata=\(copies); block pointers name at most \(copiesMax) copies (two addresses fit in a 32-byte pointer): set copies.metadata to 1...\(copiesMax)"
        case .unreadablePointer(let pointer, let problem):
            return "metadata block pointer (device \(pointer.deviceIndex) offset \(pointer.offsetBytes), born in checkpoint \(pointer.birthCheckpoint)): \(problem)"
        case .everyCopyFailed(let pointer, let errors):
            return "metadata block of \(pointer.lengthBytes) bytes born in checkpoint \(pointer.birthCheckpoint): all \(errors.count) copies failed: "
                + errors.enumerated().map { "copy \($0.offset): \($0.element)" }.joined(separator: "; ")
        }
    }
}

public protocol MetadataStore: AnyObject, Sendable {
    /// Allocates a place for `bytes` (a multiple of 4 KiB), writes them there, and returns the
    /// pointer (with crc32c and the birth checkpoint).
    func writeNew(_ bytes: UnsafeRawBufferPointer) throws(MetadataStoreError) -> BlockPointer
    /// Reads the block `pointer` names into `buffer` (exactly `pointer.lengthBytes`) and verifies
    /// its checksum.
    func read(_ pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError)
    /// The block is no longer referenced from the checkpoint being built.
    func free(_ pointer: BlockPointer)
}

/// An in-memory MetadataStore for tests: blocks in a dictionary, offsets handed out upwards,
/// frees recorded (so tests can check that every block is freed exactly once).
public final class MemoryMetadataStore: MetadataStore {
    struct State {
        var blocks: [UInt64: [UInt8]] = [:]
        var nextOffset: UInt64 = 1 << 20
        var freed: Set<UInt64> = []
    }
    let state = Mutex(State())
    public let birthCheckpoint: UInt64

    public init(birthCheckpoint: UInt64 = 1) { self.birthCheckpoint = birthCheckpoint }

    public func writeNew(_ bytes: UnsafeRawBufferPointer) throws(MetadataStoreError) -> BlockPointer {
        precondition(bytes.count > 0 && bytes.count % 4096 == 0, "metadata block of \(bytes.count) bytes")
        let copy = [UInt8](bytes)
        let checksum = CRC32C.checksum(bytes)
        let offset = state.withLock { state -> UInt64 in
            let offset = state.nextOffset
            state.nextOffset += UInt64(copy.count)
            state.blocks[offset] = copy
            return offset
        }
        return BlockPointer(deviceIndex: 0, offsetBytes: offset, lengthBytes: UInt64(copy.count),
                            birthCheckpoint: birthCheckpoint, checksum: checksum)
    }

    public func read(_ pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError) {
        if let problem = pointer.formatProblem { throw .unreadablePointer(pointer: pointer, problem: problem) }
        precondition(buffer.count == Int(pointer.lengthBytes), "read buffer \(buffer.count) for a block of \(pointer.lengthBytes)")
        let bytes = state.withLock { $0.blocks[pointer.offsetBytes] }
        guard let bytes, bytes.count == buffer.count else {
            throw .io(.device(path: "memory", operation: "read", offset: pointer.offsetBytes, length: pointer.lengthBytes, errno: 5))
        }
        buffer.copyBytes(from: bytes)
        let found = CRC32C.checksum(UnsafeRawBufferPointer(buffer))
        guard found == pointer.checksum else { throw .checksumMismatch(pointer: pointer, path: "memory", found: found) }
    }

    public func free(_ pointer: BlockPointer) {
        state.withLock { state in
            precondition(state.blocks[pointer.offsetBytes] != nil, "free of unknown block \(pointer.offsetBytes)")
            let inserted = state.freed.insert(pointer.offsetBytes).inserted
            precondition(inserted, "double free of metadata block \(pointer.offsetBytes)")
        }
    }

    /// Blocks written and not freed.
    public var liveBlockCount: Int { state.withLock { $0.blocks.count - $0.freed.count } }

    /// Flips one byte of a stored block (tests of checksum verification).
    public func corrupt(_ pointer: BlockPointer, byteOffset: Int) {
        state.withLock { $0.blocks[pointer.offsetBytes]?[byteOffset] ^= 0xFF }
    }
}
