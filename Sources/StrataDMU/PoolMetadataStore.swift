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
// Limit: a `BlockPointer` holds one device address, so this store requires the pool's
// `copies.metadata` to be 1 and refuses otherwise (a typed error at `writeNew`); mirrored
// metadata needs multi-address pointers (ZFS's DVAs), which come with the transaction layer.
//
// Buffers: O_DIRECT devices need 4096-aligned memory; a caller's unaligned buffer is staged
// through an aligned copy (cold path: checkpoints and cache misses).

import StrataIO
import StrataPool

public final class PoolMetadataStore: MetadataStore {
    public let pool: Pool

    public init(pool: Pool) {
        self.pool = pool
    }

    public func writeNew(_ bytes: UnsafeRawBufferPointer) throws(MetadataStoreError) -> BlockPointer {
        let (extent, extents, birth) = try allocateMetadataPlace(pool: pool, byteCount: bytes.count)
        do {
            try withAligned(bytes) { aligned throws(IOError) in
                try pool.devices[extent.deviceIndex].write(aligned, at: extent.offsetBytes, fua: false)
            }
        } catch {
            pool.allocator.free(extents)
            throw .io(error)
        }
        return BlockPointer(deviceIndex: extent.deviceIndex, offsetBytes: extent.offsetBytes, lengthBytes: extent.lengthBytes,
                            birthCheckpoint: birth, checksum: CRC32C.checksum(bytes))
    }

    public func read(_ pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError) {
        precondition(buffer.count == Int(pointer.lengthBytes), "read buffer \(buffer.count) for a block of \(pointer.lengthBytes)")
        guard pointer.deviceIndex < pool.devices.count else {
            throw .io(.outOfRange(path: "pool '\(pool.name)' device \(pointer.deviceIndex)", offset: pointer.offsetBytes,
                                  length: pointer.lengthBytes, sizeBytes: 0))
        }
        let device = pool.devices[pointer.deviceIndex]
        do {
            if let base = buffer.baseAddress, Int(bitPattern: base) % 4096 == 0 {
                try device.read(into: buffer, at: pointer.offsetBytes)
            } else {
                let staging = allocateAlignedBuffer(byteCount: buffer.count)
                defer { staging.deallocate() }
                try device.read(into: staging, at: pointer.offsetBytes)
                buffer.copyMemory(from: UnsafeRawBufferPointer(staging))
            }
        } catch {
            throw .io(error)
        }
        let found = CRC32C.checksum(UnsafeRawBufferPointer(buffer))
        guard found == pointer.checksum else { throw .checksumMismatch(pointer: pointer, path: device.path, found: found) }
    }

    public func free(_ pointer: BlockPointer) {
        precondition(!pointer.isNull, "free of a null block pointer")
        pool.allocator.free(Extent(deviceIndex: pointer.deviceIndex, offsetBytes: pointer.offsetBytes, lengthBytes: pointer.lengthBytes))
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

/// Allocates the place of a new metadata block (class metadata, one copy) and returns it with the
/// birth checkpoint for its pointer. Shared by the pool-backed stores.
func allocateMetadataPlace(pool: Pool, byteCount: Int) throws(MetadataStoreError) -> (Extent, ExtentCopies, UInt64) {
    precondition(byteCount > 0 && byteCount % 4096 == 0, "metadata block of \(byteCount) bytes")
    let copies = pool.allocator.policy.copies(for: .metadata)
    guard copies == 1 else {
        throw .noSpace("pool '\(pool.name)': copies.metadata=\(copies) needs multi-address block pointers, not supported yet; set copies.metadata=1")
    }
    let birth = pool.allocator.openCheckpoint
    do {
        let extents = try pool.allocator.allocate(.metadata, lengthBytes: UInt64(byteCount))
        return (extents[0], extents, birth)
    } catch {
        throw .noSpace(error.description)
    }
}
