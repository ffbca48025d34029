// PoolMetadataStore — the MetadataStore of a real pool: metadata blocks allocated from the
// pool's metadata class, written to its devices, checksummed in their pointers.
//
// Theory. `writeNew` allocates from `AllocationClass.metadata` (metadata devices, then data
// devices), writes the block, and returns a pointer born in the allocator's open checkpoint. It
// does not flush: the pool's commit flushes every device before the uberblock that makes the
// block reachable (Pool.swift, commit protocol), which is the only moment it needs to be durable.
// `free` hands the place back to the allocator, which defers it until the next checkpoint is
// durable, so the checkpoint still on disk never loses a block it references.
//
// Copies (ZFS's ditto blocks). With the pool's `copies.metadata` = 2 the allocator hands out two
// places on two distinct devices (metadata devices first, then data devices: PoolAllocator,
// "Copies"); `writeNew` writes the block to both and returns a pointer naming both
// (BlockPointer's two-address form). `read` reads copy 0 and verifies it; on an I/O error or a
// checksum mismatch it reads copy 1, counting the fallback (`fallbackReadCount`); only when both
// fail is the error thrown, naming each copy's failure (`everyCopyFailed`). `free` frees every
// copy. A bad copy is not repaired in place: it stays bad until copy-on-write moves the block
// (the next change to it writes both copies anew); `ObjectStore.check` reads every copy and
// reports a bad one. Rewriting it from the good copy (DESIGN.md's self-healing) comes with
// tiering, which owns moving blocks between devices.
//
// Limit: a pointer names at most `BlockPointer.copiesMax` = 2 copies (two addresses fit in its
// 32 bytes); `copies.metadata` above that is refused with `MetadataStoreError.tooManyCopies` at
// the first metadata write (and by `ObjectStore.open` up front).
//
// Buffers: O_DIRECT devices need 4096-aligned memory; a caller's unaligned buffer is staged
// through an aligned copy (cold path: checkpoints and cache misses).

import StrataIO
import StrataPool
import Synchronization

public final class PoolMetadataStore: MetadataStore {
    public let pool: Pool
    private let fallbacks = Atomic<Int>(0)

    public init(pool: Pool) {
        self.pool = pool
    }

    /// Reads served by a later copy after copy 0 failed (an I/O error or a checksum mismatch).
    public var fallbackReadCount: Int { fallbacks.load(ordering: .relaxed) }

    public func writeNew(_ bytes: UnsafeRawBufferPointer) throws(MetadataStoreError) -> BlockPointer {
        let (copies, birth) = try allocateMetadataPlace(pool: pool, byteCount: bytes.count)
        do {
            try withAligned(bytes) { aligned throws(IOError) in
                for extent in copies {
                    try pool.devices[extent.deviceIndex].write(aligned, at: extent.offsetBytes, fua: false)
                }
            }
        } catch {
            pool.allocator.free(copies)
            throw .io(error)
        }
        return BlockPointer(copies: copies, birthCheckpoint: birth, checksum: CRC32C.checksum(bytes))
    }

    public func read(_ pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError) {
        if let problem = pointer.formatProblem { throw .unreadablePointer(pointer: pointer, problem: problem) }
        precondition(buffer.count == Int(pointer.lengthBytes), "read buffer \(buffer.count) for a block of \(pointer.lengthBytes)")
        guard pointer.copyCount > 1 else {
            try readCopy(pointer, copy: 0, into: buffer)
            return
        }
        var errors: [MetadataStoreError] = []
        for copy in 0 ..< pointer.copyCount {
            do {
                try readCopy(pointer, copy: copy, into: buffer)
                if copy > 0 { fallbacks.add(1, ordering: .relaxed) }
                return
            } catch {
                errors.append(error)
            }
        }
        throw .everyCopyFailed(pointer: pointer, errors: errors)
    }

