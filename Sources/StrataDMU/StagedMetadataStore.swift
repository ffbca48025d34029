// StagedMetadataStore — the object store's MetadataStore: blocks written during a checkpoint's
// switch are staged in memory and reach the devices after foreground work has resumed.
//
// Theory. A checkpoint encodes every dirty metadata block while transactions are held off (the
// switch, ObjectStore+Checkpoint.swift), and the switch must stay short: memory work only. So
// `writeNew` allocates the place (class metadata, an allocation of the checkpoint being cut),
// copies the bytes into an aligned buffer, computes the checksum for the pointer, and *stages*
// the block; `writeStaged` writes every staged block after the switch, before the pool's commit
// flushes the devices and writes the uberblock naming them. In between, the structures already
// hold pointers to staged places, and a read of one (a clean index node evicted and read back, a
// table block looked up) is served from the staged copy: `read` consults the staging table before
// the device. Once written, the staged copies are dropped. A block with two copies (the pool's
// `copies.metadata` = 2, PoolMetadataStore) is staged once, under copy 0's place, and written to
// both places by `writeStaged`.
//
// Invariants: a staged place is allocated and referenced by nothing durable until the uberblock;
// every staged block is written before `commitPrepared`, even one freed meanwhile (freed
// after the cut, it is still referenced by the checkpoint being committed).
// Crash safety: staged blocks are not durable; a crash before the uberblock loses them and the
// allocation with them (the allocator's durable maps never counted them).

import StrataIO
import StrataPool

public final class StagedMetadataStore: MetadataStore, @unchecked Sendable {
    struct Address: Hashable {
        var deviceIndex: Int
        var offsetBytes: UInt64
    }

    /// A staged block: its bytes, and the place of its second copy when it has one.
    struct StagedBlock {
        var buffer: UnsafeMutableRawBufferPointer
        var secondCopy: Address?
    }

    public let pool: Pool
    /// Reads of blocks not staged, and frees.
    let direct: PoolMetadataStore
    /// Keyed by copy 0's place. Guarded by `lock`.
    private var blocks: [Address: StagedBlock] = [:]
    private let lock = Monitor()

    private func withStaged<Result>(_ body: (inout [Address: StagedBlock]) -> Result) -> Result {
        lock.lock()
        defer { lock.unlock() }
        return body(&blocks)
    }

    public init(pool: Pool) {
        self.pool = pool
        self.direct = PoolMetadataStore(pool: pool)
    }

    deinit {
        withStaged { blocks in
            for block in blocks.values { block.buffer.deallocate() }
        }
    }

    /// Blocks staged and not written yet.
    public var stagedBlockCount: Int { withStaged { $0.count } }
    /// Bytes the staged blocks will write, every copy counted.
    public var stagedBytes: Int { withStaged { $0.values.reduce(0) { $0 + $1.buffer.count * ($1.secondCopy == nil ? 1 : 2) } } }
    /// Reads from the devices served by a second copy (`PoolMetadataStore.fallbackReadCount`).
    public var fallbackReadCount: Int { direct.fallbackReadCount }

    public func writeNew(_ bytes: UnsafeRawBufferPointer) throws(MetadataStoreError) -> BlockPointer {
        precondition(!pool.isReadOnly, "metadata write on a read-only pool")
        let (copies, birth) = try allocateMetadataPlace(pool: pool, byteCount: bytes.count)
        let pointer = BlockPointer(copies: copies, birthCheckpoint: birth, checksum: CRC32C.checksum(bytes))
        let buffer = allocateAlignedBuffer(byteCount: bytes.count)
        buffer.copyMemory(from: bytes)
        let staged = StagedBlock(buffer: buffer, secondCopy: pointer.secondCopy.map { Address(deviceIndex: $0.deviceIndex, offsetBytes: $0.offsetBytes) })
        let previous = withStaged { $0.updateValue(staged, forKey: Address(deviceIndex: pointer.deviceIndex, offsetBytes: pointer.offsetBytes)) }
        precondition(previous == nil, "metadata place \(copies) staged twice")
        return pointer
    }