    /// Reads copy `copy` of the block alone into `buffer` and verifies its checksum; no fallback
    /// (the check verifies every copy with it). An error names that copy as a one-address pointer.
    public func readCopy(_ pointer: BlockPointer, copy: Int, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError) {
        if let problem = pointer.formatProblem { throw .unreadablePointer(pointer: pointer, problem: problem) }
        precondition(buffer.count == Int(pointer.lengthBytes), "read buffer \(buffer.count) for a block of \(pointer.lengthBytes)")
        let place = pointer.pointer(toCopy: copy)
        guard place.deviceIndex < pool.devices.count else {
            throw .io(.outOfRange(path: "pool '\(pool.name)' device \(place.deviceIndex)", offset: place.offsetBytes,
                                  length: place.lengthBytes, sizeBytes: 0))
        }
        let device = pool.devices[place.deviceIndex]
        do {
            if let base = buffer.baseAddress, Int(bitPattern: base) % 4096 == 0 {
                try device.read(into: buffer, at: place.offsetBytes)
            } else {
                let staging = allocateAlignedBuffer(byteCount: buffer.count)
                defer { staging.deallocate() }
                try device.read(into: staging, at: place.offsetBytes)
                buffer.copyMemory(from: UnsafeRawBufferPointer(staging))
            }
        } catch {
            throw .io(error)
        }
        let found = CRC32C.checksum(UnsafeRawBufferPointer(buffer))
        guard found == place.checksum else { throw .checksumMismatch(pointer: place, path: device.path, found: found) }
    }

    public func free(_ pointer: BlockPointer) {
        precondition(!pointer.isNull, "free of a null block pointer")
        // A pointer this build cannot decode names no place it knows: freeing a guessed place
        // could free someone else's block. Its space stays allocated (a leak `check` reports).
        guard pointer.formatProblem == nil else { return }
        pool.allocator.free(pointer.copies)
    }

    private func withAligned(_ bytes: UnsafeRawBufferPointer,
                             _ body: (UnsafeRawBufferPointer) throws(IOError) -> Void) throws(IOError) {
        if let base = bytes.baseAddress, Int(bitPattern: base) % 4096 == 0 {
            try body(bytes)
            return
        }
        let staging = allocateAlignedBuffer(byteCount: bytes.count)
        defer { staging.deallocate() }
        staging.copyMemory(from: bytes)
        try body(UnsafeRawBufferPointer(staging))
    }
}

/// Allocates the places of a new metadata block (class metadata, `copies.metadata` copies on
/// distinct devices, at most `BlockPointer.copiesMax`) and returns them with the birth
/// checkpoint for its pointer. Shared by the pool-backed stores.
func allocateMetadataPlace(pool: Pool, byteCount: Int) throws(MetadataStoreError) -> (ExtentCopies, UInt64) {
    precondition(byteCount > 0 && byteCount % 4096 == 0, "metadata block of \(byteCount) bytes")
    let copiesWanted = pool.allocator.policy.copies(for: .metadata)
    guard copiesWanted <= BlockPointer.copiesMax else {
        throw .tooManyCopies(pool: pool.name, copies: copiesWanted, copiesMax: BlockPointer.copiesMax)
    }
    let birth = pool.allocator.openCheckpoint
    let extents: ExtentCopies
    do {
        extents = try pool.allocator.allocate(.metadata, lengthBytes: UInt64(byteCount))
    } catch {
        throw .noSpace(error.description)
    }
    guard extents.count <= BlockPointer.copiesMax else {
        // The policy changed between the look and the allocation.
        pool.allocator.free(extents)
        throw .tooManyCopies(pool: pool.name, copies: extents.count, copiesMax: BlockPointer.copiesMax)
    }
    precondition(extents.count >= 1 && extents.allSatisfy { $0.lengthBytes == UInt64(byteCount) && $0.offsetBytes % 4096 == 0 },
                 "metadata places \(extents) for \(byteCount) bytes")
    precondition(extents.count < 2 || extents[0].deviceIndex != extents[1].deviceIndex, "two metadata copies on one device: \(extents)")
    return (extents, birth)
}