    public func read(_ pointer: BlockPointer, into buffer: UnsafeMutableRawBufferPointer) throws(MetadataStoreError) {
        if let problem = pointer.formatProblem { throw .unreadablePointer(pointer: pointer, problem: problem) }
        precondition(buffer.count == Int(pointer.lengthBytes), "read buffer \(buffer.count) for a block of \(pointer.lengthBytes)")
        let address = Address(deviceIndex: pointer.deviceIndex, offsetBytes: pointer.offsetBytes)
        let hit = withStaged { blocks -> Bool in
            guard let block = blocks[address] else { return false }
            precondition(block.buffer.count == buffer.count, "staged block of \(block.buffer.count) bytes read as \(buffer.count)")
            assert(block.secondCopy == pointer.secondCopy.map { Address(deviceIndex: $0.deviceIndex, offsetBytes: $0.offsetBytes) },
                         "staged block at \(address) read through a pointer with other copies")
            buffer.copyMemory(from: UnsafeRawBufferPointer(block.buffer))
            return true
        }
        guard hit else {
            try direct.read(pointer, into: buffer)          // from the device, verified
            return
        }
        let found = CRC32C.checksum(UnsafeRawBufferPointer(buffer))
        precondition(found == pointer.checksum, "staged block at \(pointer.offsetBytes) does not match its pointer's checksum")
    }

    public func free(_ pointer: BlockPointer) {
        // A staged block is still written: the checkpoint being committed may reference it (a
        // block cut in checkpoint N and freed by a transaction of N+1). The free is deferred.
        direct.free(pointer)
    }

    /// Writes every staged block to every copy's place (adjacent places of a device in one write,
    /// up to 1 MiB), then drops them. Not durable: the pool's commit flushes. On an error the
    /// blocks stay staged.
    public func writeStaged() throws(MetadataStoreError) {
        let snapshot = withStaged { blocks in blocks.map { ($0.key, $0.value) } }
        var writes: [(Address, UnsafeMutableRawBufferPointer)] = []
        writes.reserveCapacity(snapshot.count * 2)
        for (address, block) in snapshot {
            writes.append((address, block.buffer))
            if let second = block.secondCopy { writes.append((second, block.buffer)) }
        }
        writes.sort { ($0.0.deviceIndex, $0.0.offsetBytes) < ($1.0.deviceIndex, $1.0.offsetBytes) }
        let runBytesMax = 1 << 20
        let run = allocateAlignedBuffer(byteCount: runBytesMax)
        defer { run.deallocate() }
        var index = 0
        while index < writes.count {
            let (start, first) = writes[index]
            var length = first.count
            var end = index + 1
            while end < writes.count, writes[end].0.deviceIndex == start.deviceIndex,
                  writes[end].0.offsetBytes == start.offsetBytes + UInt64(length),
                  length + writes[end].1.count <= runBytesMax {
                length += writes[end].1.count
                end += 1
            }
            do {
                if end == index + 1 {
                    try pool.devices[start.deviceIndex].write(UnsafeRawBufferPointer(first), at: start.offsetBytes, fua: false)
                } else {
                    var cursor = 0
                    for position in index..<end {
                        let block = writes[position].1
                        UnsafeMutableRawBufferPointer(rebasing: run[cursor ..< cursor + block.count]).copyMemory(from: UnsafeRawBufferPointer(block))
                        cursor += block.count
                    }
                    try pool.devices[start.deviceIndex].write(UnsafeRawBufferPointer(rebasing: run[0..<length]), at: start.offsetBytes, fua: false)
                }
            } catch {
                throw .io(error)
            }
            index = end
        }
        withStaged { blocks in
            for (address, block) in snapshot where blocks[address]?.buffer.baseAddress == block.buffer.baseAddress {
                blocks.removeValue(forKey: address)
                block.buffer.deallocate()
            }
        }
    }
}
